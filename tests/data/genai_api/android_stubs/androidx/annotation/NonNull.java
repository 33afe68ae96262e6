// STUB of an Android platform / AndroidX Test class (not part of slmkit or onnxruntime-genai), only
// so that tests/test_mobile_compile.py can compile the Android smoke test on a plain JVM. Declares
// the few members slmkit uses, with the signatures and nullability of the real API; never run.
package androidx.annotation;

import java.lang.annotation.ElementType;
import java.lang.annotation.Retention;
import java.lang.annotation.RetentionPolicy;
import java.lang.annotation.Target;

@Retention(RetentionPolicy.CLASS)
@Target({ElementType.METHOD, ElementType.PARAMETER, ElementType.FIELD})
public @interface NonNull {}
