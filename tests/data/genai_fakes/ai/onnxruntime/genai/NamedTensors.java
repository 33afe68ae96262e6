/* Fake for tests/test_mobile_runtime.py (see FakeNative.java): the processor's output for one prompt. */
package ai.onnxruntime.genai;

public final class NamedTensors implements AutoCloseable {
  NamedTensors() throws GenAIException { FakeNative.open(this); }

  @Override
  public void close() { FakeNative.close(this); }
}
