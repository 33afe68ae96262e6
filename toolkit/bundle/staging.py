"""build(): the whole job, top to bottom. Each stage is a plain function of its own plan section."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputError, StageError


@dataclass(frozen=True)
class Staging:
    root: Path
    work: Path
    bundle: Path


def check_output(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not force:
        raise OutputError(f"Output folder '{out}' already exists. Pass --force to replace it, or choose another -o.")
    is_bundle = out.is_dir() and (out / "manifest.json").is_file()
    if not is_bundle and not (out.is_dir() and not any(out.iterdir())):
        raise OutputError(
            f"Refusing to replace '{out}' with --force: it is not an slmkit bundle (no manifest.json). "
            "Remove it yourself or choose another -o."
        )


STAGING_MARK = ".slmkit-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(out: Path) -> None:
    """Remove staging folders of this output left by builds that were killed (SIGKILL, power
    loss): their process is gone. Folders kept after a failed stage (marked 'kept') and those of
    builds still running stay."""
    for folder in out.parent.glob(f".{out.name}{STAGING_MARK}*"):
        try:
            pid = int((folder / "pid").read_text())
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        if not (folder / "kept").exists() and not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def readable(folder: Path) -> None:
    """Every user of the device can read what it receives: folders 0755, files 0644, scripts 0755,
    whatever the tools that wrote them chose (onnx writes external data files 0600)."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or path.suffix == ".py" else 0o644)


@contextlib.contextmanager
def staging(out: Path, force: bool) -> Iterator[Staging]:
    """Build beside the output and move it into place by one rename when everything passed.
    A StageError keeps the staging folder for inspection; any other exit (Ctrl-C included)
    removes it. The output path never holds a half-written bundle."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    root = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING_MARK}", dir=out.parent))
    (root / "pid").write_text(str(os.getpid()))
    stage = Staging(root, root / "work", root / "bundle")
    stage.work.mkdir()
    stage.bundle.mkdir()
    try:
        yield stage
    except StageError:
        (root / "kept").touch()
        raise
    except BaseException as e:
        shutil.rmtree(root, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            free = shutil.disk_usage(out.parent).free / 1e9
            raise OutputError(
                f"The disk of '{out.parent}' is full ({free:.1f} GB free) and the build stopped: "
                f"nothing was written at '{out}'. Free some space or choose an -o on another disk "
                "(`slmkit doctor --model ...` estimates what a build needs)."
            ) from None
        raise
    readable(stage.bundle)
    try:
        if out.exists():
            check_output(out, force)  # the folder may have appeared or changed while we built
            out.rename(root / "replaced")
        stage.bundle.rename(out)
    finally:
        shutil.rmtree(root, ignore_errors=True)
