"""Phi-3.5-vision bundles at the real size, from random bf16 weights of Phi-3.5-vision-instruct's
shape (CLIP ViT-L/14-336 tower, HD projection, Phi-3.5-mini text decoder; 4.15 B parameters at
32 layers; no download):

1. export peak memory and wall time of the phi3v checkpoint (int4 decoder, int8 vision tower: the
   cpu recipe), next to its text-only twin (the same Phi-3.5-mini-shaped decoder without the
   tower), each in a child process (peak RSS from wait4);
2. size of each component next to Microsoft's published cpu int4 bundle
   (microsoft/Phi-3.5-vision-instruct-onnx, cpu-int4-rtn-block-32-acc-level-4: vision about
   445 MB, embedding 394 MB in float32, text about 2.33 GB; as listed on its model page);
3. vision encode time of one image at 1 crop (image_sizes 336 x 336) and at 16 crops (1344 x 1344),
   onnxruntime on vision.onnx, median of 3;
4. time to first token with one image (the runtime's image processor on slmkit's test picture,
   3 x 5 crops, 2353 image tokens) and decode tok/s after it, through onnxruntime-genai.

    python benchmarks/vision.py [--layers 32] [--work DIR] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from build_memory import run_child  # noqa: E402

# The streamed int4 cpu export, the vision tower as the cpu recipe writes it (int8 weights).
CHILD = """
import sys, time
from pathlib import Path
from toolkit.plan.config import ExportConfig, QuantizeConfig
from toolkit.families import open_checkpoint
from toolkit.export.stream import export_stream
src, work = open_checkpoint(sys.argv[1]), Path(sys.argv[2])
start = time.perf_counter()
export_stream(src.path, src.weight_files, src.config, ExportConfig(precision="int4", vision_precision="int8"),
              QuantizeConfig(), work)
print("WALL", time.perf_counter() - start)
"""

PUBLISHED = {"vision": 445e6, "embedding": 394e6, "text": 2.33e9}

RUNTIME = """
import sys, time, statistics
import numpy as np, onnxruntime as ort, onnxruntime_genai as og
model_dir, image = sys.argv[1], sys.argv[2]
session = ort.InferenceSession(model_dir + "/vision.onnx", providers=["CPUExecutionProvider"])
for side in (1, 4):
    pixels = np.random.default_rng(0).standard_normal((1, 17, 3, 336, 336)).astype(np.float32)
    sizes = np.array([[336 * side, 336 * side]], dtype=np.int64)
    runs = []
    for _ in range(3):
        start = time.perf_counter(); session.run(None, {"pixel_values": pixels, "image_sizes": sizes})
        runs.append(time.perf_counter() - start)
    print("ENCODE", side * side, statistics.median(runs))
del session
model = og.Model(model_dir)
processor = model.create_multimodal_processor()
prompt = "<|user|>\\n<|image_1|>\\nDescribe the image.<|end|>\\n<|assistant|>\\n"
for _ in range(2):  # the first run warms the kernels; the second is reported
    inputs = processor(prompt, images=og.Images.open(image))
    tokens = inputs["input_ids"].as_numpy().shape[1]
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=tokens + 65, do_sample=False)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.set_inputs(inputs)
    generator.generate_next_token()
    first = time.perf_counter() - start
    start, n = time.perf_counter(), 0
    while not generator.is_done() and n < 64:
        generator.generate_next_token(); n += 1
    decode = n / (time.perf_counter() - start)
print("TTFT", tokens, first)
print("DECODE", decode)
"""


def export(model: Path, work: Path) -> tuple[float, float, Path]:
    """(peak RSS bytes, wall seconds, export folder) of the streamed int4 cpu export in a child."""
    status, peak, output = run_child(CHILD, [str(model), str(work)], None)
    if status:
        raise SystemExit(f"export of {model} failed:\n{output[-3000:]}")
    wall = float(next(line.split()[1] for line in output.splitlines() if line.startswith("WALL")))
    return peak, wall, work / "export"


def size(folder: Path, stem: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(f"{stem}.onnx*"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--work", type=Path, help="where the checkpoints go (default: a temporary folder)")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    from toolkit.families.phi3v.cases import golden_image
    from toolkit.tiny.phi3 import make_random_phi3
    from toolkit.tiny.phi3v import make_random_phi3v

    root = Path(tempfile.mkdtemp(prefix="slmkit-vision-", dir=args.work))
    try:
        vision_params = make_random_phi3v(root / "phi3v", args.layers)
        text_params = make_random_phi3(root / "text", args.layers)
        print(f"checkpoints: phi3v {vision_params / 1e9:.2f} B, text twin {text_params / 1e9:.2f} B", flush=True)
        v_peak, v_wall, v_out = export(root / "phi3v", root / "w-phi3v")
        shutil.rmtree(root / "phi3v")
        t_peak, t_wall, _ = export(root / "text", root / "w-text")
        shutil.rmtree(root / "text")
        status, _, output = run_child(RUNTIME, [str(v_out), str(golden_image(root / "image.png"))], None)
        if status:
            raise SystemExit(f"the runtime measurements failed:\n{output[-3000:]}")
        lines = {
            tuple(line.split()[:2]) if line.startswith("ENCODE") else line.split()[0]: line.split()
            for line in output.splitlines()
            if line.split() and line.split()[0] in ("ENCODE", "TTFT", "DECODE")
        }
        print()
        print("| export (int4 cpu, streamed) | parameters | peak RSS | wall |")
        print("|---|---|---|---|")
        print(
            f"| Phi-3.5-vision-shaped, {args.layers} layers | {vision_params / 1e9:.2f} B "
            f"| {v_peak / 1e9:.2f} GB | {v_wall:.0f} s |"
        )
        print(
            f"| text-only twin (Phi-3.5-mini-shaped) | {text_params / 1e9:.2f} B | {t_peak / 1e9:.2f} GB "
            f"| {t_wall:.0f} s |"
        )
        print()
        print("| component | slmkit | published cpu int4 | ratio |")
        print("|---|---|---|---|")
        for name, stem in (("vision", "vision"), ("embedding", "embedding"), ("text", "model")):
            ours = size(v_out, stem)
            print(f"| {name} | {ours / 1e6:.0f} MB | {PUBLISHED[name] / 1e6:.0f} MB | {ours / PUBLISHED[name]:.2f}x |")
        print()
        print("| runtime (2 cores) | value |")
        print("|---|---|")
        for key in (("ENCODE", "1"), ("ENCODE", "16")):
            print(f"| vision encode, {key[1]} crop(s) | {float(lines[key][2]):.2f} s |")
        ttft = lines["TTFT"]
        print(f"| time to first token, one image ({ttft[1]} prompt tokens) | {float(ttft[2]):.1f} s |")
        print(f"| decode after it | {float(lines['DECODE'][1]):.2f} tok/s |")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
