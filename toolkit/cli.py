"""The slmkit command line: parse, call one function, turn SlmkitError into a clean error."""

from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path

import click

from .errors import SlmkitError
from .verify.emulate import DEFAULT_CPUS


def _friendly(fn):
    """SlmkitError -> 'Error: <message>' and exit 1; Ctrl-C -> exit 130 with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SlmkitError as e:
            raise click.ClickException(str(e)) from None
        except ImportError as e:  # a dependency removed or broken after install
            raise click.ClickException(_missing_package(e)) from None
        except KeyboardInterrupt:
            click.echo("\nInterrupted: nothing was written at the output path.", err=True)
            sys.exit(130)

    return wrapper


QUIET = click.option("--quiet", "-q", is_flag=True, help="No progress lines: only each stage's line and the result.")


def _partial(src) -> str:
    """', partial rotary 0.75' for a checkpoint whose heads turn only in part (Phi-4-mini)."""
    return f", partial rotary {src.partial_rotary_factor:g}" if src.partial_rotary_factor != 1.0 else ""


def _missing_package(e: ImportError) -> str:
    from .plan.doctor import REQUIRED

    top = (e.name or "").split(".")[0]
    for module, dist, minimum, purpose in REQUIRED:
        if module == top:
            return (
                f"The package {dist} ({purpose}) cannot be imported: {e}. Install it: "
                f"pip install '{dist}>={minimum}' (`slmkit doctor` checks every dependency)."
            )
    return f"A package slmkit needs cannot be imported: {e}. Reinstall slmkit with its dependencies."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slmkit", prog_name="slmkit")
def main() -> None:
    """Build verified on-device bundles of small language models (Phi-3, Phi-3.5, SmolLM2)."""


@main.command()
@click.option("--model", "-m", required=True, help="Local Hugging Face folder, or a Hub id (org/name).")
@click.option("--target", "-t", help="cpu, android, ios, windows-dml, linux-cuda or gguf (see `slmkit ls`).")
@click.option("--recipe", "-r", help="Recipe name (phi-3.5-mini/android) or path of a .toml file.")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Bundle folder [default: <model>-<target>].")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Override a plan value, e.g. --set quantize.block_size=64 (repeatable).",
)
@click.option("--dry-run", is_flag=True, help="Print the resolved plan and build nothing.")
@click.option("--force", is_flag=True, help="Replace an existing bundle at the output path.")
@click.option(
    "--allow-pickle", is_flag=True, help="Accept pytorch_model.bin weights (unpickled with weights_only=True)."
)
@click.option(
    "--skip-memory-check", is_flag=True, help="Build even if the builder's estimated peak memory exceeds RAM."
)
@click.option(
    "--quality-budget",
    metavar="PCT",
    help="Smallest quantization within this perplexity increase over float32, e.g. 5%.",
)
@click.option(
    "--adapter",
    "adapter_args",
    multiple=True,
    metavar="[NAME=]FOLDER",
    help="A PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors), merged into the weights; "
    "with --set adapters.mode=runtime, repeatable: each one a file the runner switches to by NAME.",
)
@QUIET
@_friendly
def build(
    model,
    target,
    recipe,
    output,
    overrides,
    dry_run,
    force,
    allow_pickle,
    skip_memory_check,
    quality_budget,
    adapter_args,
    quiet,
):
    """Build, verify and publish one bundle."""
    from .build import build as run_build
    from .build import plan_build
    from .families import open_checkpoint
    from .plan.config import to_toml
    from .progress import configure
    from .verify.budget import parse_budget

    configure(quiet=quiet)

    budget = parse_budget(quality_budget) if quality_budget else None
    src = open_checkpoint(model, allow_pickle=allow_pickle)
    adapters = []
    for arg in adapter_args:
        from .source.adapter import check_against, read_adapter

        name, _, folder = arg.partition("=") if "=" in arg and not Path(arg).exists() else ("", "", arg)
        adapters.append(read_adapter(Path(folder), name or Path(folder).name))
        check_against(adapters[-1], src)
    plan = plan_build(src, recipe, target, tuple(overrides))
    out = output or Path(f"{src.path.name}-{plan.target}")
    if dry_run:
        click.echo(
            f"# source: {src.origin} ({src.architecture}, rope {src.rope_scaling}{_partial(src)}, "
            f"{src.num_params / 1e6:.1f} M parameters)\n# output: {out}"
        )
        click.echo(to_toml(plan.to_dict()), nl=False)
        return
    click.echo(f"Building {plan.recipe} from {src.origin} into {out}")
    manifest = run_build(
        src,
        plan,
        out,
        force=force,
        skip_memory_check=skip_memory_check,
        quality_budget=budget,
        adapters=tuple(adapters),
        log=click.echo,
    )
    _print_result(out, manifest)


def _print_result(out: Path, manifest: dict) -> None:
    host = manifest["verification"]["host"]
    size = sum(f["size"] for f in manifest["files"].values())
    click.echo(f"Bundle written: {out} ({size / 1e6:.1f} MB, {len(manifest['files'])} files)")
    how = (
        f"{host['provider']} provider"
        if "backends" not in host
        else f"headless Chromium: {', '.join(host['backends'])}"
    )
    click.echo(
        f"Verified on this machine ({how}): {host['passed']} checks passed, "
        f"top-1 agreement with the reference {host['top1_agreement']:.3f}"
    )
    for backend, why in (host.get("skipped") or {}).items():
        click.echo(f"Skipped on this machine: {backend}: {why}")
    for item in manifest["verification"]["pending_on_device"]:
        click.echo(f"Needs the device: {item}")


@main.command(name="ls")
@_friendly
def list_catalog():
    """List targets and recipes."""
    from .plan.catalog import load_recipe, load_target, recipe_names, target_names

    click.echo("Targets:")
    for name in target_names():
        click.echo(f"  {name:<13} {load_target(name).description}")
    click.echo("Recipes:")
    for name in recipe_names():
        click.echo(f"  {name:<28} {load_recipe(name).description}")


@main.command()
@click.argument("name")
@_friendly
def show(name):
    """Print a recipe (with its resolved plan) or a target."""
    from .plan.catalog import load_recipe, load_target
    from .plan.config import read_toml, resolve, to_toml

    is_recipe = "recipe" in read_toml(Path(name)) if name.endswith(".toml") else "/" in name
    if not is_recipe:
        target = load_target(name)
        click.echo(f"# {target.path}")
        click.echo(target.path.read_text(encoding="utf-8"), nl=False)
        return
    recipe = load_recipe(name)
    click.echo(f"# {recipe.path}")
    click.echo(recipe.path.read_text(encoding="utf-8").rstrip())
    click.echo("\n# resolved plan (target defaults + this recipe):")
    click.echo(to_toml(resolve(recipe, load_target(recipe.target)).to_dict()), nl=False)


@main.command()
@click.argument("recipe")
@click.argument("dest", type=click.Path(path_type=Path))
@_friendly
def cp(recipe, dest):
    """Copy a recipe to DEST to start a custom one (then: build --recipe DEST)."""
    from .errors import OutputError
    from .plan.catalog import load_recipe

    src = load_recipe(recipe)
    if dest.exists():
        raise OutputError(f"'{dest}' already exists; choose another path.")
    if dest.suffix != ".toml":
        raise OutputError(f"'{dest}' must end in .toml so that --recipe reads it as a file.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src.path, dest)
    click.echo(f"Copied {src.name} to {dest}. Edit it, then: slmkit build --model PATH --recipe {dest}")


@main.command()
@click.option("--model", "-m", help="Also check this checkpoint: readable, supported, room to build it.")
@click.option("--target", "-t", default="cpu", show_default=True, help="Target used for the size estimate.")
@_friendly
def doctor(model, target):
    """Check the toolchain (and, with --model, the checkpoint, disk and memory)."""
    from .formats import format_of_target
    from .plan import doctor as doc

    checks = doc.package_checks() + format_of_target(target).toolchain()
    if model:
        from .build import plan_build
        from .families import open_checkpoint

        src = open_checkpoint(model)
        plan = plan_build(src, None, target, ())
        checks.append(
            doc.Check(
                "model",
                True,
                f"{src.architecture}, rope {src.rope_scaling}{_partial(src)}, "
                f"{src.num_params / 1e9:.2f} B parameters -> recipe {plan.recipe}",
            )
        )
        need = doc.estimate_bundle_bytes(
            src.num_params, plan.export.precision, src.config["vocab_size"], src.config["hidden_size"]
        )
        memory = doc.memory_check(
            src.num_params,
            src.config,
            plan.export.engine,
            plan.quantize.method,
            plan.export.precision,
            plan.npu.part_mb,
        )
        checks += [doc.disk_check(Path.cwd(), 2 * need), memory]
    for c in checks:
        click.echo(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<18} {c.detail}")
    doc.require(checks)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--provider",
    type=click.Choice(["bundle", "cpu", "cuda", "dml", "wasm", "webgpu"]),
    help="Provider to run with [default: the bundle's own if it is the CPU or a browser's, else the CPU]. "
    "On the GPU machine, a GPU bundle's own (cuda) checks its kernels and records it in manifest.json. "
    "Web bundles: wasm or webgpu alone in headless Chromium, cpu natively.",
)
@click.option(
    "--emulate",
    type=click.Choice(["arm64"]),
    help="Run the smoke test on emulated phone CPUs (qemu user mode) instead of this machine's.",
)
@click.option(
    "--cpu",
    "cpus",
    default=",".join(DEFAULT_CPUS),
    show_default=True,
    help="With --emulate: the CPUs, comma-separated (qemu -cpu names).",
)
@_friendly
def verify(bundle, provider, emulate, cpus):
    """Re-check a bundle: settings read back from the graph, file hashes, tokens vs the reference."""
    from .verify.smoke import verify_bundle

    if emulate:
        from .verify.emulate import verify_emulated

        runs, output = verify_emulated(bundle, [c.strip() for c in cpus.split(",") if c.strip()])
        click.echo(output)
        for r in runs:
            click.echo(
                f"Emulated {r['cpu']}: {r['passed']} checks passed, top-1 agreement {r['top1_agreement']:.3f}"
                f" ({r['emulated']}; not a device speed)"
            )
        click.echo(f"Bundle {bundle} verified on emulated ARM64 CPUs; results saved in its manifest.json.")
        return
    summary, output = verify_bundle(bundle, provider)
    click.echo(output.rstrip())
    for item in summary.get("checked_on_device", []):
        click.echo(f"Checked on the device: {item}")
    for item in summary["pending_on_device"]:
        click.echo(f"Needs the device: {item}")
    click.echo(f"Bundle {bundle} verified.")


@main.command(name="eval")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option(
    "--reference",
    "-r",
    required=True,
    type=click.Path(path_type=Path),
    help="The Hugging Face folder the bundle was built from (run in float32 as the reference).",
)
@click.option(
    "--text", type=click.Path(path_type=Path), help="UTF-8 text file [default: the text shipped with slmkit]."
)
@click.option("--window", default=512, show_default=True, help="Tokens per scored window.")
@click.option("--max-tokens", default=8192, show_default=True, help="Score at most this many tokens of the text.")
@QUIET
@_friendly
def evaluate(bundle, reference, text, window, max_tokens, quiet):
    """Perplexity, top-1 agreement and KL of BUNDLE vs its float32 reference; saved in the manifest."""
    from .progress import configure
    from .verify.quality import evaluate_bundle

    configure(quiet=quiet)
    click.echo(evaluate_bundle(bundle, reference, text, window, max_tokens))


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompt-tokens", default=128, show_default=True)
@click.option("--new-tokens", default=128, show_default=True)
@click.option("--runs", default=5, show_default=True, help="Timed runs (after one warm-up run).")
@click.option("--provider", type=click.Choice(["bundle", "cpu", "cuda", "dml"]), default="bundle", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--emulate",
    type=click.Choice(["arm64"]),
    help="Memory only, on an emulated ARM64 CPU (cortex-a76): emulated time is no device time.",
)
@_friendly
def bench(bundle, prompt_tokens, new_tokens, runs, provider, as_json, emulate):
    """Time to first token, prefill/decode tok/s, load time, peak RSS while loading and generating,
    and decode vs the memory roofline."""
    from .verify.bench import run, run_emulated, to_json

    if emulate:
        result = run_emulated(bundle, prompt_tokens, new_tokens)
    else:
        result = run(bundle, prompt_tokens, new_tokens, runs, provider)
    click.echo(to_json(result) if as_json else result.table())


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Archive path [default: BUNDLE.tar.gz].")
@_friendly
def pack(bundle, output):
    """Archive BUNDLE reproducibly (same bundle, same bytes) as a .tar.gz."""
    from .bundle.pack import pack as run_pack

    archive = run_pack(bundle, output or bundle.with_name(bundle.name + ".tar.gz"))
    click.echo(f"Packed {bundle} into {archive} ({archive.stat().st_size / 1e6:.1f} MB)")


@main.command()
@click.argument("archive", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path), required=True, help="Folder to create.")
@_friendly
def unpack(archive, output):
    """Extract a bundle archive (refuses paths outside the folder, links and special files)."""
    from .bundle.pack import unpack as run_unpack

    bundle = run_unpack(archive, output)
    click.echo(f"Unpacked {archive} into {bundle}. Check it: slmkit verify {bundle}")


@main.group()
def ci() -> None:
    """Continuous-integration helpers."""


@ci.command(name="init")
@click.option("--model", "-m", required=True, help="Hub id (or path in the repository) the workflow builds.")
@click.option(
    "--targets",
    default="cpu,android,ios,windows-dml,linux-cuda",
    show_default=True,
    help="Comma-separated targets, one matrix job each.",
)
@click.option(
    "--install",
    help="The command that installs slmkit on the runner [default: the git commit or "
    "index version this slmkit came from].",
)
@click.option("--force", is_flag=True, help="Overwrite an existing workflow.")
@_friendly
def ci_init(model, targets, install, force):
    """Write .github/workflows/slmkit.yml: build, smoke-test and upload one bundle per target."""
    from .bundle.ci import write_workflow

    path = write_workflow(Path.cwd(), model, [t.strip() for t in targets.split(",") if t.strip()], install, force)
    click.echo(f"Wrote {path}. Commit it; each run uploads bundle-<target>.tar.gz artifacts.")


@main.command()
@click.option("--output", "-o", type=click.Path(path_type=Path), default=Path("slmkit-demo"), show_default=True)
@click.option("--force", is_flag=True, help="Replace an earlier demo folder.")
@_friendly
def demo(output, force):
    """Make a tiny Phi-3.5-shaped model, build a cpu bundle from it, and chat with it."""
    from .demo import run_demo

    run_demo(output, force=force, log=click.echo)
