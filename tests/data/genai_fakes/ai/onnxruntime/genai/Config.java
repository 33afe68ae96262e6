/* Fake for tests/test_mobile_runtime.py (see FakeNative.java). */
package ai.onnxruntime.genai;

public final class Config implements AutoCloseable {
  public Config(String modelPath) throws GenAIException { FakeNative.open(this); }

  @Override
  public void close() { FakeNative.close(this); }
}
