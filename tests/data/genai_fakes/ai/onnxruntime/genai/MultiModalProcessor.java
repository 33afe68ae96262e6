/*
 * Fake for tests/test_mobile_runtime.py (see FakeNative.java): processImages records the prompt as
 * Tokenizer.encode does and makes a NamedTensors (whose constructor can be made to throw).
 */
package ai.onnxruntime.genai;

public final class MultiModalProcessor implements AutoCloseable {
  public MultiModalProcessor(Model model) throws GenAIException { FakeNative.open(this); }

  public NamedTensors processImages(String prompt, Images images) throws GenAIException {
    FakeNative.lastEncoded = prompt;
    return new NamedTensors();
  }

  @Override
  public void close() { FakeNative.close(this); }
}
