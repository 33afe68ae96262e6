/*
 * Declaration-only stub for compiling against the onnxruntime-genai Java API; not the library.
 * Generated from microsoft/onnxruntime-genai a0c04eb1313b886c963e415bbd974748cb89a4eb
 * src/java/src/main/java/ai/onnxruntime/genai/Tensor.java
 * Public classes, constructors and methods with their exact types and checked exceptions; bodies
 * only throw. Non-public constructors are kept so that no implicit public one appears.
 * Original: Copyright (c) Microsoft Corporation. Licensed under the MIT License (tests/data/genai_api/SOURCE.md).
 */
package ai.onnxruntime.genai;

import java.nio.ByteBuffer;

public final class Tensor implements AutoCloseable {
  /** Element types that correspond to OnnxRuntime supported element types (ONNX order). */
  public enum ElementType {
    undefined, float32, uint8, int8, uint16, int16, int32, int64, string, bool, float16, float64,
    uint32, uint64,
  }

  public Tensor(ByteBuffer data, long[] shape, ElementType elementType) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  Tensor(long handle) { throw new UnsupportedOperationException("declaration-only stub"); }

  public ElementType getType() { throw new UnsupportedOperationException("declaration-only stub"); }

  public long[] getShape() { throw new UnsupportedOperationException("declaration-only stub"); }

  @Override
  public void close() { throw new UnsupportedOperationException("declaration-only stub"); }
}
