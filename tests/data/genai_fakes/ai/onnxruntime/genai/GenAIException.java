/* Fake for tests/test_mobile_runtime.py (see FakeNative.java); the real constructors are package-private too. */
package ai.onnxruntime.genai;

public class GenAIException extends Exception {
  GenAIException(String message) { super(message); }
}
