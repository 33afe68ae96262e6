/*
 * Declaration-only stub for compiling against the onnxruntime-genai Java API; not the library.
 * Generated from microsoft/onnxruntime-genai a0c04eb1313b886c963e415bbd974748cb89a4eb
 * src/java/src/main/java/ai/onnxruntime/genai/SimpleGenAI.java
 * Public classes, constructors and methods with their exact types and checked exceptions; bodies
 * only throw. Non-public constructors are kept so that no implicit public one appears.
 * Original: Copyright (c) Microsoft Corporation. Licensed under the MIT License (tests/data/genai_api/SOURCE.md).
 */
package ai.onnxruntime.genai;

import java.util.function.Consumer;

public class SimpleGenAI implements AutoCloseable {
  public SimpleGenAI(String modelPath) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public Model getModel() throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public GeneratorParams createGeneratorParams() throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public String generate(GeneratorParams generatorParams, String prompt, Consumer<String> listener) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  @Override
  public void close() { throw new UnsupportedOperationException("declaration-only stub"); }
}
