/* Fake for tests/test_mobile_runtime.py (see FakeNative.java): one token per character. */
package ai.onnxruntime.genai;

public class Tokenizer implements AutoCloseable {
  public Tokenizer(Model model) throws GenAIException { FakeNative.open(this); }

  public Sequences encode(String string) throws GenAIException {
    FakeNative.lastEncoded = string;
    return new Sequences(string.codePoints().toArray());
  }

  /** "<5><6>" for {5, 6}. */
  public String decode(int[] sequence) throws GenAIException {
    StringBuilder text = new StringBuilder();
    for (int token : sequence) {
      text.append('<').append(token).append('>');
    }
    return text.toString();
  }

  public TokenizerStream createStream() throws GenAIException { return new TokenizerStream(); }

  @Override
  public void close() { FakeNative.close(this); }
}
