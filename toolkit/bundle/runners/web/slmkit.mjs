// The bundle's model in a browser: onnxruntime-web (WebGPU, else WASM) runs ../model/model.onnx
// (on WASM, ../model/model-wasm.onnx where the bundle has it),
// the tokenizer and chat template run in JS, and this module keeps the KV cache between steps.
// Files are fetched once with progress and kept in Cache Storage under their sha256 from
// ../manifest.json, so a second visit reads them from disk.
//
//   import { Model } from "./slmkit.mjs";
//   const model = await Model.load("..", { onProgress: (p) => console.log(p.done, p.total) });
//   for await (const piece of model.chat([{ role: "user", content: "Hi" }])) console.log(piece);
import * as ort from "./vendor/ort.min.mjs";
import { Tokenizer } from "./vendor/tokenizers.min.mjs";
import { Template } from "./vendor/jinja.mjs";

ort.env.wasm.wasmPaths = new URL("./vendor/", import.meta.url).href;
const CACHE = "slmkit-models-v1";

/** True when the browser hands out a WebGPU adapter. */
export async function webgpuAvailable() {
  if (!globalThis.navigator?.gpu) return false;
  try {
    return Boolean(await navigator.gpu.requestAdapter());
  } catch {
    return false;
  }
}

async function readBody(response, size, onBytes) {
  const out = new Uint8Array(size);
  const reader = response.body.getReader();
  let offset = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (offset + value.length > size) throw new Error(`${response.url}: more than the ${size} bytes manifest.json lists`);
    out.set(value, offset);
    offset += value.length;
    onBytes(value.length);
  }
  if (offset !== size) throw new Error(`${response.url}: ${offset} of ${size} bytes (interrupted download)`);
  return out;
}

/** One file of the bundle as bytes: from Cache Storage when a visit already fetched it. */
async function fetchFile(url, entry, store, onBytes) {
  const key = `${url}?sha256=${entry.sha256}`;
  const hit = store && (await store.match(key));
  if (hit) return { bytes: await readBody(hit, entry.size, onBytes), cached: true };
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  if (!store) return { bytes: await readBody(response, entry.size, onBytes), cached: false };
  const [toCache, toRead] = response.body.tee();
  const put = store.put(key, new Response(toCache)).catch((e) => console.warn(`not cached (${e.message}): ${url}`));
  const bytes = await readBody(new Response(toRead), entry.size, onBytes);
  await put;
  return { bytes, cached: false };
}

const text = async (url) => {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.text();
};

function argmaxRow(data, row, vocab) {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = row * vocab, end = i + vocab, k = 0; i < end; i++, k++) {
    if (data[i] > bestValue) [best, bestValue] = [k, data[i]];
  }
  return best;
}

/** Sample from one row of logits with temperature and top-p (nucleus); greedy at temperature 0. */
function sampleRow(data, row, vocab, temperature, topP) {
  if (!(temperature > 0)) return argmaxRow(data, row, vocab);
  const logits = data.subarray(row * vocab, (row + 1) * vocab);
  const top = logits.reduce((m, v) => Math.max(m, v), -Infinity);
  const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]);
  const weights = order.map((i) => Math.exp((logits[i] - top) / temperature));
  const total = weights.reduce((s, w) => s + w, 0);
  let kept = 0;
  let mass = 0;
  while (kept < order.length && mass < topP * total) mass += weights[kept++];
  let pick = Math.random() * mass;
  for (let k = 0; k < kept; k++) if ((pick -= weights[k]) <= 0) return order[k];
  return order[kept - 1];
}

const special = (value) => (typeof value === "object" && value !== null ? value.content : value);

export class Model {
  constructor(fields) {
    Object.assign(this, fields);
  }

