// STUB of an Android platform / AndroidX Test class (not part of slmkit or onnxruntime-genai), only
// so that tests/test_mobile_compile.py can compile the Android smoke test on a plain JVM. Declares
// the few members slmkit uses, with the signatures and nullability of the real API; never run.
package androidx.test.ext.junit.runners;

import org.junit.runner.Description;
import org.junit.runner.Runner;
import org.junit.runner.notification.RunNotifier;
import org.junit.runners.model.InitializationError;

public final class AndroidJUnit4 extends Runner {
  public AndroidJUnit4(Class<?> klass) throws InitializationError {
    throw new UnsupportedOperationException("stub");
  }

  @Override
  public Description getDescription() {
    throw new UnsupportedOperationException("stub");
  }

  @Override
  public void run(RunNotifier notifier) {
    throw new UnsupportedOperationException("stub");
  }
}
