"""Load time and peak memory of a bundle's model, measured inside the process that loads it and
generates with it. `slmkit bench` uses PeakMemory in its own process; under ARM64 emulation
(`slmkit bench --emulate arm64`) this file runs as a script in the emulated Python, which has only
onnxruntime-genai and numpy: it imports nothing from slmkit.

    python memory_probe.py MODEL_DIR PROMPT_TOKENS NEW_TOKENS OUT.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class PeakMemory:
    """Load time, and the peak RSS above a baseline (the process before the model: the imported
    runtime) while loading, and while loading and then generating. Linux resets a process's peak (VmHWM) on
    `5 > /proc/self/clear_refs`; elsewhere the peaks stay None."""

    def __init__(self) -> None:
        self.base = self._reset()
        self.load_s: float = 0.0
        self.load_mb: float | None = None
        self.run_mb: float | None = None
        self._start = 0.0

    @staticmethod
    def _status(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def _reset(self) -> int | None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return None
        return self._status("VmRSS")

    def _above(self) -> float | None:
        peak = self._status("VmHWM")
        return None if self.base is None or peak is None else max(peak - self.base, 0) / (1 << 20)

    def loading(self) -> None:
        self.base = self._reset()
        self._start = time.perf_counter()

    def loaded(self) -> None:
        self.load_s = time.perf_counter() - self._start
        self.load_mb = self._above()

    def generated(self) -> None:
        self.run_mb = self._above()


def main(model_dir: str, prompt_tokens: int, new_tokens: int, out: str) -> None:
    """Load the model (the bundle's genai_config.json, CPU), generate new_tokens greedy tokens
    after a prompt of prompt_tokens token ids, write {load_s, load_mb, run_mb} to `out`."""
    import numpy as np
    import onnxruntime_genai as og

    memory = PeakMemory()
    memory.loading()
    model = og.Model(og.Config(model_dir))
    memory.loaded()
    ids = list(og.Tokenizer(model).encode("The quick brown fox jumps over the lazy dog. "))
    prompt = np.asarray((ids * (prompt_tokens // len(ids) + 1))[:prompt_tokens], dtype=np.int32)
    params = og.GeneratorParams(model)
    total = prompt_tokens + new_tokens
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    while not generator.is_done():
        generator.generate_next_token()
    memory.generated()
    Path(out).write_text(json.dumps({"load_s": memory.load_s, "load_mb": memory.load_mb, "run_mb": memory.run_mb}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
