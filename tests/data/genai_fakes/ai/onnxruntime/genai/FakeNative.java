/*
 * Fakes of the onnxruntime-genai Java API for tests/test_mobile_runtime.py: not the library and
 * not its declarations (those are tests/data/genai_api). Each class here has the public
 * constructors and methods SlmkitRunner.kt calls, and every object that stands for a native one
 * registers itself here when made and unregisters when closed, so a test can count what leaked.
 */
package ai.onnxruntime.genai;

import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;

public final class FakeNative {
  private FakeNative() {}

  /** Simple class name whose next constructor throws GenAIException (null: none throws). */
  public static String failIn = null;
  /** The tokens Generator yields one by one after the prompt. */
  public static int[] script = new int[0];
  /** Simple class names of the objects made, in order. */
  public static final List<String> created = new ArrayList<>();
  /** The text Tokenizer.encode was last given. */
  public static String lastEncoded = null;
  /** close() on an object that is not open: a double close. */
  public static int badCloses = 0;
  /** The adapter names Adapters.loadAdapter was given, and the one a Generator last activated. */
  public static final List<String> loadedAdapters = new ArrayList<>();
  public static String activeAdapter = null;
  private static final Map<Object, String> live = new IdentityHashMap<>();

  public static void reset() {
    failIn = null;
    script = new int[0];
    lastEncoded = null;
    created.clear();
    badCloses = 0;
    loadedAdapters.clear();
    activeAdapter = null;
    live.clear();
  }

  /** Called first in every fake constructor: throws as a broken model file would, or registers. */
  static void open(Object object) throws GenAIException {
    String name = object.getClass().getSimpleName();
    if (name.equals(failIn)) {
      throw new GenAIException("fake " + name + " failure");
    }
    created.add(name);
    live.put(object, name);
  }

  static void close(Object object) {
    if (live.remove(object) == null) {
      badCloses++;
    }
  }

  /** Simple class names of the objects still open, in no particular order. */
  public static List<String> open() {
    return new ArrayList<>(live.values());
  }
}
