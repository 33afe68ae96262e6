/*
 * Declaration-only stub for compiling against the onnxruntime-genai Java API; not the library.
 * Generated from microsoft/onnxruntime-genai a0c04eb1313b886c963e415bbd974748cb89a4eb
 * src/java/src/main/java/ai/onnxruntime/genai/TokenizerStream.java
 * Public classes, constructors and methods with their exact types and checked exceptions; bodies
 * only throw. Non-public constructors are kept so that no implicit public one appears.
 * Original: Copyright (c) Microsoft Corporation. Licensed under the MIT License (tests/data/genai_api/SOURCE.md).
 */
package ai.onnxruntime.genai;

public class TokenizerStream implements AutoCloseable {
  TokenizerStream(long tokenizerStreamHandle) { throw new UnsupportedOperationException("declaration-only stub"); }

  public String decode(int token) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  @Override
  public void close() { throw new UnsupportedOperationException("declaration-only stub"); }
}
