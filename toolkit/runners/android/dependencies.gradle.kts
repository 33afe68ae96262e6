// app/build.gradle.kts: the runtime the bundle was built and verified with (manifest.json "runtime").
// onnxruntime-genai's Android AAR is published on its GitHub releases page, not on Maven Central:
//   https://github.com/microsoft/onnxruntime-genai/releases/tag/v0.18.0 -> onnxruntime-genai-android-0.18.0.aar
// Put it in app/libs/. It needs the ONNX Runtime AAR of the matching version from Maven Central.
android {
    defaultConfig {
        ndk { abiFilters += listOf("arm64-v8a") }
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
    }
    // model.onnx.data is memory-mapped by the runtime; never ship it compressed inside an APK.
    androidResources { noCompress += listOf("onnx", "data") }
}

dependencies {
    implementation(files("libs/onnxruntime-genai-android-0.18.0.aar"))
    implementation("com.microsoft.onnxruntime:onnxruntime-android:1.32.0")
    androidTestImplementation("androidx.test.ext:junit:1.2.1")
    androidTestImplementation("androidx.test:runner:1.6.2")
}
