/*
 * Declaration-only stub for compiling against the onnxruntime-genai Java API; not the library.
 * Generated from microsoft/onnxruntime-genai a0c04eb1313b886c963e415bbd974748cb89a4eb
 * src/java/src/main/java/ai/onnxruntime/genai/GenAIException.java
 * Public classes, constructors and methods with their exact types and checked exceptions; bodies
 * only throw. Non-public constructors are kept so that no implicit public one appears.
 * Original: Copyright (c) Microsoft Corporation. Licensed under the MIT License (tests/data/genai_api/SOURCE.md).
 */
package ai.onnxruntime.genai;

public final class GenAIException extends Exception {
  GenAIException(String message) { super(message); }

  GenAIException(String message, Exception innerException) { super(message, innerException); }
}