  /**
   * Load the bundle at `base` (the folder holding manifest.json).
   * backend: "webgpu", "wasm" or "auto" (WebGPU when the browser has an adapter, else WASM).
   * onProgress({done, total, file, cached}) is called as bytes arrive.
   */
  static async load(base = "..", { backend = "auto", onProgress = () => {}, cache = true, threads } = {}) {
    const started = performance.now();
    const manifest = JSON.parse(await text(`${base}/manifest.json`));
    const config = JSON.parse(await text(`${base}/model/genai_config.json`));
    const tokenizerConfig = JSON.parse(await text(`${base}/model/tokenizer_config.json`));
    const tokenizer = new Tokenizer(JSON.parse(await text(`${base}/model/tokenizer.json`)), tokenizerConfig);
    const templateSource = manifest.files["model/chat_template.jinja"]
      ? await text(`${base}/model/chat_template.jinja`)
      : tokenizerConfig.chat_template;
    if (backend === "auto") backend = (await webgpuAvailable()) ? "webgpu" : "wasm";
    ort.env.wasm.numThreads = threads ?? (globalThis.crossOriginIsolated ? navigator.hardwareConcurrency : 1);
    // The graph of the backend: on WASM, model-wasm.onnx where the bundle has one (per-channel int8
    // weights that WASM's SIMD integer GEMM runs); else model.onnx. Only that graph's files are fetched.
    const graphName = backend === "wasm" && manifest.files["model/model-wasm.onnx"] ? "model-wasm.onnx" : "model.onnx";
    const names = Object.keys(manifest.files)
      .filter((f) => f === `model/${graphName}` || f.startsWith(`model/${graphName}.data`))
      .sort();
    const total = names.reduce((s, f) => s + manifest.files[f].size, 0);
    const store = cache && globalThis.caches ? await caches.open(CACHE).catch(() => null) : null;
    let done = 0;
    let cached = 0;
    const files = {};
    for (const name of names) {
      const file = await fetchFile(`${base}/${name}`, manifest.files[name], store, (n) => {
        done += n;
        onProgress({ done, total, file: name });
      });
      files[name] = file.bytes;
      cached += file.cached ? file.bytes.length : 0;
    }
    const graph = files[`model/${graphName}`];
    const externalData = names
      .filter((f) => f !== `model/${graphName}`)
      .map((f) => ({ path: f.slice("model/".length), data: files[f] }));
    const decoder = config.model.decoder;
    const presentNames = [];
    for (let i = 0; i < decoder.num_hidden_layers; i++) {
      presentNames.push(
        decoder.outputs.present_key_names.replace("%d", i),
        decoder.outputs.present_value_names.replace("%d", i),
      );
    }
    const options = { executionProviders: [backend], externalData, graphOptimizationLevel: "all" };
    if (backend === "webgpu") {
      // The KV cache stays in GPU buffers between steps; only the logits come back.
      options.preferredOutputLocation = Object.fromEntries(presentNames.map((n) => [n, "gpu-buffer"]));
    }
    const session = await ort.InferenceSession.create(graph, options);
    const eos = new Set([].concat(config.model.eos_token_id));
    return new Model({
      session,
      tokenizer,
      tokenizerConfig,
      template: templateSource ? new Template(templateSource) : null,
      config,
      backend,
      graph: graphName,
      eos,
      threads: ort.env.wasm.numThreads,
      load: { seconds: (performance.now() - started) / 1000, bytes: total, cachedBytes: cached },
    });
  }

  get contextCap() {
    return this.config.search.max_length;
  }

  encode(textValue) {
    return this.tokenizer.encode(textValue).ids;
  }

  /** The chat template applied to the messages, ending with the assistant's turn. */
  applyChat(messages) {
    if (!this.template) {
      return messages.map((m) => `<|${m.role}|>\n${m.content}<|end|>\n`).join("") + "<|assistant|>\n";
    }
    const c = this.tokenizerConfig;
    return this.template.render({
      messages,
      add_generation_prompt: true,
      bos_token: special(c.bos_token) ?? "",
      eos_token: special(c.eos_token) ?? "",
    });
  }

  /**
   * A forward pass over `ids` after the cached `past` (null: a new sequence). Its logits' first row
   * is the position `first`: the WASM graph quantizes each run's activations with one scale, and
   * the first position's outlier activations (the attention sink) would set it for the whole
   * prompt, so a new sequence runs its first token alone (SmolLM2: KL 0.034 against 0.161, for one
   * more step). The build records that graph's tokens the same way (smoke_test.py FIRST_ALONE).
   */
  async forward(ids, past) {
    if (past || ids.length < 2 || this.graph !== "model-wasm.onnx") {
      return { ...(await this.step(ids, past)), first: past ? past.length : 0 };
    }
    const head = await this.step(ids.slice(0, 1), null);
    return { ...(await this.step(ids.slice(1), head.past)), first: 1 };
  }

