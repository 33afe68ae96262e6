/* Fake for tests/test_mobile_runtime.py (see FakeNative.java). */
package ai.onnxruntime.genai;

public final class Images implements AutoCloseable {
  public Images(String imagePath) throws GenAIException { FakeNative.open(this); }

  @Override
  public void close() { FakeNative.close(this); }
}
