"""llama.cpp as slmkit installs and checks it (the gguf target's runtime, through llama-cpp-python):
the portable build flags, the reinstall command, and a tiny evaluation in a child process that
tells a crashing build (SIGILL) apart before any build, eval or bench loads it."""

from __future__ import annotations

import functools
import subprocess
import sys

from ..errors import ToolchainError, crash_line
from .doctor import Check

VERSION = "0.3.36"
# llama.cpp built for any x86-64 CPU with AVX2 and FMA: a native build (pip's default) compiles in
# what the build machine's CPU advertises, AMX and AVX-512 included, and a virtual machine that
# advertises AMX without granting it dies with SIGILL on `tilezero` at the first evaluation.
# With GGML_NATIVE=OFF every instruction set is off unless named; AVX-512 and AMX stay off.
CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
# --no-cache-dir: pip would otherwise reuse a wheel it compiled natively before, whatever CMAKE_ARGS says.
REINSTALL = (
    f'CMAKE_ARGS="{CMAKE_ARGS}" pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python=={VERSION}'
)
SIGILL_FIX = (
    "llama-cpp-python was compiled for CPU features this machine does not run (a native build that assumes "
    f"AMX or AVX-512). Rebuild it for any AVX2 CPU: {REINSTALL}"
)


INSTALL = f'CMAKE_ARGS="{CMAKE_ARGS}" pip install --no-cache-dir llama-cpp-python=={VERSION}'


def check() -> Check:
    """Whether llama.cpp is installed and evaluates a tiny model here (doctor's line)."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        return Check(
            "llama.cpp",
            False,
            f"llama-cpp-python is not installed: {INSTALL} (it compiles llama.cpp for any AVX2 CPU, a few minutes)",
        )
    return _evaluate(PROBE)


def require(what: str) -> None:
    """ToolchainError saying why `what` (a sentence's subject) cannot run llama.cpp here."""
    found = check()
    if not found.ok:
        raise ToolchainError(f"{what} with llama.cpp, and {found.detail}")


PROBE = (sys.executable, "-m", "toolkit.plan.llama_probe")


@functools.cache
def _evaluate(command: tuple[str, ...]) -> Check:
    """A tiny Q4_0 model evaluated by llama.cpp in a child process (`command`; once per process):
    ok, or why not, naming the signal that killed it."""
    proc = subprocess.run(list(command), capture_output=True, text=True)
    if proc.returncode == 0:
        return Check("llama.cpp", True, proc.stdout.strip().splitlines()[-1])
    line = crash_line("a tiny llama.cpp evaluation (child process)", proc.returncode, SIGILL_FIX)
    tail = " ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return Check("llama.cpp", False, line or f"a tiny llama.cpp evaluation failed: {tail}")
