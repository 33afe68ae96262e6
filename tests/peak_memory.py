"""Peak memory against model depth: run a script on random Phi-3.5-shaped checkpoints (hidden 512)
of 2 and 10 layers, each in its own process, and compare the peaks with one layer's weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYER_BYTES = 4 * 512 * (3 * 512 + 512 + 3 * 2048)  # one layer's weights in float32: 16.8 MB


def peak_growth(script: str, tmp_path: Path) -> tuple[int, dict[int, int]]:
    """(peak RSS of the 10-layer run minus the 2-layer run, both peaks). The script gets the model
    folder and a fresh work folder as arguments and prints its peak RSS in bytes last."""
    from toolkit.tiny.phi3 import make_random_phi3

    peaks = {}
    for layers in (2, 10):
        model = tmp_path / f"m{layers}"
        make_random_phi3(model, layers, hidden=512, heads=8, intermediate=2048, vocab=4096)
        done = subprocess.run(
            [sys.executable, "-c", script, str(model), str(tmp_path / f"w{layers}")],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[layers] = int(done.stdout.split()[-1])
    return peaks[10] - peaks[2], peaks
