"""Progress of long stages: a self-rewriting line on a terminal, plain lines in logs, none with --quiet."""

from __future__ import annotations

import io
import time

import pytest
from click.testing import CliRunner

from toolkit import progress
from toolkit.cli import main


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress.time, "monotonic", c)
    yield c
    progress.configure()


def run_bar(stream, clock, steps=100, seconds_each=1.0, total=100):
    progress.configure(stream=stream)
    with progress.bar("export", total, "tensors") as b:
        for _ in range(steps):
            clock.now += seconds_each
            b.advance()
    return stream.getvalue()


def test_a_log_gets_a_line_every_ten_percent_then_a_closing_line(clock):
    lines = run_bar(io.StringIO(), clock).splitlines()
    # Nothing before 10 s; then one line per 10% step (10% ... 90%), and the closing line.
    assert lines[0] == "      export: 10/100 tensors, 10%, 0:10 elapsed, ETA 1:30"
    assert [line.split(", ")[1] for line in lines[:-1]] == [f"{p}%" for p in range(10, 100, 10)]
    assert lines[-1] == "      export: 100 tensors in 1:40"


def test_a_slow_step_in_a_log_still_prints_every_30_seconds(clock):
    lines = run_bar(io.StringIO(), clock, steps=3, seconds_each=40.0, total=1000).splitlines()
    assert lines == [  # no ETA below 1% done: a rate from so little work says nothing
        "      export: 1/1000 tensors, 0%, 0:40 elapsed",
        "      export: 2/1000 tensors, 0%, 1:20 elapsed",
        "      export: 3/1000 tensors, 0%, 2:00 elapsed",
        "      export: 3 tensors in 2:00",
    ]


def test_short_work_prints_nothing_in_a_log(clock):
    assert run_bar(io.StringIO(), clock, seconds_each=0.05) == ""


def test_a_terminal_line_rewrites_itself(clock):
    text = run_bar(Terminal(), clock, steps=10, seconds_each=1.0, total=10)
    frames = text.split("\r\x1b[K")
    assert frames[1] == "      export: 1/10 tensors, 10%, 0:01 elapsed, ETA 0:09"
    assert "\n" not in "".join(frames[:-1])  # one line, redrawn in place
    assert frames[-1] == "      export: 10 tensors in 0:10\n"


def test_quiet_prints_nothing(clock):
    stream = io.StringIO()
    progress.configure(quiet=True, stream=stream)
    with progress.bar("export", 10, "tensors") as b:
        clock.now += 60
        b.advance(10)
    with progress.waiting("smoke test"):
        pass
    assert stream.getvalue() == ""


def test_waiting_reports_elapsed_time_until_done(monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.05)
    stream = io.StringIO()
    progress.configure(stream=stream)
    try:
        with progress.waiting("smoke test (child process)"):
            time.sleep(0.3)
    finally:
        progress.configure()
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 3 and lines[0] == "      smoke test (child process): still running, 0:00 elapsed"
    assert lines[-1] == "      smoke test (child process): done in 0:00"


def test_a_build_shows_each_long_stage_and_quiet_hides_it(tiny35, tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "LOG_AFTER_S", 0.0)  # every stage counts as long here
    result = CliRunner().invoke(main, ["build", "-m", str(tiny35), "-t", "cpu", "-o", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    for label in ("hashing: ", "export: ", "reference (4 prompts): "):
        assert any(line.startswith(f"      {label}") for line in result.output.splitlines()), label
    assert "MB of weights in " in result.output and " layer passes in " in result.output
    quiet = CliRunner().invoke(main, ["build", "-m", str(tiny35), "-t", "cpu", "-o", str(tmp_path / "b"), "--quiet"])
    assert quiet.exit_code == 0, quiet.output
    details = [line.strip() for line in quiet.output.splitlines() if line.startswith("      ")]
    assert [d.split(":")[0] for d in details] == ["calibration", "mixed precision", "mixed precision"]  # results
    assert [line[:5] for line in quiet.output.splitlines() if not line.startswith(" ")] == [
        "Build",
        "[1/5]",
        "[2/5]",
        "[3/5]",
        "[4/5]",
        "[5/5]",
        "Bundl",
        "Verif",
    ]
