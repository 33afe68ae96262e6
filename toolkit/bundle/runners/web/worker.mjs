// The model's thread: index.html starts this module worker, which loads the bundle with slmkit.mjs and
// runs every forward pass, so that the page's own thread only draws. Messages in: {id, type: "load" |
// "chat" | "stop" | "selftest" | "run", ...}; out: {id, progress | piece | log} while it works, then
// {id, done: true, value} or {id, error}.
import { Model } from "./slmkit.mjs";
import { selfTest } from "./selftest.mjs";

let model = null;
const running = new Map(); // chat id -> its AbortController

const info = (m) => ({ backend: m.backend, graph: m.graph, threads: m.threads, load: m.load, contextCap: m.contextCap });

/** Speed on fixed prompt ids (benchmarks/web.py): n new tokens whatever they are, EOS included. */
async function run(ids, newTokens) {
  const stats = {};
  for await (const _ of model.generate(ids, { maxNewTokens: newTokens, stopAtEos: false, stats }));
  return { prefill_tok_s: ids.length / (stats.prefillMs / 1000), decode_tok_s: (stats.newTokens - 1) / (stats.decodeMs / 1000) };
}

self.onmessage = async ({ data }) => {
  const { id, type } = data;
  const reply = (fields) => self.postMessage({ id, ...fields });
  try {
    if (type === "load") {
      model = await Model.load(data.base, { ...data.options, onProgress: (progress) => reply({ progress }) });
      reply({ done: true, value: info(model) });
    } else if (type === "chat") {
      const controller = new AbortController();
      running.set(id, controller);
      const stats = {};
      try {
        for await (const piece of model.chat(data.messages, { ...data.options, stats, signal: controller.signal })) reply({ piece });
      } finally {
        running.delete(id);
      }
      reply({ done: true, value: stats });
    } else if (type === "stop") {
      running.get(data.chat)?.abort();
      reply({ done: true, value: null });
    } else if (type === "selftest") {
      const result = await selfTest(model, data.golden, data.promptFormat, (log) => reply({ log }));
      reply({ done: true, value: result });
    } else if (type === "run") {
      reply({ done: true, value: await run(data.ids, data.newTokens) });
    } else {
      throw new Error(`unknown message type ${type}`);
    }
  } catch (e) {
    reply({ error: String(e.stack ?? e) });
  }
};
