"""`slmkit demo`: the whole job on a model made here, no download needed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError

QUESTION = "What is the capital of France?"


def run_demo(out: Path, force: bool = False, log: Callable[[str], None] = print) -> Path:
    from .build import build, plan_build
    from .families import open_checkpoint
    from .tiny.phi3 import make_tiny_model

    model_dir, bundle = out / "tiny-phi-3.5", out / "tiny-phi-3.5-cpu"
    if out.exists():
        if not force:
            raise OutputError(f"'{out}' already exists. Pass --force to redo the demo there, or use -o.")
        if not model_dir.is_dir():
            raise OutputError(f"Refusing to replace '{out}': it is not a demo folder (no tiny-phi-3.5/ inside).")
        shutil.rmtree(out)
    log(f"Making a tiny Phi-3.5-shaped checkpoint in {model_dir} (2 layers, longrope, trained ~10 s on embedded text)")
    make_tiny_model(model_dir, "phi-3.5")
    src = open_checkpoint(str(model_dir))
    plan = plan_build(src, None, "cpu", ())
    log(f"Building {plan.recipe} into {bundle}")
    manifest = build(src, plan, bundle, log=log)
    host = manifest["verification"]["host"]
    log(
        f"Verified: {host['passed']} checks passed, top-1 agreement with the PyTorch reference "
        f"{host['top1_agreement']:.3f}"
    )
    log(f"\nAsking the bundle: {QUESTION}")
    runner = [sys.executable, str(bundle / "runner" / "run.py"), "--prompt", QUESTION, "--max-new-tokens", "40"]
    answer = subprocess.run(runner, capture_output=True, text=True)
    if answer.returncode != 0:
        raise OutputError(f"The bundle's runner failed:\n{answer.stdout}{answer.stderr}")
    log(f"Answer: {answer.stdout.strip()}")
    log(f"\nNext: python {bundle}/runner/run.py --chat    |    python {bundle}/tests/smoke_test.py")
    return bundle
