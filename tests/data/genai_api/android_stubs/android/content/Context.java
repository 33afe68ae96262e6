// STUB of an Android platform / AndroidX Test class (not part of slmkit or onnxruntime-genai), only
// so that tests/test_mobile_compile.py can compile the Android smoke test on a plain JVM. Declares
// the few members slmkit uses, with the signatures and nullability of the real API; never run.
package android.content;

import android.annotation.Nullable;
import java.io.File;

public abstract class Context {
  @Nullable
  public abstract File getExternalFilesDir(@Nullable String type);

  public abstract File getFilesDir();

  public abstract File getCacheDir();
}
