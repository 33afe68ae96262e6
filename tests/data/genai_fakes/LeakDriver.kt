// Driver for tests/test_mobile_runtime.py, compiled with SlmkitRunner.kt against the fakes in
// ai/onnxruntime/genai: for each argument "name|failIn|script|modelDir|image|adapter" it makes a
// runner, asks it one question when that worked (about the picture at `image` when given; with the
// runtime LoRA `adapter` active when given), closes it, and prints one JSON line of what the fakes
// saw. failIn: the fake class whose constructor throws ("" none; "loadAdapter": that call);
// script: the tokens the fake Generator yields ("" none). The test compiles a copy of this file in the package of a
// copy of the runner, so no import names the runner.
package ai.slmkit.runner

import ai.onnxruntime.genai.FakeNative
import org.json.JSONArray
import org.json.JSONObject
import java.io.File

fun main(args: Array<String>) {
    for (arg in args) {
        val (name, failIn, script, dir, image) = arg.split("|", limit = 6)
        val adapter = arg.split("|", limit = 6).getOrElse(5) { "" }
        FakeNative.reset()
        FakeNative.failIn = if (failIn == "") null else failIn
        FakeNative.script = if (script == "") IntArray(0) else script.split(",").map { it.toInt() }.toIntArray()
        val report = JSONObject().put("scenario", name)
        var runner: SlmkitRunner? = null
        try {
            runner = SlmkitRunner(File(dir))
            report.put("eos_ids", JSONArray(runner.eosIds.sorted()))
            report.put("max_length", runner.maxLength)
            report.put("open_after_init", JSONArray(FakeNative.open().sorted()))
            val pieces = ArrayList<String>()
            try {
                if (adapter != "") runner.activeAdapter = adapter
                report.put("answer", if (image == "") runner.ask("hi", maxNewTokens = 8) { pieces.add(it) }
                    else runner.askAboutImage(image, "hi", maxNewTokens = 8) { pieces.add(it) })
            } finally {
                report.put("pieces", JSONArray(pieces))
                report.put("prompt", FakeNative.lastEncoded ?: JSONObject.NULL)
                report.put("open_after_ask", JSONArray(FakeNative.open().sorted()))
            }
        } catch (e: Throwable) {
            report.put("threw", e.javaClass.simpleName)
            report.put("threw_in", if (runner == null) "constructor" else "ask")
        }
        runner?.close()
        report.put("created", JSONArray(FakeNative.created))
        report.put("open", JSONArray(FakeNative.open().sorted()))
        report.put("bad_closes", FakeNative.badCloses)
        report.put("loaded_adapters", JSONArray(FakeNative.loadedAdapters))
        report.put("active_adapter", FakeNative.activeAdapter ?: JSONObject.NULL)
        println(report)
    }
}
