// The page's test mode (index.html?test): ../tests/golden.json checked in this browser with the
// rules of the bundle's Python smoke test (tests/checks.py): the tokenizer against the reference's
// ids, teacher-forced top-1 agreement, and greedy tokens against those recorded at build, where an
// earlier difference passes only as a tie (within tie_logit_margin logits on the build host).

const commonPrefix = (a, b) => {
  const n = Math.min(a.length, b.length);
  for (let k = 0; k < n; k++) if (a[k] !== b[k]) return k;
  return n;
};
const same = (a, b) => a.length === b.length && commonPrefix(a, b) === a.length;

/** The tokens recorded at build for the graph this page runs (golden.json's "graphs" entry for a
 * second graph, model-wasm.onnx, else the case's own). */
const recordedFor = (c, graph) => c.graphs?.[graph] ?? c;

function greedyCheck(out, c, golden) {
  const recorded = c.bundle_ids;
  const prefix = commonPrefix(out, recorded);
  const need = Math.min(golden.min_greedy_prefix, recorded.length);
  let textValue = `first ${prefix}/${recorded.length} tokens as recorded at build (need ${need})`;
  if (prefix >= need) return [true, textValue, null];
  const near = c.bundle_near ?? [];
  if (prefix < out.length && prefix < near.length && near[prefix].includes(out[prefix])) {
    const margin = golden.tie_logit_margin ?? 0;
    return [true, `${textValue}; token ${prefix + 1} is a tie (within ${margin} logits on the build host)`, prefix];
  }
  if (prefix < Math.min(out.length, recorded.length)) {
    textValue += `; token ${prefix + 1} (${out[prefix]} for ${recorded[prefix]}) is no tie: a defect`;
  }
  return [false, textValue, null];
}

/** The message a single-turn chat prompt was made from, by prompt_format.json's pattern. */
export function chatContent(prompt, format) {
  if (!format) return null;
  const [head, tail] = format.single_turn.split(format.placeholder);
  return prompt.startsWith(head) && prompt.endsWith(tail) ? prompt.slice(head.length, prompt.length - tail.length) : null;
}

/** Run every golden case; returns {checks, passed, failed, top1_agreement, cases, ...}. */
export async function selfTest(model, golden, promptFormat, log = () => {}) {
  const checks = [];
  const add = (name, ok, detail) => {
    checks.push({ name, ok, detail });
    log(`${ok ? "PASS" : "FAIL"}  ${name}: ${detail}`);
  };
  const how = model.backend === "wasm" ? `wasm, ${model.threads} threads, ${model.graph}` : `${model.backend}, ${model.graph}`;
  add("load", true, `model loaded (${how}, ${model.load.seconds.toFixed(1)} s)`);
  let hits = 0;
  let total = 0;
  const cases = [];
  for (const [index, c] of golden.cases.entries()) {
    const i = index + 1;
    const ids = model.encode(c.prompt);
    add(
      `tokenizer ${i}`,
      same(ids, c.prompt_ids),
      same(ids, c.prompt_ids)
        ? "prompt encodes as the reference did"
        : `got ${ids.slice(0, 12)}..., reference ${c.prompt_ids.slice(0, 12)}...`,
    );
    const content = c.chat ? chatContent(c.prompt, promptFormat) : null;
    if (content !== null) {
      const rendered = model.applyChat([{ role: "user", content }]);
      add(`chat template ${i}`, rendered === c.prompt, rendered === c.prompt ? "renders the reference's chat prompt" : `renders ${JSON.stringify(rendered)}`);
    }
    const rec = { ...c, ...recordedFor(c, model.graph) };
    const top1 = await model.teacherForced(c.prompt_ids, c.expected_ids);
    const out = [];
    for await (const id of model.generate(c.prompt_ids, { maxNewTokens: rec.bundle_ids.length })) out.push(id);
    const caseHits = top1.filter((t, k) => t === c.expected_ids[k]).length;
    const [ok, detail, tie] = greedyCheck(out, rec, golden);
    add(
      `greedy ${i}`,
      ok,
      `${detail}; top-1 vs reference ${caseHits}/${c.expected_ids.length}; ` +
        `reference greedy prefix ${commonPrefix(out, c.expected_ids)}/${c.expected_ids.length}`,
    );
    hits += caseHits;
    total += c.expected_ids.length;
    cases.push({
      prompt: c.prompt,
      top1_agreement: caseHits / c.expected_ids.length,
      greedy_prefix: commonPrefix(out, c.expected_ids),
      bundle_prefix: commonPrefix(out, rec.bundle_ids),
      tie,
      greedy_ids: out,
    });
  }
  const rate = total ? hits / total : 0;
  const need = golden.min_top1_agreement;
  add("agreement", rate >= need, `top-1 agreement ${rate.toFixed(3)} (need >= ${need}) over ${total} tokens`);
  const failed = checks.filter((c) => !c.ok).length;
  return { checks, passed: checks.length - failed, failed, top1_agreement: rate, min_top1_agreement: need, cases, graph: model.graph };
}
