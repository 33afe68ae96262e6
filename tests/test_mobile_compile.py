"""The Android (Kotlin) and iOS (Objective-C) runners are compiled here against the real
onnxruntime-genai API (tests/data/genai_api, see its SOURCE.md): a removed method, an Int passed
where the API takes a Long or a Double, an NSNumber where it takes an int32_t, or an unavailable
initializer fails here, not in a phone build.

Needs (Debian): javac, kotlinc, JUnit 4, Android's org.json, clang and GNUstep's Foundation headers:
    apt-get install -y --no-install-recommends default-jdk-headless kotlin junit4 libandroid-json-java clang \
        libgnustep-base-dev
A missing tool skips these tests with that line (pytest -ra lists it); with
SLMKIT_REQUIRE_MOBILE_COMPILE=1, as .ci/run sets it, it fails them instead. SLMKIT_KOTLINC=/path/to/kotlinc
selects another Kotlin compiler than the one on PATH.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from glob import glob
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNERS = ROOT / "toolkit" / "bundle" / "runners"
API = Path(__file__).parent / "data" / "genai_api"
KOTLIN_RUNNER = RUNNERS / "android/src/main/kotlin/ai/slmkit/runner/SlmkitRunner.kt"
KOTLIN_SMOKE = RUNNERS / "android/src/androidTest/kotlin/ai/slmkit/runner/SlmkitSmokeTest.kt"
OBJC_RUNNER = RUNNERS / "ios/SlmkitRunner/SlmkitRunner.m"
OBJC_SMOKE = RUNNERS / "ios/SlmkitSmokeTests/SlmkitSmokeTests.m"

PACKAGES = "default-jdk-headless kotlin junit4 libandroid-json-java clang libgnustep-base-dev"
INSTALL = f"apt-get install -y --no-install-recommends {PACKAGES}"
REQUIRE_ENV = "SLMKIT_REQUIRE_MOBILE_COMPILE"
JUNIT = Path("/usr/share/java/junit4.jar")
ORG_JSON = Path("/usr/share/java/com.android.json.jar")  # Android's own org.json (libandroid-json-java)
GNUSTEP = Path("/usr/include/GNUstep")
# The three selectors ort_genai_objc.h declares twice (NSString and NSArray prompts) at the
# recorded commit: clang rejects the header as it is (SOURCE.md). Compiled against a copy without
# the second declarations; this list must shrink to nothing once the header is regenerated from a
# fixed release.
UPSTREAM_DUPLICATE_SELECTORS = [
    "-processImages:images:error:",
    "-processAudios:audios:error:",
    "-processImagesAndAudios:images:audios:error:",
]


def _require(what: str, found) -> None:
    if found:
        return
    reason = f"{what} is missing: {INSTALL}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: the mobile compile checks must run)", pytrace=False)
    pytest.skip(reason)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600)


def _output(proc: subprocess.CompletedProcess) -> str:
    # kotlinc 1.3 on JDK 17 warns about -Xverify:none on every start; that is no diagnostic.
    lines = (proc.stdout + proc.stderr).splitlines()
    return "\n".join(line for line in lines if "Xverify" not in line)


def _mutate(source: str, pattern: str, replacement: str, what: str) -> str:
    """`source` with the single match of regex `pattern` replaced: one deliberate API mistake."""
    mutated, n = re.subn(pattern, replacement, source, count=1)
    assert n == 1, f"the runner no longer contains {pattern!r}: update the '{what}' case of this test"
    return mutated


# ---------------------------------------------------------------- Kotlin against the Java API


@pytest.fixture(scope="module")
def kotlin(tmp_path_factory):
    """(kotlinc, classpath): the Java API stubs and Android platform stubs compiled with javac,
    JUnit 4, org.json and the kotlin-stdlib-jdk7/8 jars of that kotlinc (AutoCloseable.use)."""
    javac = shutil.which("javac")
    kotlinc = os.environ.get("SLMKIT_KOTLINC") or shutil.which("kotlinc")
    _require("javac (default-jdk-headless)", javac)
    _require("kotlinc (kotlin)", kotlinc and Path(kotlinc).is_file())
    _require(f"{JUNIT} (junit4)", JUNIT.exists())
    _require(f"{ORG_JSON} (libandroid-json-java)", ORG_JSON.exists())
    classes = tmp_path_factory.mktemp("genai-java-api")
    sources = sorted(API.glob("java/**/*.java")) + sorted(API.glob("android_stubs/**/*.java"))
    proc = _run([javac, "-nowarn", "-d", classes, "-cp", JUNIT, *sources])
    assert proc.returncode == 0, f"javac failed on tests/data/genai_api:\n{_output(proc)}"
    lib = Path(kotlinc).resolve().parent.parent / "lib"
    stdlib_ext = [p for p in (lib / "kotlin-stdlib-jdk7.jar", lib / "kotlin-stdlib-jdk8.jar") if p.exists()]
    classpath = os.pathsep.join(str(p) for p in [classes, JUNIT, ORG_JSON, *stdlib_ext])
    return kotlinc, classpath


def _kotlinc(kotlin, out: Path, *files: Path) -> subprocess.CompletedProcess:
    kotlinc, classpath = kotlin
    return _run([kotlinc, "-jvm-target", "1.8", "-cp", classpath, "-d", out, *files])


def test_kotlin_runner_and_smoke_test_compile_against_genai_api(kotlin, tmp_path):
    proc = _kotlinc(kotlin, tmp_path / "classes", KOTLIN_RUNNER, KOTLIN_SMOKE)
    assert proc.returncode == 0, f"kotlinc rejected the Android runner:\n{_output(proc)}"
    assert (tmp_path / "classes/ai/slmkit/runner/SlmkitRunner.class").exists()
    assert (tmp_path / "classes/ai/slmkit/runner/SlmkitSmokeTest.class").exists()


def _mismatch(actual: str, expected: str) -> str:
    """A type mismatch as kotlinc 1.x ('inferred type is Int but Long was expected') and 2.x
    ("actual type is 'Int', but 'Long' was expected" / "expected 'Int', actual 'Long'") word it."""
    return rf"(?i)\b{actual}\W+but\W+{expected}\W+was expected|expected\W+{expected}\W+actual\W+{actual}\b"


# (name, regex in the runner, replacement, regex the compiler's error for that file must match)
KOTLIN_MISTAKES = [
    (
        "removed in 0.6.0",
        r"\bTokenizer\(model\)",
        "model.createTokenizer()",
        r"(?i)unresolved reference.*createTokenizer",
    ),
    ("Int where Long", r"getLastTokenInSequence\(0\)", "getLastTokenInSequence(out.size)", _mismatch("Int", "Long")),
    (
        "Int where Double",
        r'(setSearchOption\("max_length", [^\n]*?)\.toDouble\(\)\)',
        r"\1)",
        r"(?i)none of the following.*setSearchOption\([^)]*\bDouble\)",
    ),
    (
        "Long where Int",
        r"val token: Int = generator\.getLastTokenInSequence\(0\)",
        "val token: Int = generator.tokenCount()",
        _mismatch("Long", "Int"),
    ),
]


def test_kotlin_compile_rejects_calls_the_genai_api_does_not_have(kotlin, tmp_path):
    """Each deliberate mistake in a copy of the runner is a compile error naming it (one kotlinc run)."""
    runner = KOTLIN_RUNNER.read_text()
    files = []
    for i, (what, pattern, replacement, _) in enumerate(KOTLIN_MISTAKES):
        mutant = _mutate(runner, pattern, replacement, what)
        mutant = mutant.replace("package ai.slmkit.runner", f"package ai.slmkit.runner.mistake{i}", 1)
        path = tmp_path / f"Mistake{i}.kt"
        path.write_text(mutant)
        files.append(path)
    proc = _kotlinc(kotlin, tmp_path / "classes", *files)
    output = _output(proc)
    assert proc.returncode != 0, f"kotlinc accepted runners with API mistakes:\n{output}"
    # One diagnostic: its 'file:line:col: error:' line and the indented lines that follow it.
    located = r"^\S[^\n]*?\.kt:\d+:\d+: "
    diagnostics = re.findall(located + r"error:.*?(?=" + located + r"|\Z)", output, flags=re.S | re.M)
    for path, (what, _, _, expected) in zip(files, KOTLIN_MISTAKES, strict=True):
        errors = [d for d in diagnostics if f"{path.name}:" in d]
        assert errors, f"no compile error for '{what}' in {path.name}:\n{output}"
        assert any(re.search(expected, d, flags=re.S) for d in errors), f"'{what}': {expected!r} not in\n" + "".join(
            errors
        )


# ---------------------------------------------------------------- Objective-C against ort_genai_objc.h


def _header_without_duplicate_selectors(header: str) -> tuple[str, list[str]]:
    """The header with the second and later declarations of a selector in one @interface dropped."""
    dropped = []

    def interface(block: re.Match) -> str:
        seen = set()

        def method(decl: re.Match) -> str:
            text = decl.group(0)
            keywords = re.findall(r"(\w+)\s*:\s*\(", text)
            name = "".join(f"{k}:" for k in keywords) or re.match(r"[-+]\s*\([^)]*\)\s*(\w+)", text).group(1)
            selector = text[0] + name
            if selector in seen:
                dropped.append(selector)
                return f"/* {selector}: duplicate declaration dropped by tests/test_mobile_compile.py */"
            seen.add(selector)
            return text

        return re.sub(r"^[-+]\s*\(.*?;", method, block.group(0), flags=re.S | re.M)

    return re.sub(r"^@interface\b.*?^@end", interface, header, flags=re.S | re.M), dropped


def test_upstream_objc_header_duplicates_are_the_known_ones():
    header = (API / "objc/ort_genai_objc.h").read_text()
    _, dropped = _header_without_duplicate_selectors(header)
    assert dropped == UPSTREAM_DUPLICATE_SELECTORS
    used = OBJC_RUNNER.read_text() + OBJC_SMOKE.read_text()
    for selector in dropped:  # an ambiguous selector would not compile on a Mac either
        assert selector[1:].split(":")[0] + ":" not in used, selector


@pytest.fixture(scope="module")
def objc(tmp_path_factory):
    """The clang command line: ARC and blocks as in Xcode, -Wall -Werror, GNUstep's Foundation made
    to look like Apple's (objc_stubs/apple_foundation_compat.h), the XCTest and CommonCrypto stubs
    and the real ort_genai_objc.h (less its duplicate declarations)."""
    clang = shutil.which("clang")
    _require("clang (clang)", clang)
    foundation = GNUSTEP / "Foundation/Foundation.h"
    _require(f"{foundation} (libgnustep-base-dev)", foundation.exists())
    runtimes = sorted(
        glob("/usr/lib/gcc/*/*/include/objc/runtime.h"),
        key=lambda p: int(m.group(1)) if (m := re.search(r"/(\d+)/include/", p)) else 0,
    )
    _require("GCC's Objective-C runtime headers (libobjc-*-dev, with libgnustep-base-dev)", runtimes)
    gcc_include = Path(runtimes[-1]).parent.parent
    shim = tmp_path_factory.mktemp("objc-shim")
    (shim / "objc").mkdir()
    # GNUstep includes it when the compiler has blocks; Debian's GCC runtime has none.
    (shim / "objc/blocks_runtime.h").write_text(
        "void *_Block_copy(const void *);\nvoid _Block_release(const void *);\n"
    )
    # GCC's runtime.h has two constructs that ARC rejects; a copy without them, found first.
    runtime = Path(runtimes[-1]).read_text()
    for old, new in [
        ("return object->class_pointer;", "return *(Class *)(__bridge void *)object;"),
        ("Protocol **", "Protocol * __unsafe_unretained *"),
    ]:
        assert old in runtime, f"{runtimes[-1]} changed: update the ARC shim in {Path(__file__).name}"
        runtime = runtime.replace(old, new)
    (shim / "objc/runtime.h").write_text(re.sub(r'#include "(\w[\w-]*\.h)"', r"#include <objc/\1>", runtime))
    header, _ = _header_without_duplicate_selectors((API / "objc/ort_genai_objc.h").read_text())
    (shim / "ort_genai_objc.h").write_text(header)
    stubs = API / "objc_stubs"
    return [
        clang,
        "-fsyntax-only",
        "-x",
        "objective-c",
        "-fobjc-arc",
        "-fobjc-runtime=gnustep-2.0",
        "-fblocks",
        "-Wall",
        "-Werror",
        "-DGNUSTEP",
        "-DGNUSTEP_BASE_LIBRARY=1",
        "-DGNU_RUNTIME=1",
        "-D_NATIVE_OBJC_EXCEPTIONS",
        "-I",
        stubs,
        "-I",
        shim,
        "-isystem",
        GNUSTEP,
        "-idirafter",
        gcc_include,
        "-include",
        stubs / "apple_foundation_compat.h",
    ]


def _clang(objc, source: Path) -> subprocess.CompletedProcess:
    return _run([*objc, "-I", RUNNERS / "ios/SlmkitRunner", source])


def test_objc_runner_compiles_against_genai_header(objc):
    assert '#import "ort_genai_objc.h"' in OBJC_RUNNER.read_text()
    proc = _clang(objc, OBJC_RUNNER)
    assert proc.returncode == 0, f"clang rejected {OBJC_RUNNER.relative_to(ROOT)}:\n{_output(proc)}"


def test_objc_smoke_test_compiles(objc):
    proc = _clang(objc, OBJC_SMOKE)
    assert proc.returncode == 0, f"clang rejected {OBJC_SMOKE.relative_to(ROOT)}:\n{_output(proc)}"


OBJC_MISTAKES = [
    (
        "removed in 0.6.0",
        r"generateNextTokenWithError:",
        "computeLogitsWithError:",
        r"no visible @interface for 'OGAGenerator' declares the selector 'computeLogitsWithError:'",
    ),
    (
        "misspelled selector",
        r"setSearchOption:@\"batch_size\" doubleValue:",
        'setSearchOption:@"batch_size" intValue:',
        r"no visible @interface for 'OGAGeneratorParams' declares the selector 'setSearchOption:intValue:error:'",
    ),
    (
        "NSNumber where int32_t",
        r"\[stream decode:token ",
        "[stream decode:@(token) ",
        r"'NSNumber \*' to parameter of type 'int32_t'",
    ),
    (
        "unavailable initializer",
        r"\[\[OGAModel alloc\] initWithConfig:config error:error\]",
        "[[OGAModel alloc] init]",
        r"'init' is unavailable",
    ),
]


@pytest.mark.parametrize("what,pattern,replacement,expected", OBJC_MISTAKES, ids=[m[0] for m in OBJC_MISTAKES])
def test_objc_compile_rejects_calls_the_genai_api_does_not_have(objc, tmp_path, what, pattern, replacement, expected):
    (tmp_path / "SlmkitRunner.m").write_text(_mutate(OBJC_RUNNER.read_text(), pattern, replacement, what))
    proc = _clang(objc, tmp_path / "SlmkitRunner.m")
    output = _output(proc)
    assert proc.returncode != 0, f"clang accepted '{what}'"
    assert re.search(expected, output), f"'{what}': {expected!r} not in\n{output}"


# ---------------------------------------------------------------- what the compilers cannot see


def test_smoke_tests_read_the_golden_keys_slmkit_writes():
    for smoke in (KOTLIN_SMOKE, OBJC_SMOKE):
        text = smoke.read_text()
        for key in ("prompt_ids", "bundle_ids", "expected_ids", "min_greedy_prefix", "prompt", "cases", "bundle_near"):
            assert f'"{key}"' in text, (smoke.name, key)
