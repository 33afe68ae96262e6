"""Errors a user can act on. Each message says what is wrong, where, and how to fix it."""

from __future__ import annotations

import difflib
import signal
from collections.abc import Iterable
from pathlib import Path


class SlmkitError(Exception):
    """Base class: the CLI prints the message and exits non-zero, without a traceback."""


class ConfigError(SlmkitError):
    """A recipe, target or --set override is malformed (unknown key, wrong type, bad value)."""


class UnknownNameError(SlmkitError):
    """A recipe or target name that is not in the catalog."""


class InputModelError(SlmkitError):
    """The source checkpoint cannot be built (missing files, unsupported architecture, ...)."""


class OutputError(SlmkitError):
    """The output location cannot be written (exists, not writable, ...)."""


class ToolchainError(SlmkitError):
    """A needed package is missing or too old, or there is not enough disk."""


class VerificationError(SlmkitError):
    """A bundle failed its checks (hashes, greedy tokens vs the reference, graph settings)."""


class StageError(SlmkitError):
    """A build stage failed; the work folder is kept for inspection."""

    def __init__(self, stage: str, message: str, work_dir: Path | None = None):
        self.stage = stage
        self.work_dir = work_dir
        text = f"Stage '{stage}' failed: {message}"
        if work_dir is not None:
            text += f"\nThe work folder is kept for inspection: {work_dir} (delete it when done)."
        super().__init__(text)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def killed_by(returncode: int) -> signal.Signals | None:
    """The signal that ended a child process: -N from subprocess, or 128+N when a shell ran it."""
    number = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 128 + 65 else 0
    try:
        return signal.Signals(number) if number else None
    except ValueError:
        return None


def crash_line(what: str, returncode: int, illegal_instruction_fix: str) -> str | None:
    """One line for a child killed by a signal, naming it (and for SIGILL, the fix: the runtime was
    compiled for CPU features this machine does not run); None when it exited by itself."""
    sig = killed_by(returncode)
    if sig is None:
        return None
    line = f"{what} was killed by {sig.name} ({signal.strsignal(sig) or sig.name})"
    if sig == signal.SIGILL:
        return f"{line}: it ran an instruction this CPU does not execute. {illegal_instruction_fix}"
    return line + "."
