/* Fake for tests/test_mobile_runtime.py (see FakeNative.java). */
package ai.onnxruntime.genai;

public final class Sequences implements AutoCloseable {
  private final int[] sequence;

  Sequences(int[] sequence) throws GenAIException {
    FakeNative.open(this);
    this.sequence = sequence;
  }

  public long numSequences() { return 1; }

  public int[] getSequence(long sequenceIndex) {
    if (sequenceIndex != 0) throw new IndexOutOfBoundsException("fake Sequences has one sequence");
    return sequence.clone();
  }

  @Override
  public void close() { FakeNative.close(this); }
}
