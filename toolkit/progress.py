"""Progress of long stages, on standard error. On a terminal: one line that rewrites itself (done
of total, rate-based ETA). In a log (no terminal): nothing for work done within 10 s, then a
plain line at every 10% and at least every 30 s. A closing line follows whatever was shown.
`configure(quiet=True)` (the CLI's --quiet) silences it.

    with bar("export", total_bytes, "bytes of weights") as b:       # shown in MB or GB
        for tensor in ...: b.advance(tensor.nbytes)
    with waiting("verify: loading the PyTorch reference"):   # work with no count: elapsed time
        load()
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO

ETA_FROM = 0.01  # the fraction done before an ETA is shown
INDENT = "      "
LOG_AFTER_S = 10.0  # in a log, the first line only after this long: short work prints nothing
LOG_EVERY_S = 30.0  # in a log, then at least one line this often while something advances
TTY_EVERY_S = 0.25  # on a terminal, redraw at most this often (the first time after this long)

_settings: dict = {"quiet": False, "stream": None}


def configure(quiet: bool = False, stream: TextIO | None = None) -> None:
    """quiet: no progress at all. stream: where it goes (default: sys.stderr at the time of use)."""
    _settings.update(quiet=quiet, stream=stream)


def clock(seconds: float) -> str:
    """0:42, 12:05, 1:02:03."""
    s = round(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def count(n: float) -> str:
    return str(int(n))


def _units(unit: str, total: float, fmt: Callable[[float], str]) -> tuple[Callable[[float], str], str]:
    """A unit starting with "bytes" is shown in MB or GB, whichever suits the total (which may
    grow while a download learns its files' sizes)."""
    if not unit.startswith("bytes"):
        return fmt, unit
    if total >= 1e9:
        return (lambda n: f"{n / 1e9:.2f}"), "GB" + unit[5:]
    return (lambda n: f"{n / 1e6:.1f}"), "MB" + unit[5:]


class Bar:
    """Done of total, with ETA. Thread-safe (downloads advance it from several threads)."""

    def __init__(self, label: str, total: float, unit: str, fmt: Callable[[float], str], stream: TextIO):
        self.label, self.total, self.unit, self.fmt, self.stream = label, total, unit, fmt, stream
        self.done = 0.0
        self.start = self.last = time.monotonic()
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.decile = 0
        self.lock = threading.Lock()
        self.shown = False

    def text(self, now: float) -> str:
        elapsed = now - self.start
        frac = min(self.done / self.total, 1.0) if self.total else 0.0
        fmt, unit = _units(self.unit, self.total, self.fmt)
        parts = [f"{fmt(self.done)}/{fmt(self.total)} {unit}", f"{frac:.0%}", f"{clock(elapsed)} elapsed"]
        if ETA_FROM <= frac < 1 and elapsed >= 1:  # below 1% a rate says little (a calibration's setup)
            parts.append(f"ETA {clock(elapsed * (1 - frac) / frac)}")
        return f"{INDENT}{self.label}: " + ", ".join(parts)

    def advance(self, n: float = 1) -> None:
        with self.lock:
            self.done += n
            now = time.monotonic()
            if self.tty:
                if now - self.last >= TTY_EVERY_S:
                    self._draw(now)
                return
            decile = int(10 * self.done / self.total) if self.total else 0
            step = decile > self.decile and self.done < self.total  # 100%: the closing line
            self.decile = max(decile, self.decile)
            if now - self.start >= LOG_AFTER_S and (step or now - self.last >= LOG_EVERY_S):
                self.last = now
                self.shown = True
                self.stream.write(self.text(now) + "\n")
                self.stream.flush()

    def set_total(self, total: float) -> None:
        with self.lock:
            self.total = total

    def _draw(self, now: float) -> None:
        self.last = now
        self.stream.write("\r\x1b[K" + self.text(now))
        self.stream.flush()
        self.shown = True

    def finish(self, ok: bool) -> None:
        if not self.shown:
            return
        if self.tty:
            self.stream.write("\r\x1b[K")
        if ok:
            took = clock(time.monotonic() - self.start)
            fmt, unit = _units(self.unit, self.done, self.fmt)
            self.stream.write(f"{INDENT}{self.label}: {fmt(self.done)} {unit} in {took}\n")
        self.stream.flush()


class _Silent:
    def advance(self, n: float = 1) -> None:
        pass

    def set_total(self, total: float) -> None:
        pass


@contextlib.contextmanager
def bar(label: str, total: float, unit: str, fmt: Callable[[float], str] = count) -> Iterator[Bar | _Silent]:
    """A progress bar for `total` units of work; a closing line when the block ends normally."""
    if _settings["quiet"]:
        yield _Silent()
        return
    b = Bar(label, total, unit, fmt, _settings["stream"] or sys.stderr)
    ok = False
    try:
        yield b
        ok = True
    finally:
        b.finish(ok)


@contextlib.contextmanager
def waiting(label: str) -> Iterator[None]:
    """Work whose progress cannot be counted (a child process, a library call): elapsed time, on a
    terminal every second, in a log every 30 s; a closing line with the time taken if any showed."""
    if _settings["quiet"]:
        yield
        return
    stream = _settings["stream"] or sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    start = time.monotonic()
    stop = threading.Event()
    shown = []

    def beat() -> None:
        while not stop.wait(1.0 if tty else LOG_EVERY_S):
            shown.append(True)
            elapsed = clock(time.monotonic() - start)
            stream.write(
                f"\r\x1b[K{INDENT}{label}: {elapsed} elapsed"
                if tty
                else f"{INDENT}{label}: still running, {elapsed} elapsed\n"
            )
            stream.flush()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        thread.join()
        if shown:
            if tty:
                stream.write("\r\x1b[K")
            if ok:
                stream.write(f"{INDENT}{label}: done in {clock(time.monotonic() - start)}\n")
            stream.flush()
