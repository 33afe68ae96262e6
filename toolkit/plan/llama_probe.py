"""Run in a child process by toolkit/plan/llama.py: write a one-layer Q4_0 Llama in GGUF (random
weights, a 64-token vocabulary) and evaluate a few tokens with llama.cpp. A build of llama.cpp
that uses CPU instructions this machine does not execute dies here, not in a build."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

HIDDEN, FFN, HEADS, VOCAB = 256, 512, 4, 64


def write_tiny(path: Path) -> None:
    import gguf

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(1)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([b"<unk>", b"<s>", b"</s>"] + [f"t{i}".encode() for i in range(VOCAB - 3)])
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types([2, 3, 3] + [1] * (VOCAB - 3))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def q4(name: str, rows: int, cols: int) -> None:
        data = rng.standard_normal((rows, cols), dtype=np.float32) * 0.05
        w.add_tensor(
            name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q4_0), raw_dtype=gguf.GGMLQuantizationType.Q4_0
        )

    def norm(name: str) -> None:
        w.add_tensor(name, np.ones(HIDDEN, dtype=np.float32))

    q4("token_embd.weight", VOCAB, HIDDEN)
    norm("blk.0.attn_norm.weight")
    for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
        q4(f"blk.0.{t}.weight", HIDDEN, HIDDEN)
    norm("blk.0.ffn_norm.weight")
    q4("blk.0.ffn_gate.weight", FFN, HIDDEN)
    q4("blk.0.ffn_up.weight", FFN, HIDDEN)
    q4("blk.0.ffn_down.weight", HIDDEN, FFN)
    norm("output_norm.weight")
    q4("output.weight", VOCAB, HIDDEN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    import llama_cpp

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.gguf"
        write_tiny(path)
        llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, verbose=False)
        llm.eval([1, 5, 9, 13, 17, 21, 25, 29])
        logits = np.asarray(llm.scores[7], dtype=np.float32)
        if not np.isfinite(logits).all():
            raise SystemExit("llama.cpp gave non-finite logits")
    features = llama_cpp.llama_print_system_info().decode().split("|")
    cpu = " ".join(f.split("=")[0].strip() for f in features if f.strip().endswith("= 1"))
    print(f"llama-cpp-python {llama_cpp.__version__} evaluates a Q4_0 model here ({cpu.replace('CPU : ', '')})")


if __name__ == "__main__":
    main()
