"""Hub ids through a real connection: `slmkit build` in a child process with HF_ENDPOINT pointing
at a stand-in Hub on 127.0.0.1 (tests/hub_server.py), a closed port, or a name that does not
resolve. Never the real Hub. Each failure is one `Error:` line with the fix, exit 1, nothing at -o."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import COMMIT, hub

REPO = "org/tiny-phi"
CLI = "from toolkit.cli import main; main()"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny35) -> Path:
    """The tiny checkpoint as a Hub repository holds it: with a pickle and the checkpoint's own
    Python beside the weights, neither of which a build may fetch."""
    folder = tmp_path_factory.mktemp("repo") / "tiny-phi"
    shutil.copytree(tiny35, folder)
    (folder / "pytorch_model.bin").write_bytes(b"not to be fetched")
    (folder / "modeling_phi3.py").write_text("raise SystemExit('never run')\n")
    return folder


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once it is closed


def slmkit(tmp_path: Path, endpoint: str, *args: str, cache: Path | None = None, **env: str):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    environ.update(
        HF_ENDPOINT=endpoint,
        HF_HUB_CACHE=str(cache or tmp_path / "cache"),
        HF_HUB_DOWNLOAD_TIMEOUT="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-c", CLI, *args], capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=300
    )


def build(tmp_path: Path, endpoint: str, **kw):
    return slmkit(tmp_path, endpoint, "build", "-m", REPO, "-t", "cpu", "-o", str(tmp_path / "b"), **kw)


def refused(proc, tmp_path: Path) -> str:
    """The one error line, after checking the exit code and that nothing was written at -o."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: Could not download '{REPO}' from the Hugging Face Hub"), (
        lines
    )
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.slmkit-*"))
    return lines[0]


def test_download_fetches_only_build_files_records_the_commit_and_builds_offline_from_the_cache(served, tmp_path):
    with hub(served, REPO) as server:
        proc = build(tmp_path, server.url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fetched = {p.rsplit("/", 1)[1] for p in server.requests if "/resolve/" in p}
    assert "config.json" in fetched and "model.safetensors" in fetched and "tokenizer.json" in fetched
    assert not fetched & {"pytorch_model.bin", "modeling_phi3.py"}
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert (manifest["source"]["origin"], manifest["source"]["revision"]) == (REPO, COMMIT)

    # The same id again with HF_HUB_OFFLINE=1, and with the network gone: built from the cache.
    for n, env in enumerate(({"HF_HUB_OFFLINE": "1"}, {})):
        out = tmp_path / f"again{n}"
        proc = slmkit(tmp_path, closed_port(), "build", "-m", REPO, "-t", "cpu", "-o", str(out), **env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads((out / "manifest.json").read_text())["source"]["revision"] == COMMIT


def test_offline_without_the_model_in_the_cache(tmp_path):
    line = refused(build(tmp_path, closed_port(), HF_HUB_OFFLINE="1"), tmp_path)
    assert "HF_HUB_OFFLINE=1 is set and the model is not in the cache (" in line
    assert line.endswith(
        "Unset HF_HUB_OFFLINE to download it, or pass a local folder (the checkpoint's "
        "config.json, *.safetensors and tokenizer files)."
    )


@pytest.mark.parametrize(
    "endpoint, cause",
    [
        ("closed", "Connection refused"),
        ("http://no-such-host.invalid", "Name or service not known"),
    ],
)
def test_no_network(tmp_path, endpoint, cause):
    url = closed_port() if endpoint == "closed" else endpoint
    line = refused(build(tmp_path, url), tmp_path)
    assert f": cannot reach {url} (" in line and cause in line
    assert (
        "Check your network or proxy (HTTPS_PROXY); to build a model downloaded before, set HF_HUB_OFFLINE=1;" in line
    )


@pytest.mark.parametrize(
    "mode, says",
    [
        (
            "401",
            "no such model, or it is private (HTTP 401). Check the id (for example microsoft/Phi-3.5-mini-instruct); "
            "for a private model log in (`hf auth login`, or set HF_TOKEN)",
        ),
        ("404", "no such model, or it is private (HTTP 404). Check the id"),
        (
            "gated",
            "it is a gated model (HTTP 403). Accept its license on its Hub page, then log in (`hf auth login`, "
            "or set HF_TOKEN)",
        ),
        ("500", "the Hub answered HTTP 500. Try again later"),
        (
            "hang",
            "the Hub did not answer within 1 s. Check your network or proxy (HTTPS_PROXY), raise "
            "HF_HUB_DOWNLOAD_TIMEOUT on a slow link",
        ),
        ("cut", "the download broke off (peer closed connection without sending complete message body"),
    ],
)
def test_the_hub_refuses_or_fails(served, tmp_path, mode, says):
    with hub(served, REPO, mode, hang_s=20) as server:
        line = refused(build(tmp_path, server.url), tmp_path)
    assert says in line, line


def test_a_cut_download_resumes_from_the_cache(served, tmp_path):
    with hub(served, REPO, "cut") as server:
        line = refused(build(tmp_path, server.url), tmp_path)
    assert "Run the same command again: finished files are kept in the cache (" in line
    with hub(served, REPO) as server:
        proc = build(tmp_path, server.url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fetched = {p.rsplit("/", 1)[1] for p in server.requests if "/resolve/" in p}
    assert "config.json" not in fetched  # kept from the first try


def test_download_progress_counts_the_bytes_written(served, tmp_path):
    """hub.download itself, in a child process whose standard error is a terminal: the progress
    line it draws ends with the bytes of exactly the files a build reads."""
    import fnmatch
    import pty
    import re
    import select

    from toolkit.source import hub as downloads

    code = (
        "import sys; from pathlib import Path; from toolkit import progress; "
        "progress.TTY_EVERY_S = 0.0; "  # draw at every update: the download takes well under a second
        "from toolkit.source.hub import download; download(sys.argv[1], Path(sys.argv[2]))"
    )
    leader, follower = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    with hub(served, REPO) as server:
        environ.update(HF_ENDPOINT=server.url, HF_HUB_DISABLE_TELEMETRY="1")
        proc = subprocess.run(
            [sys.executable, "-c", code, REPO, str(tmp_path / "cache")],
            stdout=subprocess.PIPE,
            stderr=follower,
            env=environ,
            timeout=120,
        )
    os.close(follower)
    drawn = b""
    while select.select([leader], [], [], 1.0)[0]:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child is gone and its terminal closed
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert proc.returncode == 0, drawn.decode(errors="replace")
    wanted = sum(
        p.stat().st_size
        for p in served.iterdir()
        if any(fnmatch.fnmatch(p.name, pattern) for pattern in downloads.HUB_PATTERNS)
    )
    last = drawn.decode().replace("\r\n", "\n").split("\r\x1b[K")[-1]
    assert re.fullmatch(rf"      download: {wanted / 1e6:.1f} MB in 0:0\d\n", last), last
