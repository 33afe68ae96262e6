/*
 * Declaration-only stub for compiling against the onnxruntime-genai Java API; not the library.
 * Generated from microsoft/onnxruntime-genai a0c04eb1313b886c963e415bbd974748cb89a4eb
 * src/java/src/main/java/ai/onnxruntime/genai/Config.java
 * Public classes, constructors and methods with their exact types and checked exceptions; bodies
 * only throw. Non-public constructors are kept so that no implicit public one appears.
 * Original: Copyright (c) Microsoft Corporation. Licensed under the MIT License (tests/data/genai_api/SOURCE.md).
 */
package ai.onnxruntime.genai;

public final class Config implements AutoCloseable {
  public Config(String modelPath) throws GenAIException { throw new UnsupportedOperationException("declaration-only stub"); }

  public void clearProviders() { throw new UnsupportedOperationException("declaration-only stub"); }

  public void appendProvider(String providerName) { throw new UnsupportedOperationException("declaration-only stub"); }

  public void setProviderOption(String providerName, String optionKey, String optionValue) { throw new UnsupportedOperationException("declaration-only stub"); }

  public void overlay(String json) { throw new UnsupportedOperationException("declaration-only stub"); }

  @Override
  public void close() { throw new UnsupportedOperationException("declaration-only stub"); }
}
