"""`slmkit pack`: a bundle as a reproducible .tar.gz (same bundle, same bytes), and `slmkit unpack`,
which refuses any entry that could write outside the destination."""

from __future__ import annotations

import gzip
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from ..errors import InputModelError, OutputError, VerificationError
from .layout import require_bundle

# Fixed metadata: the archive depends on the bundle's bytes only.
MTIME = 946684800  # 2000-01-01T00:00:00Z
CHUNK = 1 << 20


def pack(bundle: Path, archive: Path) -> Path:
    require_bundle(bundle)
    if archive.exists():
        raise OutputError(f"'{archive}' already exists; remove it or choose another -o.")
    root = PurePosixPath(bundle.resolve().name)
    entries = list(bundle.rglob("*"))
    links = [p for p in entries if p.is_symlink()]
    if links:
        raise VerificationError(f"'{bundle}' contains symbolic links ({links[0]}); a bundle holds plain files only.")
    files = sorted(p for p in entries if p.is_file() and "__pycache__" not in p.parts)
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkstemp(prefix=f".{archive.name}-", dir=archive.parent)[1])
    try:
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            dirs = sorted(
                {
                    root / PurePosixPath(*p.relative_to(bundle).parts[:i])
                    for p in files
                    for i in range(len(p.relative_to(bundle).parts))
                }
            )
            for d in dirs:
                tar.addfile(_info(str(d), tarfile.DIRTYPE, 0o755, 0))
            for path in files:
                rel = root / PurePosixPath(*path.relative_to(bundle).parts)
                mode = 0o755 if path.suffix == ".py" else 0o644
                with open(path, "rb") as f:
                    tar.addfile(_info(str(rel), tarfile.REGTYPE, mode, path.stat().st_size), f)
        tmp.rename(archive)
    finally:
        tmp.unlink(missing_ok=True)
    return archive


def _info(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _check_member(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or member.name.startswith(("/", "\\")) or "\\" in member.name:
        raise InputModelError(f"{archive}: refusing entry '{member.name}': it points outside the destination.")
    if not (member.isfile() or member.isdir()):
        kind = "a symbolic link" if member.issym() else "a hard link" if member.islnk() else "a special file"
        raise InputModelError(
            f"{archive}: refusing entry '{member.name}': it is {kind}; bundles hold plain files only."
        )
    return name


def unpack(archive: Path, dest: Path) -> Path:
    """Extract into dest (which must not exist); every entry is checked before anything is written.
    Returns the bundle folder (the archive's single top-level folder)."""
    if dest.exists():
        raise OutputError(f"'{dest}' already exists; choose another -o.")
    try:
        tar = tarfile.open(archive, mode="r:*")  # noqa: SIM115 (entered below, once opening it succeeded)
    except OSError as e:
        raise InputModelError(f"Cannot open {archive} ({e.strerror or e}).") from None
    except tarfile.TarError:
        raise InputModelError(
            f"{archive} is not a .tar.gz archive (nor any tar format). Pass a file written by `slmkit pack`."
        ) from None
    with tar:
        members = tar.getmembers()
        names = [_check_member(m, archive) for m in members]
        tops = {n.parts[0] for n in names if n.parts}
        if len(tops) != 1:
            raise InputModelError(f"{archive}: expected one top-level bundle folder, found {sorted(tops) or 'none'}.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            for member, name in zip(members, names, strict=True):
                target = tmp.joinpath(*name.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest / tops.pop()
