/*
 * Fake for tests/test_mobile_runtime.py (see FakeNative.java): yields FakeNative.script after the
 * prompt, and is done at the end of the script or at search option max_length (prompt included),
 * as onnxruntime-genai is.
 */
package ai.onnxruntime.genai;

public final class Generator implements AutoCloseable {
  private final int maxLength;
  private final int[] script = FakeNative.script.clone();
  private int length = 0;
  private int next = 0;
  private int last = -1;

  public Generator(Model model, GeneratorParams generatorParams) throws GenAIException {
    FakeNative.open(this);
    Object max = generatorParams.options.get("max_length");
    maxLength = max == null ? Integer.MAX_VALUE : (int) (double) (Double) max;
  }

  public boolean isDone() { return next >= script.length || length >= maxLength; }

  public void appendTokens(int[] inputIDs) throws GenAIException { length += inputIDs.length; }

  public void setActiveAdapter(Adapters adapters, String adapterName) throws GenAIException {
    if (!FakeNative.loadedAdapters.contains(adapterName)) {
      throw new GenAIException("fake Generator: adapter " + adapterName + " was not loaded");
    }
    FakeNative.activeAdapter = adapterName;
  }

  /** A prompt with an image: counted as IMAGE_PROMPT tokens. */
  public void setInputs(NamedTensors namedTensors) throws GenAIException { length += IMAGE_PROMPT; }

  public static final int IMAGE_PROMPT = 40;

  public void generateNextToken() throws GenAIException {
    if (isDone()) throw new GenAIException("fake Generator: generateNextToken after isDone");
    last = script[next++];
    length++;
  }

  public int getLastTokenInSequence(long sequenceIndex) throws GenAIException {
    if (sequenceIndex != 0 || last < 0) throw new GenAIException("fake Generator: no token " + sequenceIndex);
    return last;
  }

  @Override
  public void close() { FakeNative.close(this); }
}
