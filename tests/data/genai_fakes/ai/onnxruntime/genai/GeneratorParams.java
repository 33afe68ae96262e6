/* Fake for tests/test_mobile_runtime.py (see FakeNative.java): keeps the search options it is given. */
package ai.onnxruntime.genai;

import java.util.HashMap;
import java.util.Map;

public final class GeneratorParams implements AutoCloseable {
  final Map<String, Object> options = new HashMap<>();

  public GeneratorParams(Model model) throws GenAIException { FakeNative.open(this); }

  public void setSearchOption(String optionName, double value) throws GenAIException { options.put(optionName, value); }

  public void setSearchOption(String optionName, boolean value) throws GenAIException { options.put(optionName, value); }

  @Override
  public void close() { FakeNative.close(this); }
}
