/* Fake for tests/test_mobile_runtime.py (see FakeNative.java): loadAdapter throws when failIn is
 * "loadAdapter", as a damaged adapter file would. */
package ai.onnxruntime.genai;

public final class Adapters implements AutoCloseable {
  public Adapters(Model model) throws GenAIException { FakeNative.open(this); }

  public void loadAdapter(String adapterFilePath, String adapterName) throws GenAIException {
    if ("loadAdapter".equals(FakeNative.failIn)) {
      throw new GenAIException("fake loadAdapter failure: " + adapterFilePath);
    }
    FakeNative.loadedAdapters.add(adapterName);
  }

  @Override
  public void close() { FakeNative.close(this); }
}
