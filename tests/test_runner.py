"""runner/run.py: what a user of the bundle runs, with onnxruntime-genai alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _run(bundle: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(bundle / "runner" / "run.py"), *args], capture_output=True, text=True, input=stdin
    )


def _runner_module(bundle: Path):
    sys.path.insert(0, str(bundle / "runner"))
    try:
        import run  # the bundle's own copy

        return run
    finally:
        sys.path.pop(0)


def test_chat_answer_through_the_template(bundles):
    proc = _run(bundles("cpu"), "--prompt", "What is the capital of France?")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "The capital of France is Paris."


def test_multi_turn_chat_on_stdin(bundles):
    proc = _run(bundles("cpu"), "--chat", stdin="What is the capital of France?\nWhat is the capital of Italy?\n\n")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "The capital of France is Paris." and len(lines) == 2


def test_generation_stops_at_every_eos_id_and_streams(bundles):
    bundle = bundles("cpu")
    run = _runner_module(bundle)
    import onnxruntime_genai as og

    model = run.load_model(bundle / "model")
    tokenizer = og.Tokenizer(model)
    stops = run.eos_ids(bundle / "model")
    assert sorted(stops) == [600, 601, 607]  # <|endoftext|>, <|assistant|>, <|end|>: all three of Phi-3.5's
    prompt = tokenizer.encode(
        run.format_chat(tokenizer, [{"role": "user", "content": "What is the capital of France?"}])
    )
    streamed: list[int] = []
    with_stops = run.generate(model, tokenizer, prompt, 4096, stops, max_new_tokens=64, on_token=streamed.append)
    without = run.generate(model, tokenizer, prompt, 4096, [], max_new_tokens=64)
    assert streamed == with_stops  # each token was handed out as it was generated
    assert not set(with_stops) & set(stops)
    assert without[: len(with_stops)] == with_stops and without[len(with_stops)] in stops  # it stopped at the EOS
    # Any id in the stop list ends generation where the model first emits it: every token of the
    # answer taken as a stop id in turn (ids it does emit, so each check can fail).
    for position, stop in enumerate(with_stops):
        out = run.generate(model, tokenizer, prompt, 4096, [stop], max_new_tokens=64)
        assert out == with_stops[: with_stops.index(stop)], (position, stop)


def test_context_cap_is_honoured(bundles, tmp_path):
    bundle = bundles("cpu")
    run = _runner_module(bundle)
    import onnxruntime_genai as og

    model = run.load_model(bundle / "model")
    tokenizer = og.Tokenizer(model)
    prompt = tokenizer.encode("The capital of France is")
    out = run.generate(model, tokenizer, prompt, len(prompt) + 3, [], max_new_tokens=100)
    assert len(out) == 3  # max_length = the cap, not prompt + max_new_tokens
    long_prompt = " ".join(["word"] * 5000)
    proc = _run(bundle, "--prompt", long_prompt, "--raw")
    assert proc.returncode != 0
    assert (
        "this bundle's context cap is 4096 (search.max_length in model/genai_config.json). Shorten the prompt."
        in proc.stderr
    )


def test_sampling_is_seeded_and_greedy_is_the_default(bundles):
    bundle = bundles("cpu")
    args = ("--prompt", "The capital of France is", "--raw", "--max-new-tokens", "24")
    greedy = _run(bundle, *args).stdout
    assert greedy == _run(bundle, *args).stdout
    sampled = [_run(bundle, *args, "--temperature", "1.5", "--top-k", "50", "--seed", str(s)).stdout for s in (1, 1, 2)]
    assert sampled[0] == sampled[1]  # same seed, same text
    assert len({greedy, sampled[0], sampled[2]}) >= 2  # sampling does change the text


def test_top_k_0_samples_from_the_whole_vocabulary(bundles):
    """--top-k 0 is documented as no limit: the runtime's own default (50) must not apply."""
    bundle = bundles("cpu")
    vocab = json.loads((bundle / "model" / "genai_config.json").read_text())["model"]["vocab_size"]
    args = (
        "--prompt",
        "The capital of France is",
        "--raw",
        "--max-new-tokens",
        "40",
        "--temperature",
        "1.5",
        "--seed",
        "3",
    )
    no_limit, whole = (_run(bundle, *args, "--top-k", k) for k in ("0", str(vocab)))
    assert no_limit.returncode == 0, no_limit.stderr
    assert no_limit.stdout == whole.stdout


def test_provider_override_for_gpu_bundles(bundles):
    proc = _run(bundles("linux-cuda"), "--prompt", "What is the capital of France?", "--provider", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "The capital of France is Paris."
    genai = json.loads((bundles("linux-cuda") / "model" / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["session_options"]["provider_options"][0].keys() == {"cuda"}


def test_runner_needs_a_prompt_or_chat(bundles):
    proc = _run(bundles("cpu"))
    assert proc.returncode == 2 and "give --prompt TEXT or --chat" in proc.stderr


def test_mobile_packages_are_pinned_to_the_verified_runtime_and_the_ort_it_was_built_against():
    """The AAR/pod versions equal the onnxruntime-genai the bundle was verified with; the Android ONNX
    Runtime is the one that release was built against (the lower bound of its onnxruntime requirement),
    not the desktop onnxruntime, which need not exist on Maven Central."""
    import re
    from importlib import metadata

    runners = Path(__file__).resolve().parent.parent / "toolkit" / "bundle" / "runners"
    genai = metadata.version("onnxruntime-genai")
    built_against = next(
        re.search(r">=\s*([\d.]+)", r).group(1)
        for r in metadata.requires("onnxruntime-genai")
        if re.match(r"onnxruntime\b(?!-)", r)
    )
    gradle = (runners / "android" / "dependencies.gradle.kts").read_text()
    assert f'files("libs/onnxruntime-genai-android-{genai}.aar")' in gradle
    assert f'"com.microsoft.onnxruntime:onnxruntime-android:{built_against}"' in gradle
    assert 'abiFilters += listOf("arm64-v8a", "x86_64")' in gradle  # the emulator CI runs the test on
    assert f"pod 'onnxruntime-genai-objc', '{genai}'" in (runners / "ios" / "Podfile").read_text()
