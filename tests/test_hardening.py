"""Faults and hostile input: killed builds, full disks, concurrent builds, archives that try to
escape, and the CI workflow and archives users publish bundles with."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from toolkit.build import build, plan_build
from toolkit.bundle import readme as bundle_module
from toolkit.bundle.pack import pack, unpack
from toolkit.cli import main
from toolkit.errors import InputModelError, OutputError
from toolkit.families import open_checkpoint


def _slmkit(*args: str) -> list[str]:
    return [sys.executable, "-c", "from toolkit.cli import main; main()", *args]


def test_sigkill_mid_build_leaves_no_bundle_and_the_next_build_succeeds(tmp_path, tiny35):
    out = tmp_path / "b"
    proc = subprocess.Popen(
        _slmkit("build", "-m", str(tiny35), "-t", "cpu", "-o", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:  # kill it while the builder is writing the model
        if line.startswith("[2/5]"):
            time.sleep(0.5)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".b.slmkit-")  # the dead build's staging folder
    result = CliRunner().invoke(main, ["build", "-m", str(tiny35), "-t", "cpu", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # and the next build removed it


def test_full_disk_gives_a_clear_error_and_no_bundle(tmp_path, tiny35, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundle_module, "write_readme", full)
    src = open_checkpoint(str(tiny35))
    out = tmp_path / "b"
    with pytest.raises(OutputError) as e:
        build(src, plan_build(src, None, "cpu", ()), out, log=lambda _: None)
    assert str(e.value).startswith(f"The disk of '{tmp_path}' is full (")
    assert f"nothing was written at '{out}'. Free some space or choose an -o on another disk" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_builds_into_different_outputs(tmp_path, tiny35):
    procs = [
        subprocess.Popen(
            _slmkit("build", "-m", str(tiny35), "-t", "cpu", "-o", str(tmp_path / name)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("a", "b")
    ]
    outputs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    a, b = ((tmp_path / n / "manifest.json").read_text() for n in ("a", "b"))
    assert a == b  # same inputs, same bundle, although they ran side by side
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def test_pack_is_reproducible_and_round_trips(tmp_path, bundles):
    first = pack(bundles("cpu"), tmp_path / "one.tar.gz")
    os.utime(bundles("cpu") / "README.md", (1, 1))  # mtimes must not matter
    second = pack(bundles("cpu"), tmp_path / "two.tar.gz")
    assert first.read_bytes() == second.read_bytes()
    restored = unpack(first, tmp_path / "restored")
    assert restored == tmp_path / "restored" / "cpu"
    result = CliRunner().invoke(main, ["verify", str(restored)])
    assert result.exit_code == 0, result.output


def _archive(path: Path, entries: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "entry,reason",
    [
        (_file("b/../../x"), "it points outside the destination"),
        (_file("/etc/x"), "it points outside the destination"),
        (_link("b/model", "/etc"), "it is a symbolic link; bundles hold plain files only"),
        (_link("b/hard", "b/manifest.json", tarfile.LNKTYPE), "it is a hard link; bundles hold plain files only"),
    ],
)
def test_unpack_refuses_escaping_entries_before_writing(tmp_path, entry, reason):
    archive = _archive(tmp_path / "evil.tar.gz", [_file("b/manifest.json"), entry])
    with pytest.raises(InputModelError) as e:
        unpack(archive, tmp_path / "dest")
    assert str(e.value) == f"{archive}: refusing entry '{entry.name}': {reason}."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]
    result = CliRunner().invoke(main, ["unpack", str(archive), "-o", str(tmp_path / "dest")])
    assert result.exit_code == 1 and result.output == f"Error: {archive}: refusing entry '{entry.name}': {reason}.\n"


def test_ci_init_writes_a_workflow_naming_every_target(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    install = "pip install 'slmkit @ git+https://github.com/me/slmkit@abc123'"
    result = CliRunner().invoke(
        main, ["ci", "init", "--model", "microsoft/Phi-3.5-mini-instruct", "--install", install]
    )
    assert result.exit_code == 0, result.output
    workflow = yaml.safe_load((tmp_path / ".github/workflows/slmkit.yml").read_text())
    job = workflow["jobs"]["bundle"]
    targets = ["cpu", "android", "ios", "windows-dml", "linux-cuda"]
    assert job["strategy"]["matrix"]["target"] == targets and job["runs-on"] == "ubuntu-latest"
    steps = {s.get("name", s.get("uses")): s for s in job["steps"]}
    assert 'slmkit build --model "$MODEL" --target ${{ matrix.target }}' in steps["Build and verify"]["run"]
    assert steps["actions/upload-artifact@v4"]["with"]["path"] == "bundle-${{ matrix.target }}.tar.gz"
    assert steps["Install slmkit"]["run"] == install  # quotes and all, as YAML reads it
    # The smoke tests: phone bundles on the hosted ARM64 runner (the phone's int4 kernels), GPU bundles'
    # graphs on the CPU provider; with the runtime version of the manifest, and no slmkit.
    smoke = workflow["jobs"]["smoke"]
    assert smoke["needs"] == "bundle" and smoke["runs-on"] == "${{ matrix.runs_on }}"
    assert {i["target"]: (i["runs_on"], i["smoke_provider"]) for i in smoke["strategy"]["matrix"]["include"]} == {
        "cpu": ("ubuntu-latest", "bundle"),
        "android": ("ubuntu-24.04-arm", "bundle"),
        "ios": ("ubuntu-24.04-arm", "bundle"),
        "windows-dml": ("ubuntu-latest", "cpu"),
        "linux-cuda": ("ubuntu-latest", "cpu"),
    }
    steps = {s.get("name", s.get("uses")): s for s in smoke["steps"]}
    unpack = steps["Unpack, and install the runtime version the manifest names"]["run"]
    assert "tar -xzf bundle-${{ matrix.target }}.tar.gz" in unpack and "m['dependencies'].get(sys.argv[2])" in unpack
    assert {i["target"]: i["runtime"] for i in smoke["strategy"]["matrix"]["include"]} == dict.fromkeys(
        targets, "onnxruntime-genai"
    )
    assert "slmkit" not in unpack.replace("bundle-", "")
    assert steps["Smoke test (the bundle's own, runtime package only)"]["run"] == (
        "python bundle-${{ matrix.target }}/tests/smoke_test.py --provider ${{ matrix.smoke_provider }}"
    )
    assert workflow["env"]["MODEL"] == "microsoft/Phi-3.5-mini-instruct"
    again = CliRunner().invoke(main, ["ci", "init", "--model", "x/y"])
    assert again.exit_code == 1 and "already exists. Pass --force to overwrite it." in again.output
    bad = CliRunner().invoke(main, ["ci", "init", "--model", "x/y", "--targets", "cpu,andriod", "--force"])
    assert bad.exit_code == 1 and "Did you mean 'android'?" in bad.output


class _Dist:
    version = "0.1.0"

    def __init__(self, direct_url):
        self.direct_url = direct_url

    def read_text(self, name):
        return None if self.direct_url is None else json.dumps(self.direct_url)


@pytest.mark.parametrize(
    "direct_url, expected",
    [
        (
            {"url": "https://github.com/me/slmkit", "vcs_info": {"vcs": "git", "commit_id": "abc123"}},
            "pip install 'slmkit @ git+https://github.com/me/slmkit@abc123'",
        ),
        (None, "pip install 'slmkit==0.1.0'"),
    ],
)
def test_ci_init_installs_the_slmkit_that_runs_it(tmp_path, monkeypatch, direct_url, expected):
    from toolkit.bundle import ci

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ci.metadata, "distribution", lambda name: _Dist(direct_url))
    result = CliRunner().invoke(main, ["ci", "init", "--model", "x/y"])
    assert result.exit_code == 0, result.output
    workflow = yaml.safe_load((tmp_path / ".github/workflows/slmkit.yml").read_text())
    assert {s.get("name"): s for s in workflow["jobs"]["bundle"]["steps"]}["Install slmkit"]["run"] == expected


def test_ci_init_from_a_local_install_asks_for_the_install_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # this test run's slmkit: installed from its folder (pip install -e .)
    result = CliRunner().invoke(main, ["ci", "init", "--model", "x/y"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: slmkit here was installed from file://")
    assert (
        "which a CI runner cannot reach (slmkit is not on the public package index). Pass the command" in result.output
    )
    assert not (tmp_path / ".github").exists()
