"""Phi-3.5-vision (phi3v) bundles: the vision graph against transformers' CLIP + the HD layout, the
runtime's own image processor and token count, the embedding graph, every target's bundle, the
runner's --image and its refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_emulate import needs_emulator

from toolkit.build import plan_build
from toolkit.errors import ConfigError, InputModelError
from toolkit.export.stream import export_stream
from toolkit.families import open_checkpoint
from toolkit.families.phi3v.cases import golden_image, write_png
from toolkit.families.phi3v.reference import VisionReference
from toolkit.families.phi3v.vision import image_tokens
from toolkit.plan.config import ExportConfig, QuantizeConfig

TARGETS = ("cpu", "android", "ios", "linux-cuda", "windows-dml")


@pytest.fixture(scope="module")
def fp32_export(tiny_vision, tmp_path_factory) -> Path:
    src = open_checkpoint(str(tiny_vision))
    return export_stream(
        src.path,
        src.weight_files,
        src.config,
        ExportConfig(engine="stream", precision="fp32"),
        QuantizeConfig(),
        tmp_path_factory.mktemp("vision-export"),
    )


def _vision(export: Path, grids: list[tuple[int, int]], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((len(grids), 17, 3, 336, 336)).astype(np.float32)
    for i, (h, w) in enumerate(grids):
        pixels[i, 1 + h * w :] = 0  # the processor zero-fills the crops an image does not use
    sizes = np.array([[336 * h, 336 * w] for h, w in grids], dtype=np.int64)
    session = ort.InferenceSession(str(export / "vision.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": pixels, "image_sizes": sizes})[0], pixels, sizes


@pytest.mark.parametrize("grids", [[(1, 1)], [(2, 3), (4, 1)], [(1, 4), (4, 4)], [(3, 5)]])
def test_vision_graph_equals_the_clip_reference(tiny_vision, fp32_export, grids):
    src = open_checkpoint(str(tiny_vision))
    features, pixels, sizes = _vision(fp32_export, grids)
    assert features.shape[0] == sum(image_tokens(336 * h, 336 * w) for h, w in grids)
    reference = VisionReference(src.path, src.weight_files).features(pixels, sizes)
    assert np.abs(features - reference).max() <= 1e-4


def test_token_count_formula():
    # (h*w + 1) * 144 + 1 + (h + 1) * 12: 144 per crop and the global image, a separator per row
    assert image_tokens(336, 336) == 313
    assert image_tokens(336 * 4, 336 * 4) == 17 * 144 + 1 + 5 * 12
    assert image_tokens(336 * 2, 336 * 3) != image_tokens(336 * 3, 336 * 2)  # rows, not area, add separators


@pytest.mark.parametrize("width,height", [(200, 120), (120, 200), (300, 300), (1000, 90)])
def test_runtime_processor_gives_the_formula_and_the_graph_as_many_rows(fp32_export, tmp_path, width, height):
    import onnxruntime as ort
    import onnxruntime_genai as og

    y, x = np.mgrid[0:height, 0:width]
    image = write_png(tmp_path / "p.png", np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8))
    processor = og.Model(str(fp32_export)).create_multimodal_processor()
    inputs = processor("<|user|>\n<|image_1|>\nWhat is it?<|end|>\n<|assistant|>\n", images=og.Images.open(str(image)))
    sizes = inputs["image_sizes"].as_numpy()
    ids = inputs["input_ids"].as_numpy()[0]
    assert int((ids < 0).sum()) == image_tokens(*sizes[0]) == int(inputs["num_image_tokens"].as_numpy().sum())
    assert (sizes[0] > sizes[0][::-1]).tolist() == [height > width, width > height]  # portrait stays portrait
    session = ort.InferenceSession(str(fp32_export / "vision.onnx"), providers=["CPUExecutionProvider"])
    rows = session.run(None, {"pixel_values": inputs["pixel_values"].as_numpy(), "image_sizes": sizes})[0].shape[0]
    assert rows == image_tokens(*sizes[0])


def test_embedding_places_image_rows_and_accepts_none(fp32_export):
    import onnxruntime as ort

    session = ort.InferenceSession(str(fp32_export / "embedding.onnx"), providers=["CPUExecutionProvider"])
    hidden = json.loads((fp32_export / "genai_config.json").read_text())["model"]["decoder"]["hidden_size"]
    features = np.arange(3 * hidden, dtype=np.float32).reshape(3, hidden)
    ids = np.array([[5, -1, -1, -1, 7]], dtype=np.int64)
    out = session.run(None, {"input_ids": ids, "image_features": features})[0]
    assert np.array_equal(out[0, 1:4], features)
    text = session.run(
        None, {"input_ids": np.array([[5, 7]], dtype=np.int64), "image_features": np.zeros((0, hidden), np.float32)}
    )[0]  # every step after the prompt
    assert np.array_equal(text[0], out[0, [0, 4]])


def test_fp32_decoder_with_int8_vision_follows_the_reference_on_the_image(vision_bundles):
    # the cpu recipe's int8 vision tower alone (its int4 token table moves an fp32 decoder's image
    # case to top-1 0.81; the recipe's int4 decoder: test_every_target_builds_a_verified_phi3v_bundle)
    bundle = vision_bundles("cpu", "export.precision=fp32", "export.embedding_precision=float")
    manifest = json.loads((bundle / "manifest.json").read_text())
    image_case = [c for c in manifest["verification"]["host"]["cases"] if "<|image_1|>" in c["prompt"]]
    assert len(image_case) == 1 and image_case[0]["top1_agreement"] == 1.0 and image_case[0]["greedy_prefix"] >= 15


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_builds_a_verified_phi3v_bundle(vision_bundles, target):
    bundle = vision_bundles(target)
    model = bundle / "model"
    config = json.loads((model / "genai_config.json").read_text())["model"]
    assert config["type"] == "phi3v"
    assert {config[s]["filename"] for s in ("vision", "embedding", "decoder")} == {
        "vision.onnx",
        "embedding.onnx",
        "model.onnx",
    }
    assert "inputs_embeds" in config["decoder"]["inputs"]
    assert ("position_ids" in config["decoder"]["inputs"]) == (target == "windows-dml")
    assert (model / "processor_config.json").is_file() and (bundle / "tests" / "image.png").is_file()
    import onnx

    ops = {
        (n.op_type, next((a.i for a in n.attribute if a.name == "bits"), None))
        for n in onnx.load(str(model / "vision.onnx"), load_external_data=False).graph.node
    }
    mobile_or_cpu = target in ("cpu", "android", "ios")
    assert (("MatMulNBits", 8) in ops) == mobile_or_cpu and (("MatMul", None) in ops) != mobile_or_cpu
    embedding = {n.op_type for n in onnx.load(str(model / "embedding.onnx"), load_external_data=False).graph.node}
    assert ("GatherBlockQuantized" in embedding) == mobile_or_cpu  # the CPU graph: int4 token table
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["verification"]["host"]["failed"] == 0
    golden = json.loads((bundle / "tests" / "golden.json").read_text())
    assert [c.get("image") for c in golden["cases"]].count("image.png") == 1
    proc = subprocess.run(
        [sys.executable, str(bundle / "tests" / "smoke_test.py"), "--provider", "cpu"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "image tokens) encodes as the reference did" in proc.stdout


def _run(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(bundle / "runner" / "run.py"), *args], capture_output=True, text=True)


def test_runner_answers_about_an_image(vision_bundles):
    bundle = vision_bundles("cpu")
    image = bundle / "tests" / "image.png"
    tagged = _run(
        bundle, "--image", str(image), "--prompt", "<|image_1|>\nDescribe the image.", "--max-new-tokens", "6"
    )
    untagged = _run(bundle, "--image", str(image), "--prompt", "Describe the image.", "--max-new-tokens", "6")
    assert tagged.returncode == 0 and tagged.stdout.strip(), tagged.stderr
    assert untagged.stdout == tagged.stdout  # the tag is added in front when the prompt has none
    text_only = _run(bundle, "--prompt", "Describe the image.", "--max-new-tokens", "6")
    assert text_only.returncode == 0, text_only.stderr


def test_runner_refuses_bad_image_input(vision_bundles, bundles, tmp_path):
    bundle = vision_bundles("cpu")
    image = str(bundle / "tests" / "image.png")
    cases = [
        (bundles("cpu"), ["--image", image], "--image: this bundle's model (phi3) reads text only."),
        (
            bundle,
            ["--image", image, "--image", image, "--prompt", "<|image_1|> and <|image_3|>"],
            "The prompt's image tags (<|image_1|>, <|image_3|>) do not match the 2 image(s) given with --image",
        ),
        (
            bundle,
            ["--image", str(tmp_path / "missing.png")],
            "missing.png: cannot read it (No such file or directory).",
        ),
    ]
    (tmp_path / "notes.txt").write_text("not a picture")
    cases.append((bundle, ["--image", str(tmp_path / "notes.txt")], "notes.txt: not a PNG or JPEG image"))
    broken = tmp_path / "broken.png"
    broken.write_bytes(Path(image).read_bytes()[:60])
    cases.append((bundle, ["--image", str(broken)], "--image: the image decoder cannot read"))
    for target, args, message in cases:
        if "--prompt" not in args:
            args = [*args, "--prompt", "What is it?"]
        proc = _run(target, *args)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_runner_refuses_images_past_the_context_cap(vision_bundles):
    bundle = vision_bundles("cpu")  # cap 4096; the test picture takes 2353 tokens
    image = str(bundle / "tests" / "image.png")
    proc = _run(bundle, "--image", image, "--image", image, "--prompt", "Compare them.")
    assert proc.returncode != 0
    assert "(4706 of them for the images); this bundle's context cap is 4096" in proc.stderr
    assert "Use fewer or smaller images, or rebuild with a larger --set optimize.context_cap." in proc.stderr


def test_refusals_before_anything_is_written(tiny_vision, tmp_path):
    src = open_checkpoint(str(tiny_vision))
    with pytest.raises(ConfigError, match=r"export\.engine 'ort-genai' cannot build Phi3VForCausalLM"):
        plan_build(src, None, "cpu", ("export.engine=ort-genai", "quantize.method=default"))
    assert plan_build(src, None, "cpu", ("quantize.method=gptq",)).quantize.method == "gptq"  # its text decoder
    with pytest.raises(
        ConfigError,
        match=r"optimize.context_cap = 2048 cannot hold one image: .* 2509 tokens. "
        r"Use --set optimize.context_cap=3021 or more",
    ):
        plan_build(src, None, "cpu", ("optimize.context_cap=2048",))
    bad = tmp_path / "bad"
    shutil.copytree(tiny_vision, bad)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(bad / "model.safetensors"))
    key = "model.vision_embed_tokens.img_processor.vision_model.embeddings.patch_embedding.weight"
    tensors[key] = tensors[key][:, :, :7, :7].contiguous()  # a patch-7 tower
    save_file(tensors, str(bad / "model.safetensors"))
    src = open_checkpoint(str(bad))
    with pytest.raises(InputModelError, match="The vision tower takes 24x24 patches of 7 pixels; onnxruntime-genai's"):
        export_stream(
            src.path, src.weight_files, src.config, ExportConfig(engine="stream"), QuantizeConfig(), tmp_path / "w"
        )


def test_test_image_is_deterministic(tmp_path):
    a, b = golden_image(tmp_path / "a.png"), golden_image(tmp_path / "b.png")
    assert a.read_bytes() == b.read_bytes() and a.read_bytes().startswith(b"\x89PNG")


def test_bundle_logits_through_the_runtime_processor_equal_the_reference(vision_bundles, tiny_vision):
    """The float32 bundle (vision, embedding and decoder) through onnxruntime-genai's own
    MultiModalProcessor on the test picture, against the PyTorch reference fed the same pixel_values."""
    import onnxruntime_genai as og
    import torch

    from toolkit.families.phi3v.reference import embed
    from toolkit.reference.layerwise import layerwise_model

    bundle = vision_bundles(
        "cpu", "export.precision=fp32", "export.vision_precision=fp32", "export.embedding_precision=float"
    )
    model = og.Model(str(bundle / "model"))
    prompt = "<|user|>\n<|image_1|>\nDescribe the image.<|end|>\n<|assistant|>\n"
    inputs = model.create_multimodal_processor()(prompt, images=og.Images.open(str(bundle / "tests" / "image.png")))
    ids = [int(t) for t in inputs["input_ids"].as_numpy()[0]]
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.set_inputs(inputs)
    logits = np.asarray(generator.get_output("logits"), dtype=np.float32)[0, -1]

    src = open_checkpoint(str(tiny_vision))
    features = VisionReference(src.path, src.weight_files).features(
        inputs["pixel_values"].as_numpy(), inputs["image_sizes"].as_numpy()
    )
    _, reference = layerwise_model(src.path, src.weight_files)
    with torch.no_grad():
        expected = reference(inputs_embeds=embed(reference, ids, features)).logits[0, -1].numpy()
    assert sum(t < 0 for t in ids) == 2353
    assert np.abs(logits - expected).max() <= 1e-3 * (expected.max() - expected.min())


@pytest.mark.parametrize("table", ["wte", "both"])
def test_token_table_kept_as_vision_embed_tokens_wte(tmp_path, table):
    """Phi-3-vision's token table is one module under two names; checkpoints keep either or both."""
    from toolkit.build import build
    from toolkit.tiny.phi3v import make_tiny_phi3v

    model = make_tiny_phi3v(tmp_path / "m", steps=100, table=table)
    src = open_checkpoint(str(model))
    manifest = build(src, plan_build(src, None, "cpu", ()), tmp_path / "b", log=lambda _: None)
    assert manifest["verification"]["host"]["failed"] == 0


@needs_emulator
def test_android_phi3v_bundle_passes_on_an_emulated_phone_cpu(vision_bundles, tmp_path):
    """Vision (Conv, MultiHeadAttention, the layout Loop, int8 MatMulNBits), the int4 embedding
    table and the decoder on aarch64 onnxruntime kernels under qemu, the image case included."""
    from click.testing import CliRunner

    from toolkit.cli import main

    bundle = tmp_path / "android"
    shutil.copytree(vision_bundles("android"), bundle)
    result = CliRunner().invoke(main, ["verify", str(bundle), "--emulate", "arm64", "--cpu", "cortex-a76"])
    assert result.exit_code == 0, result.output
    run = json.loads((bundle / "manifest.json").read_text())["verification"]["emulated"]["arm64"][0]
    assert run["cpu"] == "cortex-a76" and run["failed"] == 0
    image = [c for c in run["cases"] if "<|image_1|>" in c["prompt"]]
    assert len(image) == 1 and image[0]["bundle_prefix"] is not None
