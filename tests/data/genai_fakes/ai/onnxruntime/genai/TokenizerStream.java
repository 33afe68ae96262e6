/* Fake for tests/test_mobile_runtime.py (see FakeNative.java). */
package ai.onnxruntime.genai;

public class TokenizerStream implements AutoCloseable {
  TokenizerStream() throws GenAIException { FakeNative.open(this); }

  /** "<5>" for 5. */
  public String decode(int token) throws GenAIException { return "<" + token + ">"; }

  @Override
  public void close() { FakeNative.close(this); }
}