  /** One run of the session over `ids` after the cached `past` (null: a new sequence). */
  async step(ids, past) {
    const d = this.config.model.decoder;
    const pastLen = past ? past.length : 0;
    const total = pastLen + ids.length;
    const feeds = {
      [d.inputs.input_ids]: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]),
      [d.inputs.attention_mask]: new ort.Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]),
    };
    if (this.session.inputNames.includes("position_ids")) {
      const positions = BigInt64Array.from({ length: ids.length }, (_, k) => BigInt(pastLen + k));
      feeds.position_ids = new ort.Tensor("int64", positions, [1, ids.length]);
    }
    const kv = [d.num_key_value_heads, 0, d.head_size];
    for (let i = 0; i < d.num_hidden_layers; i++) {
      for (const [input, output] of [
        [d.inputs.past_key_names, d.outputs.present_key_names],
        [d.inputs.past_value_names, d.outputs.present_value_names],
      ]) {
        feeds[input.replace("%d", i)] = past
          ? past.tensors[output.replace("%d", i)]
          : new ort.Tensor("float32", new Float32Array(0), [1, ...kv]);
      }
    }
    const out = await this.session.run(feeds);
    if (past) this.release(past);
    const tensors = Object.fromEntries(Object.entries(out).filter(([n]) => n !== d.outputs.logits));
    return { logits: out[d.outputs.logits], past: { length: total, tensors } };
  }

  release(past) {
    for (const t of Object.values(past.tensors)) if (t.location === "gpu-buffer") t.dispose();
  }

  /** The argmax at each position of `expected` given `promptIds`, in one forward pass. */
  async teacherForced(promptIds, expected) {
    const { logits, past, first } = await this.forward(promptIds.concat(expected.slice(0, -1)), null);
    this.release(past);
    const vocab = logits.dims[2];
    return expected.map((_, k) => argmaxRow(logits.data, promptIds.length - 1 + k - first, vocab));
  }

  /**
   * Token ids, one at a time, until an EOS id (unless stopAtEos is false), maxNewTokens, the
   * context cap or signal.aborted. stats (filled in): promptTokens, prefillMs, newTokens, decodeMs.
   */
  async *generate(promptIds, { maxNewTokens = 512, temperature = 0, topP = 1, stopAtEos = true, signal, stats = {} } = {}) {
    if (promptIds.length >= this.contextCap) {
      throw new Error(`the prompt has ${promptIds.length} tokens; this bundle's context cap is ${this.contextCap}`);
    }
    let t = performance.now();
    let { logits, past } = await this.forward(promptIds, null);
    Object.assign(stats, { promptTokens: promptIds.length, prefillMs: performance.now() - t, newTokens: 0, decodeMs: 0 });
    try {
      for (;;) {
        const vocab = logits.dims[2];
        const next = sampleRow(logits.data, logits.dims[1] - 1, vocab, temperature, topP);
        stats.newTokens += 1;
        yield next;
        if ((stopAtEos && this.eos.has(next)) || stats.newTokens >= maxNewTokens || past.length >= this.contextCap || signal?.aborted) {
          return;
        }
        t = performance.now();
        ({ logits, past } = await this.step([next], past));
        stats.decodeMs += performance.now() - t;
      }
    } finally {
      this.release(past);
    }
  }

  /** The assistant's reply to `messages` as text pieces, streamed (stops at every EOS id). */
  async *chat(messages, options = {}) {
    const ids = [];
    let shown = "";
    for await (const id of this.generate(this.encode(this.applyChat(messages)), options)) {
      if (this.eos.has(id)) return;
      ids.push(id);
      const full = this.tokenizer.decode(ids, { skip_special_tokens: true });
      if (full.endsWith("\uFFFD")) continue; // a character split across tokens: wait for the rest
      yield full.slice(shown.length);
      shown = full;
    }
  }
}
