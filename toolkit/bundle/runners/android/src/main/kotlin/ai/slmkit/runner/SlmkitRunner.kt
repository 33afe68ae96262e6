// Minimal streaming generator for an slmkit bundle on Android (onnxruntime-genai Java API).
// Copy this file into your app; see runner/android/README.md for the Gradle dependency.
package ai.slmkit.runner

import ai.onnxruntime.genai.Adapters
import ai.onnxruntime.genai.Config
import ai.onnxruntime.genai.GenAIException
import ai.onnxruntime.genai.Generator
import ai.onnxruntime.genai.GeneratorParams
import ai.onnxruntime.genai.Images
import ai.onnxruntime.genai.Model
import ai.onnxruntime.genai.MultiModalProcessor
import ai.onnxruntime.genai.NamedTensors
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
    /** The model type in genai_config.json: "phi3v" bundles (Phi-3.5-vision) also take a picture. */
    val modelType: String = genai.getJSONObject("model").optString("type", "")
    // The model's chat template rendered for one user turn by slmkit at build time.
    private val promptFormat: String? = File(modelDir, "prompt_format.json").let { f ->
        if (f.exists()) JSONObject(f.readText()).getString("single_turn") else null
    }
    private val config: Config = Config(modelDir.path)
    // Each native object is closed again when the next one cannot be made (a broken model file).
    val model: Model = try { Model(config) } catch (e: Throwable) { config.close(); throw e }
    val tokenizer: Tokenizer = try { Tokenizer(model) } catch (e: Throwable) { model.close(); config.close(); throw e }
    /** The bundle's runtime LoRA adapters (model/adapters/NAME.onnx_adapter), by name; empty without. */
    val adapterNames: List<String> = File(modelDir, ADAPTERS_DIR).listFiles()
        ?.map { it.name }?.filter { it.endsWith(ADAPTER_SUFFIX) }?.map { it.removeSuffix(ADAPTER_SUFFIX) }?.sorted()
        ?: emptyList()
    // Every adapter loaded once; a file that fails to load closes what was made.
    private val adapters: Adapters? = if (adapterNames.isEmpty()) null else loadAdapters()

    private fun loadAdapters(): Adapters {
        val made = try { Adapters(model) } catch (e: Throwable) { tokenizer.close(); model.close(); config.close(); throw e }
        try {
            for (name in adapterNames) made.loadAdapter(File(File(modelDir, ADAPTERS_DIR), name + ADAPTER_SUFFIX).path, name)
        } catch (e: Throwable) {
            made.close(); tokenizer.close(); model.close(); config.close(); throw e
        }
        return made
    }

    /** The adapter the next generations run with (null: the base model); switching reloads nothing. */
    var activeAdapter: String? = null
        set(value) {
            require(value == null || value in adapterNames) {
                "No adapter '$value' in this bundle; its adapters: ${adapterNames.ifEmpty { listOf("none") }.joinToString()}."
            }
            field = value
        }

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
        return run(minOf(maxLength, promptIds.size + maxNewTokens), maxNewTokens, temperature, topP, topK, seed,
            onText) { it.appendTokens(promptIds) }
    }

    /**
     * Greedy answer to [prompt], a chat-formatted prompt holding the tag <|image_1|>, about the PNG or
     * JPEG picture at [imagePath] (vision bundles only: the runtime's image processor cuts it into up
     * to 16 crops, up to 2509 prompt tokens).
     */
    fun generateWithImage(imagePath: String, prompt: String, maxNewTokens: Int = 256, onText: (String) -> Unit = {}): IntArray {
        require(modelType == "phi3v") {
            "This bundle's model ($modelType) reads text only. Images need a bundle built from a vision model (Phi-3.5-vision: model type phi3v)."
        }
        require(File(imagePath).canRead()) { "Cannot read the image $imagePath." }
        val images = Images(imagePath)
        try {
            val processor = MultiModalProcessor(model)
            try {
                val inputs: NamedTensors = try {
                    processor.processImages(prompt, images)
                } catch (e: GenAIException) {
                    throw IllegalArgumentException("The image decoder cannot read $imagePath (a PNG or JPEG file?): ${e.message}", e)
                }
                try {
                    return run(maxLength, maxNewTokens, 0.0, 1.0, 0, 0, onText) { generator ->
                        try {
                            generator.setInputs(inputs)
                        } catch (e: GenAIException) {
                            throw IllegalArgumentException("The prompt with its image does not fit this bundle's context cap " +
                                "$maxLength (an image takes up to 2509 tokens): ${e.message}", e)
                        }
                    }
                } finally {
                    inputs.close()
                }
            } finally {
                processor.close()
            }
        } finally {
            images.close()
        }
    }

    private fun run(
        maxTotal: Int,
        maxNewTokens: Int,
        temperature: Double,
        topP: Double,
        topK: Int,
        seed: Int,
        onText: (String) -> Unit,
        feed: (Generator) -> Unit
    ): IntArray {
        val params: GeneratorParams = GeneratorParams(model)
        var stream: TokenizerStream? = null  // made inside the try: params is closed if it fails
        val out = ArrayList<Int>()
        try {
            stream = tokenizer.createStream()
            params.setSearchOption("max_length", maxTotal.toDouble())
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
                activeAdapter?.let { generator.setActiveAdapter(adapters, it) }
                feed(generator)
                while (!generator.isDone() && out.size < maxNewTokens) {
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

    /** One chat turn about a picture: <|image_1|> goes in front of [message] unless it has the tag. */
    fun askAboutImage(imagePath: String, message: String, maxNewTokens: Int = 256, onText: (String) -> Unit = {}): String =
        decode(generateWithImage(imagePath, formatChat(if (IMAGE_TAG in message) message else "$IMAGE_TAG\n$message"),
            maxNewTokens, onText))

    override fun close() {
        adapters?.close()
        tokenizer.close()
        model.close()
        config.close()
    }

    companion object {
        const val PLACEHOLDER = "{content}"
        const val IMAGE_TAG = "<|image_1|>"
        const val ADAPTERS_DIR = "adapters"
        const val ADAPTER_SUFFIX = ".onnx_adapter"
    }
}
