// STUB of an Android platform / AndroidX Test class (not part of slmkit or onnxruntime-genai), only
// so that tests/test_mobile_compile.py can compile the Android smoke test on a plain JVM. Declares
// the few members slmkit uses, with the signatures and nullability of the real API; never run.
package androidx.test.platform.app;

import android.app.Instrumentation;
import android.os.Bundle;
import androidx.annotation.NonNull;

public final class InstrumentationRegistry {
  private InstrumentationRegistry() {}

  @NonNull
  public static Instrumentation getInstrumentation() {
    throw new UnsupportedOperationException("stub");
  }

  @NonNull
  public static Bundle getArguments() {
    throw new UnsupportedOperationException("stub");
  }
}
