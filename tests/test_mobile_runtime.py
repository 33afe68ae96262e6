"""The Android runner run on the JVM against fakes of the onnxruntime-genai Java API
(tests/data/genai_fakes): every fake that stands for a native object counts itself open until it is
closed, and can be made to throw in its constructor as a broken model file would. So a runner that
leaks a Config when the Model cannot be made, or makes a Config before it has read a malformed
genai_config.json, fails here, not as memory lost on a phone.

tests/data/genai_fakes/LeakDriver.kt runs SlmkitRunner.kt once per scenario and prints a JSON line
of what the fakes saw; it is compiled (one kotlinc run) with the runner and with a copy of the runner
that has the old leaking pattern, which must be caught. Same tools and the same skip rule as
tests/test_mobile_compile.py (a missing tool skips with the packages to install; with
SLMKIT_REQUIRE_MOBILE_COMPILE=1 it fails); the kotlin-stdlib.jar next to that kotlinc runs the result.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_mobile_compile import KOTLIN_RUNNER, ORG_JSON, _mutate, _output, _require, _run

from toolkit.verify.golden import write_prompt_format

FAKES = Path(__file__).parent / "data" / "genai_fakes"
DRIVER = FAKES / "LeakDriver.kt"
PACKAGE = "package ai.slmkit.runner"
NATIVE = ["Config", "Model", "Tokenizer"]  # what a constructed runner holds until close()

# The leaking pattern each fix replaced; the copy of the runner with all three must be caught.
LEAKS = [
    ("Config made before the JSON is read", r" *private val config: Config = Config\(modelDir\.path\)\n", ""),
    (
        "Config made before the JSON is read",
        r"(class SlmkitRunner\([^)]*\) : AutoCloseable \{\n)",
        r"\1    private val config: Config = Config(modelDir.path)\n",
    ),
    (
        "Config not closed when Model throws",
        r"try \{ Model\(config\) \} catch \(e: Throwable\) \{ config\.close\(\); throw e \}",
        "Model(config)",
    ),
    (
        "Model and Config not closed when Tokenizer throws",
        r"try \{ Tokenizer\(model\) \} catch \(e: Throwable\) \{ model\.close\(\); config\.close\(\); throw e \}",
        "Tokenizer(model)",
    ),
]

TEMPLATE = "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


def _bundle(root: Path, name: str, genai_config, prompt_format: str | None = None) -> Path:
    """<root>/<name>/model with genai_config.json (a dict, or text as it is; None: no file) and,
    given a chat template, prompt_format.json as slmkit writes it."""
    model = root / name / "model"
    model.mkdir(parents=True)
    if genai_config is not None:
        text = genai_config if isinstance(genai_config, str) else json.dumps(genai_config, indent=4)
        (model / "genai_config.json").write_text(text)
    if prompt_format is not None:
        write_prompt_format(model.parent, prompt_format)
    return model


def _genai_config(eos, kind: str = "phi3") -> dict:
    """The part of a builder-made genai_config.json the runner reads, in its place."""
    return {
        "model": {
            "bos_token_id": 1,
            "context_length": 64,
            "eos_token_id": eos,
            "pad_token_id": 0,
            "type": kind,
            "vocab_size": 32064,
        },
        "search": {"do_sample": False, "max_length": 64, "num_beams": 1, "top_k": 1},
    }


def _scenarios(root: Path) -> list[str]:
    """The driver's arguments: name|class whose constructor throws|generator tokens|model dir."""
    int_eos = _bundle(root, "int_eos", _genai_config(2), TEMPLATE)
    array_eos = _bundle(root, "array_eos", _genai_config([2, 32000, 32007]))
    malformed = _bundle(root, "malformed", '{"model": {"eos_token_id": 2, "type": "phi3"},\n "search": {"max_')
    bad_format = _bundle(root, "bad_format", _genai_config(2))
    (bad_format / "prompt_format.json").write_text('{"single_turn": ')
    no_search = _bundle(root, "no_search", {"model": {"eos_token_id": 2}})
    missing = _bundle(root, "missing", None)
    vision = _bundle(root, "vision", _genai_config(2, "phi3v"), TEMPLATE)
    picture = root / "picture.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n")  # the fake Images does not decode it
    rows = [
        ("malformed_genai_config", "", "", malformed),
        ("malformed_prompt_format", "", "", bad_format),
        ("genai_config_without_search", "", "", no_search),
        ("missing_genai_config", "", "", missing),
        ("config_throws", "Config", "", int_eos),
        ("model_throws", "Model", "", int_eos),
        ("tokenizer_throws", "Tokenizer", "", int_eos),
        ("int_eos", "", "5,6,2,7", int_eos),
        ("array_eos", "", "5,32007,6", array_eos),
        ("max_new_tokens", "", ",".join(str(t) for t in range(10, 30)), array_eos),
        ("generator_throws", "Generator", "5,6", int_eos),
        ("stream_throws", "TokenizerStream", "5,6", int_eos),
    ]
    images = [
        ("image_ask", "", "5,6,2,7", vision),
        ("image_on_text_bundle", "", "5,6", int_eos),
        ("image_processor_throws", "NamedTensors", "5,6", vision),
        ("image_generator_throws", "Generator", "5,6", vision),
    ]
    lora = _bundle(root, "lora", _genai_config(2), TEMPLATE)
    (lora / "adapters").mkdir()
    for name in ("two", "one"):  # the fake Adapters does not read them
        (lora / "adapters" / f"{name}.onnx_adapter").write_bytes(b"")
    adapters = [
        ("adapter_ask", "", "5,6,2", lora, "two"),
        ("adapter_base", "", "5,6,2", lora, ""),
        ("adapter_unknown", "", "5,6,2", lora, "three"),
        ("adapter_load_throws", "loadAdapter", "5,6,2", lora, "one"),
        ("adapters_throws", "Adapters", "5,6,2", lora, "one"),
    ]
    return (
        [f"{name}|{fail}|{script}|{model}|" for name, fail, script, model in rows]
        + [f"{name}|{fail}|{script}|{model}|{picture}" for name, fail, script, model in images]
        + [f"{name}|{fail}|{script}|{model}||{adapter}" for name, fail, script, model, adapter in adapters]
    )


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict[str, dict]]:
    """{"runner": ..., "leaky": ...}: scenario name -> the driver's report, for the runner and for
    its copy with the leaks above."""
    javac, java = shutil.which("javac"), shutil.which("java")
    kotlinc = os.environ.get("SLMKIT_KOTLINC") or shutil.which("kotlinc")
    _require("javac (default-jdk-headless)", javac)
    _require("java (default-jdk-headless)", java)
    _require("kotlinc (kotlin)", kotlinc and Path(kotlinc).is_file())
    _require(f"{ORG_JSON} (libandroid-json-java)", ORG_JSON.exists())
    stdlib = Path(kotlinc).resolve().parent.parent / "lib" / "kotlin-stdlib.jar"
    _require(f"{stdlib} (kotlin)", stdlib.exists())
    tmp = tmp_path_factory.mktemp("mobile-runtime")
    classes = tmp / "classes"
    proc = _run([javac, "-nowarn", "-d", classes, *sorted(FAKES.glob("ai/**/*.java"))])
    assert proc.returncode == 0, f"javac failed on tests/data/genai_fakes:\n{_output(proc)}"

    leaky = KOTLIN_RUNNER.read_text()
    for what, pattern, replacement in LEAKS:
        leaky = _mutate(leaky, pattern, replacement, what)
    copies = tmp / "leaky"  # same file names: the driver's class is LeakDriverKt in both packages
    copies.mkdir()
    (copies / KOTLIN_RUNNER.name).write_text(leaky.replace(PACKAGE, f"{PACKAGE}.leaky", 1))
    (copies / DRIVER.name).write_text(DRIVER.read_text().replace(PACKAGE, f"{PACKAGE}.leaky", 1))
    proc = _run(
        [
            kotlinc,
            "-jvm-target",
            "1.8",
            "-cp",
            os.pathsep.join(map(str, [classes, ORG_JSON])),
            "-d",
            classes,
            KOTLIN_RUNNER,
            DRIVER,
            copies / KOTLIN_RUNNER.name,
            copies / DRIVER.name,
        ]
    )
    assert proc.returncode == 0, f"kotlinc rejected the runner or the driver:\n{_output(proc)}"

    args = _scenarios(tmp / "bundles")
    classpath = os.pathsep.join(map(str, [classes, ORG_JSON, stdlib]))
    result = {}
    for variant, main in [
        ("runner", "ai.slmkit.runner.LeakDriverKt"),
        ("leaky", "ai.slmkit.runner.leaky.LeakDriverKt"),
    ]:
        proc = _run([java, "-cp", classpath, main, *args])
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert proc.returncode == 0 and len(lines) == len(args), (
            f"the {variant} driver failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
        result[variant] = {r["scenario"]: r for r in lines}
    return result


@pytest.mark.parametrize(
    "scenario,exception",
    [
        ("malformed_genai_config", "JSONException"),
        ("malformed_prompt_format", "JSONException"),
        ("genai_config_without_search", "JSONException"),
        ("missing_genai_config", "FileNotFoundException"),
    ],
)
def test_bad_json_fails_before_any_native_object_exists(reports, scenario, exception):
    report = reports["runner"][scenario]
    assert report.get("threw") == exception and report["threw_in"] == "constructor", report
    assert report["created"] == [] and report["open"] == [], report


@pytest.mark.parametrize(
    "scenario,made",
    [
        ("config_throws", []),
        ("model_throws", ["Config"]),
        ("tokenizer_throws", ["Config", "Model"]),
    ],
)
def test_failed_native_constructor_closes_what_was_made(reports, scenario, made):
    report = reports["runner"][scenario]
    assert report.get("threw") == "GenAIException" and report["threw_in"] == "constructor", report
    assert report["created"] == made, report
    assert report["open"] == [] and report["bad_closes"] == 0, report


@pytest.mark.parametrize(
    "scenario,eos_ids,answer,prompt",
    [
        ("int_eos", [2], "<5><6>", TEMPLATE.replace("{content}", "hi")),
        ("array_eos", [2, 32000, 32007], "<5>", "<|user|>\nhi<|end|>\n<|assistant|>\n"),  # no prompt_format.json
        ("max_new_tokens", [2, 32000, 32007], "".join(f"<{t}>" for t in range(10, 18)), None),
    ],
)
def test_runner_answers_and_close_leaves_nothing_open(reports, scenario, eos_ids, answer, prompt):
    """Stops at any of the EOS ids (one int or a list in genai_config.json) or after maxNewTokens;
    each generation closes its Sequences, GeneratorParams, TokenizerStream and Generator, close()
    the rest, each once."""
    report = reports["runner"][scenario]
    assert "threw" not in report, report
    assert report["eos_ids"] == eos_ids and report["max_length"] == 64, report
    assert report["answer"] == answer and "".join(report["pieces"]) == answer, report
    if prompt is not None:
        assert report["prompt"] == prompt, report
    assert report["open_after_init"] == NATIVE and report["open_after_ask"] == NATIVE, report
    assert report["created"] == [*NATIVE, "Sequences", "GeneratorParams", "TokenizerStream", "Generator"], report
    assert report["open"] == [] and report["bad_closes"] == 0, report


def test_failed_generation_closes_its_objects(reports):
    report = reports["runner"]["generator_throws"]
    assert report.get("threw") == "GenAIException" and report["threw_in"] == "ask", report
    assert report["open_after_ask"] == NATIVE, report
    assert report["open"] == [] and report["bad_closes"] == 0, report


def test_failed_stream_closes_generator_params(reports):
    report = reports["runner"]["stream_throws"]
    assert report.get("threw") == "GenAIException" and report["threw_in"] == "ask", report
    assert report["open_after_ask"] == NATIVE, report
    assert report["open"] == [], report


def test_image_answer_closes_images_processor_and_inputs(reports):
    """askAboutImage tags the message, feeds the processor's inputs and closes each object it made."""
    report = reports["runner"]["image_ask"]
    assert "threw" not in report and report["answer"] == "<5><6>", report
    assert report["prompt"] == TEMPLATE.replace("{content}", "<|image_1|>\nhi"), report
    assert report["created"] == [
        *NATIVE,
        "Images",
        "MultiModalProcessor",
        "NamedTensors",
        "GeneratorParams",
        "TokenizerStream",
        "Generator",
    ], report
    assert report["open_after_ask"] == NATIVE and report["open"] == [] and report["bad_closes"] == 0, report


@pytest.mark.parametrize(
    "scenario,made",
    [
        ("image_on_text_bundle", []),  # refused before any image object exists
        ("image_processor_throws", ["Images", "MultiModalProcessor"]),
        (
            "image_generator_throws",
            ["Images", "MultiModalProcessor", "NamedTensors", "GeneratorParams", "TokenizerStream"],
        ),
    ],
)
def test_image_failures_close_what_was_made(reports, scenario, made):
    report = reports["runner"][scenario]
    expected = "GenAIException" if scenario == "image_generator_throws" else "IllegalArgumentException"
    assert report.get("threw") == expected and report["threw_in"] == "ask", report
    assert report["created"] == [*NATIVE, *made], report
    assert report["open_after_ask"] == NATIVE and report["open"] == [] and report["bad_closes"] == 0, report


def test_the_old_leaking_runner_is_caught(reports):
    """The same driver on the runner with each fix undone reports the leaks: the test has teeth."""
    leaky, runner = reports["leaky"], reports["runner"]
    assert leaky["malformed_genai_config"]["created"] == ["Config"]
    assert leaky["malformed_genai_config"]["open"] == ["Config"]
    assert leaky["model_throws"]["open"] == ["Config"]
    assert leaky["tokenizer_throws"]["open"] == ["Config", "Model"]
    for scenario in ("int_eos", "array_eos"):  # and works as the runner does otherwise
        assert leaky[scenario] == runner[scenario]


def test_runtime_adapters_load_once_and_the_active_one_runs(reports):
    """A bundle with model/adapters/: every adapter is loaded once with the model (sorted by name), the
    active one is set on each generator, none is set for the base, and close() closes Adapters too."""
    ask, base = reports["runner"]["adapter_ask"], reports["runner"]["adapter_base"]
    for report in (ask, base):
        assert "threw" not in report and report["answer"] == "<5><6>", report
        assert report["loaded_adapters"] == ["one", "two"], report
        assert report["open_after_ask"] == sorted([*NATIVE, "Adapters"]), report
        assert report["open"] == [] and report["bad_closes"] == 0, report
    assert ask["active_adapter"] == "two" and base["active_adapter"] is None


@pytest.mark.parametrize(
    "scenario,threw,threw_in,made",
    [
        ("adapter_unknown", "IllegalArgumentException", "ask", [*NATIVE, "Adapters"]),
        ("adapter_load_throws", "GenAIException", "constructor", [*NATIVE, "Adapters"]),
        ("adapters_throws", "GenAIException", "constructor", NATIVE),
    ],
)
def test_adapter_failures_close_what_was_made(reports, scenario, threw, threw_in, made):
    report = reports["runner"][scenario]
    assert report.get("threw") == threw and report["threw_in"] == threw_in, report
    assert report["created"] == made and report["open"] == [] and report["bad_closes"] == 0, report
