// app/build.gradle.kts: the runtime the bundle was built and verified with (manifest.json "runtime").
// onnxruntime-genai's Android AAR is published on its GitHub releases page, not on Maven Central:
//   https://github.com/microsoft/onnxruntime-genai/releases/tag/v0.18.0 -> onnxruntime-genai-android-0.18.0.aar
// Put it in app/libs/. It needs the ONNX Runtime AAR it was built against, from Maven Central:
// 1.31.0 for onnxruntime-genai 0.18.0 (the lower bound of its onnxruntime requirement), not the
// desktop onnxruntime the bundle was built with.
android {
    defaultConfig {
        // x86_64 lets the instrumented smoke test run on the Android emulator (CI); phones use arm64-v8a.
        // Drop x86_64 from release builds (or split APKs per ABI) to keep the app small.
        ndk { abiFilters += listOf("arm64-v8a", "x86_64") }
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
    }
    // model.onnx.data is memory-mapped by the runtime; never ship it compressed inside an APK.
    androidResources { noCompress += listOf("onnx", "data") }
}

dependencies {
    implementation(files("libs/onnxruntime-genai-android-0.18.0.aar"))
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.31.0")
    androidTestImplementation("androidx.test.ext:junit:1.2.1")
    androidTestImplementation("androidx.test:runner:1.6.2")
}
