// STUB of an Android platform / AndroidX Test class (not part of slmkit or onnxruntime-genai), only
// so that tests/test_mobile_compile.py can compile the Android smoke test on a plain JVM. Declares
// the few members slmkit uses, with the signatures and nullability of the real API; never run.
package android.os;

import android.annotation.Nullable;

public final class Bundle {
  public Bundle() {}

  @Nullable
  public String getString(@Nullable String key) {
    throw new UnsupportedOperationException("stub");
  }

  public String getString(@Nullable String key, String defaultValue) {
    throw new UnsupportedOperationException("stub");
  }

  public boolean containsKey(String key) {
    throw new UnsupportedOperationException("stub");
  }
}
