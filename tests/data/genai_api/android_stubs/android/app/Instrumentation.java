// STUB of an Android platform / AndroidX Test class (not part of slmkit or onnxruntime-genai), only
// so that tests/test_mobile_compile.py can compile the Android smoke test on a plain JVM. Declares
// the few members slmkit uses, with the signatures and nullability of the real API; never run.
package android.app;

import android.content.Context;

public class Instrumentation {
  public Instrumentation() {}

  public Context getContext() {
    throw new UnsupportedOperationException("stub");
  }

  public Context getTargetContext() {
    throw new UnsupportedOperationException("stub");
  }
}
