// On-device smoke test of an slmkit bundle: the same checks as tests/smoke_test.py that a phone
// can run with the runtime package alone. Run: ./gradlew connectedAndroidTest (see README.md).
package ai.slmkit.runner

import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import org.json.JSONArray
import org.json.JSONObject
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import java.io.File
import java.security.MessageDigest

@RunWith(AndroidJUnit4::class)
class SlmkitSmokeTest {
    private val failures = ArrayList<String>()
    private var passed = 0

    /** The pushed bundle: -e bundleDir PATH, else <app external files>/slmkit-bundle. */
    private fun bundleDir(): File {
        val arg: String? = InstrumentationRegistry.getArguments().getString("bundleDir")
        if (arg != null) return File(arg)
        val context = InstrumentationRegistry.getInstrumentation().targetContext
        return File(context.getExternalFilesDir(null), "slmkit-bundle")
    }

    private fun check(name: String, ok: Boolean, detail: String) {
        println("${if (ok) "PASS" else "FAIL"}  $name: $detail")
        if (ok) passed++ else failures.add("$name: $detail")
    }

    private fun sha256(file: File): String {
        val digest = MessageDigest.getInstance("SHA-256")
        file.inputStream().use { input ->
            val buffer = ByteArray(1 shl 20)
            while (true) {
                val n = input.read(buffer)
                if (n < 0) break
                digest.update(buffer, 0, n)
            }
        }
        return digest.digest().joinToString("") { "%02x".format(it) }
    }

    private fun ints(array: JSONArray): IntArray = IntArray(array.length()) { array.getInt(it) }

    private fun commonPrefix(a: IntArray, b: IntArray): Int {
        var k = 0
        while (k < a.size && k < b.size && a[k] == b[k]) k++
        return k
    }

    /** Every file against manifest.json: a short or damaged download is named, not a crash. */
    private fun checkFiles(bundle: File): Boolean {
        val files: JSONObject = JSONObject(File(bundle, "manifest.json").readText()).getJSONObject("files")
        val bad = ArrayList<String>()
        for (rel in files.keys()) {
            val entry: JSONObject = files.getJSONObject(rel)
            val file = File(bundle, rel)
            val size: Long = entry.getLong("size")
            when {
                !file.exists() -> bad.add("$rel is missing")
                file.length() < size -> bad.add("$rel is truncated (${file.length()} of $size bytes): copy it again")
                file.length() != size -> bad.add("$rel has ${file.length()} bytes, expected $size")
                sha256(file) != entry.getString("sha256") -> bad.add("$rel is corrupted (sha256 differs)")
            }
        }
        check("files", bad.isEmpty(), if (bad.isEmpty()) "${files.length()} files match manifest.json" else bad.joinToString("; "))
        return bad.isEmpty()
    }

    @Test
    fun bundleRunsAsRecordedAtBuild() {
        val bundle = bundleDir()
        assertTrue("No bundle at $bundle: push it first (see runner/android/README.md)", File(bundle, "manifest.json").exists())
        if (checkFiles(bundle)) {
            val golden = JSONObject(File(bundle, "tests/golden.json").readText())
            val minPrefix: Int = golden.getInt("min_greedy_prefix")
            // The base model's cases, then each runtime LoRA adapter's with it active (one loaded model).
            val sets = ArrayList<Triple<String?, String, JSONArray>>()
            sets.add(Triple(null, "", golden.getJSONArray("cases")))
            golden.optJSONObject("adapters")?.let { adapters ->
                for (name in adapters.keys()) sets.add(Triple(name, "$name ", adapters.getJSONObject(name).getJSONArray("cases")))
            }
            SlmkitRunner(File(bundle, "model")).use { runner ->
                check("load", true, "model loaded (cpu provider)")
                for ((adapter, label, cases) in sets) {
                if (adapter != null) {
                    val loaded = adapter in runner.adapterNames
                    check("adapter $adapter", loaded, if (loaded) "loaded" else "missing from model/adapters/")
                    if (!loaded) continue
                }
                runner.activeAdapter = adapter
                for (i in 0 until cases.length()) {
                    val case: JSONObject = cases.getJSONObject(i)
                    val promptIds = ints(case.getJSONArray("prompt_ids"))
                    // An image case's prompt ids come from the runtime's image processor, which the
                    // Java API does not expose: its greedy tokens below check the whole path.
                    val image = case.optString("image", "")
                    if (image.isEmpty()) {
                        val encoded = runner.encode(case.getString("prompt"))
                        check("tokenizer $label${i + 1}", encoded.contentEquals(promptIds), "${encoded.size} prompt tokens as the reference")
                    }
                    // The runner stops before an EOS id; the recorded ids may end with one.
                    val recorded = ints(case.getJSONArray("bundle_ids")).takeWhile { it !in runner.eosIds }.toIntArray()
                    val expected = ints(case.getJSONArray("expected_ids")).takeWhile { it !in runner.eosIds }.toIntArray()
                    val out = if (image.isEmpty()) runner.generate(promptIds, maxNewTokens = recorded.size + 1)
                        else runner.generateWithImage(File(bundle, "tests/$image").path, case.getString("prompt"), recorded.size + 1)
                    val prefix = commonPrefix(out, recorded)
                    val need = minOf(minPrefix, recorded.size)
                    // An earlier difference passes only as a tie: this phone's token was within
                    // tie_logit_margin logits of the recorded one on the build host (bundle_near).
                    val near = case.optJSONArray("bundle_near")
                    val tie = prefix < need && prefix < out.size && near != null && prefix < near.length() &&
                        out[prefix] in ints(near.getJSONArray(prefix))
                    check("greedy $label${i + 1}", prefix >= need || tie,
                        "first $prefix/${recorded.size} tokens as recorded at build (need $need)" +
                            (if (tie) "; token ${prefix + 1} is a tie" else "") +
                            "; reference greedy prefix ${commonPrefix(out, expected)}/${expected.size}")
                }
                }
            }
        }
        println("$passed passed, ${failures.size} failed")
        assertTrue(failures.joinToString("\n"), failures.isEmpty())
    }
}
