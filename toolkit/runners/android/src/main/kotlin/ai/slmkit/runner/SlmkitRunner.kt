// Minimal streaming generator for an slmkit bundle on Android (onnxruntime-genai Java API).
// Copy this file into your app; see runner/android/README.md for the Gradle dependency.
package ai.slmkit.runner

import ai.onnxruntime.genai.Config
import ai.onnxruntime.genai.Generator
import ai.onnxruntime.genai.GeneratorParams
import ai.onnxruntime.genai.Model
import ai.onnxruntime.genai.Sequences
import ai.onnxruntime.genai.Tokenizer
import ai.onnxruntime.genai.TokenizerStream
import org.json.JSONArray
import org.json.JSONObject
import java.io.File

/**
 * Loads `<bundle>/model` once; [ask] streams an answer, [generate] works on token ids.
 * Greedy by default; stops at every EOS id of the model and never exceeds the bundle's
 * context cap (search.max_length in genai_config.json). Not thread-safe: one generation at a time.
 */
class SlmkitRunner(val modelDir: File) : AutoCloseable {
    // The JSON files are read before any native object exists: a malformed file leaks nothing.
    private val genai = JSONObject(File(modelDir, "genai_config.json").readText())
    val eosIds: Set<Int> = genai.getJSONObject("model").let { m ->
        val eos = m.optJSONArray("eos_token_id")
        if (eos != null) (0 until eos.length()).map { eos.getInt(it) }.toSet() else setOf(m.getInt("eos_token_id"))
    }
    val maxLength: Int = genai.getJSONObject("search").getInt("max_length")
    // The model's chat template rendered for one user turn by slmkit at build time.
    private val promptFormat: String? = File(modelDir, "prompt_format.json").let { f ->
        if (f.exists()) JSONObject(f.readText()).getString("single_turn") else null
    }
    private val config: Config = Config(modelDir.path)
    // Each native object is closed again when the next one cannot be made (a broken model file).
    val model: Model = try { Model(config) } catch (e: Throwable) { config.close(); throw e }
    val tokenizer: Tokenizer = try { Tokenizer(model) } catch (e: Throwable) { model.close(); config.close(); throw e }

    /** The user message in the model's chat format (Phi-3 format when the model has no template). */
    fun formatChat(message: String): String =
        promptFormat?.replace(PLACEHOLDER, message) ?: "<|user|>\n$message<|end|>\n<|assistant|>\n"

    fun encode(text: String): IntArray {
        val sequences: Sequences = tokenizer.encode(text)
        try {
            return sequences.getSequence(0)
        } finally {
            sequences.close()
        }
    }

    fun decode(ids: IntArray): String = tokenizer.decode(ids)

    /**
     * Generates after [promptIds]; [onText] receives each piece of text as soon as it is decoded.
     * temperature 0 = greedy; otherwise sampling with topP / topK (0 = off) and a fixed seed.
     */
    fun generate(
        promptIds: IntArray,
        maxNewTokens: Int = 256,
        temperature: Double = 0.0,
        topP: Double = 1.0,
        topK: Int = 0,
        seed: Int = 0,
        onText: (String) -> Unit = {}
    ): IntArray {
        require(promptIds.size < maxLength) {
            "The prompt has ${promptIds.size} tokens; this bundle's context cap is $maxLength. Shorten the prompt."
        }
        val params: GeneratorParams = GeneratorParams(model)
        var stream: TokenizerStream? = null  // made inside the try: params is closed if it fails
        val out = ArrayList<Int>()
        try {
            stream = tokenizer.createStream()
            params.setSearchOption("max_length", minOf(maxLength, promptIds.size + maxNewTokens).toDouble())
            params.setSearchOption("batch_size", 1.0)
            if (temperature > 0.0) {
                params.setSearchOption("do_sample", true)
                params.setSearchOption("temperature", temperature)
                params.setSearchOption("top_p", topP)
                // Always set: left unset, onnxruntime-genai samples from the top 50; 0 is no limit.
                params.setSearchOption("top_k", topK.toDouble())
                params.setSearchOption("random_seed", seed.toDouble())
            } else {
                params.setSearchOption("do_sample", false)
            }
            val generator: Generator = Generator(model, params)
            try {
                generator.appendTokens(promptIds)
                while (!generator.isDone()) {
                    generator.generateNextToken()
                    val token: Int = generator.getLastTokenInSequence(0)
                    if (token in eosIds) break
                    out.add(token)
                    onText(stream.decode(token))
                }
            } finally {
                generator.close()
            }
        } finally {
            stream?.close()
            params.close()
        }
        return out.toIntArray()
    }

    /** One chat turn: formats [message], streams the answer to [onText], returns the whole answer. */
    fun ask(message: String, maxNewTokens: Int = 256, onText: (String) -> Unit = {}): String =
        decode(generate(encode(formatChat(message)), maxNewTokens, onText = onText))

    override fun close() {
        tokenizer.close()
        model.close()
        config.close()
    }

    companion object {
        const val PLACEHOLDER = "{content}"
    }
}
