"""`slmkit ci init`: a GitHub Actions workflow that builds one bundle per target (matrix), runs each
bundle's smoke test where a hosted runner can, and uploads `slmkit pack` archives as artifacts."""

from __future__ import annotations

from pathlib import Path

from .catalog import target_names
from .errors import ConfigError, OutputError, did_you_mean

# Hosted runners have no GPU: GPU bundles run their graph on the CPU provider there.
SMOKE_PROVIDER = {"cpu": "bundle", "android": "bundle", "ios": "bundle", "windows-dml": "cpu", "linux-cuda": "cpu"}

TEMPLATE = """\
# Written by `slmkit ci init`. One job per target: build, smoke-test, upload the bundle archive.
name: slmkit bundles

on:
  workflow_dispatch:
  push:
    paths: ["{recipe_glob}", ".github/workflows/slmkit.yml"]

env:
  MODEL: "{model}"
  HF_HOME: ${{{{ github.workspace }}}}/.hf-cache

jobs:
  bundle:
    runs-on: ubuntu-latest
    strategy:
      fail-fast: false
      matrix:
        target: [{targets}]
        include:
{includes}
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
          cache: pip
      - name: Cache the model download
        uses: actions/cache@v4
        with:
          path: .hf-cache
          key: hf-${{{{ env.MODEL }}}}
      - name: Install slmkit
        run: {install}
      - name: Build and verify
        run: slmkit build --model "$MODEL" --target ${{{{ matrix.target }}}} -o bundle-${{{{ matrix.target }}}}
      - name: Smoke test (the bundle's own, runtime package only)
        run: python bundle-${{{{ matrix.target }}}}/tests/smoke_test.py --provider ${{{{ matrix.smoke_provider }}}}
      - name: Pack
        run: slmkit pack bundle-${{{{ matrix.target }}}} -o bundle-${{{{ matrix.target }}}}.tar.gz
      - uses: actions/upload-artifact@v4
        with:
          name: bundle-${{{{ matrix.target }}}}
          path: bundle-${{{{ matrix.target }}}}.tar.gz
          if-no-files-found: error
"""


def workflow(model: str, targets: list[str], install: str) -> str:
    known = target_names()
    for t in targets:
        if t not in known:
            raise ConfigError(f"Unknown target '{t}'. Available: {', '.join(known)}.{did_you_mean(t, known)}")
    includes = "\n".join(
        f"          - target: {t}\n            smoke_provider: {SMOKE_PROVIDER[t]}" for t in targets
    )
    return TEMPLATE.format(model=model, targets=", ".join(targets), includes=includes, install=install,
                           recipe_glob="recipes/**")


def write_workflow(root: Path, model: str, targets: list[str], install: str, force: bool) -> Path:
    path = root / ".github" / "workflows" / "slmkit.yml"
    if path.exists() and not force:
        raise OutputError(f"'{path}' already exists. Pass --force to overwrite it.")
    text = workflow(model, targets, install)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
