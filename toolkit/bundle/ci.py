"""`slmkit ci init`: a GitHub Actions workflow that builds one bundle per target (matrix), runs each
bundle's smoke test where a hosted runner can, and uploads `slmkit pack` archives as artifacts."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

from ..errors import ConfigError, OutputError, did_you_mean
from ..plan.catalog import target_names

# Hosted runners have no GPU: GPU bundles run their graph on the CPU provider there. Phone bundles
# run on the hosted ARM64 runner, whose int4 kernels are the phone's (KleidiAI), not x86's.
SMOKE_PROVIDER = {
    "cpu": "bundle",
    "android": "bundle",
    "ios": "bundle",
    "windows-dml": "cpu",
    "linux-cuda": "cpu",
    "gguf": "bundle",
    "web": "bundle",  # WASM in the runner's Chrome (and WebGPU if it hands out an adapter)
}
# The runtime a bundle's smoke test installs (GPU bundles: the CPU package of onnxruntime-genai), and more.
SMOKE_RUNTIME = {"gguf": ("llama-cpp-python", "gguf"), "web": ("onnxruntime-genai", "playwright")}
SMOKE_RUNNER = {"android": "ubuntu-24.04-arm", "ios": "ubuntu-24.04-arm"}
X86_RUNNER = "ubuntu-latest"

TEMPLATE = """\
# Written by `slmkit ci init`. Per target: build and verify on x86, upload the bundle archive; then
# the bundle's own smoke test, with the runtime package alone, on the CPU it is for (ARM64 for
# android and ios: the phone's int4 kernels).
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
    runs-on: {x86}
    strategy:
      fail-fast: false
      matrix:
        target: [{targets}]
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
      - name: Pack
        run: slmkit pack bundle-${{{{ matrix.target }}}} -o bundle-${{{{ matrix.target }}}}.tar.gz
      - uses: actions/upload-artifact@v4
        with:
          name: bundle-${{{{ matrix.target }}}}
          path: bundle-${{{{ matrix.target }}}}.tar.gz
          if-no-files-found: error

  smoke:
    needs: bundle
    runs-on: ${{{{ matrix.runs_on }}}}
    strategy:
      fail-fast: false
      matrix:
        include:
{includes}
    steps:
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - uses: actions/download-artifact@v4
        with:
          name: bundle-${{{{ matrix.target }}}}
      - name: Unpack, and install the runtime version the manifest names
        run: |
          tar -xzf bundle-${{{{ matrix.target }}}}.tar.gz
          pip install "${{{{ matrix.runtime }}}}==$(python -c "import json, sys; m = json.load(open(sys.argv[1])); print(m['dependencies'].get(sys.argv[2]) or m['runtime']['version'])" bundle-${{{{ matrix.target }}}}/manifest.json ${{{{ matrix.runtime }}}})" numpy ${{{{ matrix.more }}}}
      - name: Smoke test (the bundle's own, runtime package only)
        run: python bundle-${{{{ matrix.target }}}}/tests/smoke_test.py --provider ${{{{ matrix.smoke_provider }}}}
"""


def default_install() -> str:
    """The pip command that installs this slmkit on a CI runner, from how it was installed here
    (PEP 610's direct_url.json): the same git commit, or the same version from an index. slmkit
    is not on the public index and a local folder is out of a runner's reach: then the user says."""
    dist = metadata.distribution("slmkit")
    direct = json.loads(dist.read_text("direct_url.json") or "null")
    if direct is None:
        return f"pip install 'slmkit=={dist.version}'"
    vcs = direct.get("vcs_info")
    if vcs and vcs.get("vcs") == "git":
        return f"pip install 'slmkit @ git+{direct['url']}@{vcs['commit_id']}'"
    raise ConfigError(
        f"slmkit here was installed from {direct.get('url', 'a local file')}, which a CI runner cannot reach "
        "(slmkit is not on the public package index). Pass the command that installs it on the runner, e.g. "
        "--install \"pip install 'slmkit @ git+https://github.com/OWNER/slmkit@COMMIT'\", or "
        '--install "pip install ./slmkit" when this repository holds a copy.'
    )


def workflow(model: str, targets: list[str], install: str | None) -> str:
    known = target_names()
    for t in targets:
        if t not in known:
            raise ConfigError(f"Unknown target '{t}'. Available: {', '.join(known)}.{did_you_mean(t, known)}")
    install = install or default_install()
    includes = "\n".join(
        f"          - target: {t}\n            runs_on: {SMOKE_RUNNER.get(t, X86_RUNNER)}\n"
        f"            smoke_provider: {SMOKE_PROVIDER[t]}\n"
        f"            runtime: {SMOKE_RUNTIME.get(t, ('onnxruntime-genai', ''))[0]}\n"
        f'            more: "{SMOKE_RUNTIME.get(t, ("", ""))[1]}"'
        for t in targets
    )
    return TEMPLATE.format(
        model=model,
        targets=", ".join(targets),
        includes=includes,
        x86=X86_RUNNER,
        install=json.dumps(install),
        recipe_glob="recipes/**",
    )  # a JSON string is YAML


def write_workflow(root: Path, model: str, targets: list[str], install: str | None, force: bool) -> Path:
    path = root / ".github" / "workflows" / "slmkit.yml"
    if path.exists() and not force:
        raise OutputError(f"'{path}' already exists. Pass --force to overwrite it.")
    text = workflow(model, targets, install)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
