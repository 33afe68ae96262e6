"""The Android (Kotlin) and iOS (Objective-C) runners cannot be compiled here, so every call they
make into onnxruntime-genai is checked against the published API (tests/data/genai_mobile_api.json,
derived from the binding sources it cites): a renamed or removed call fails here, not on a phone."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

RUNNERS = Path(__file__).resolve().parent.parent / "toolkit" / "runners"
API = json.loads((Path(__file__).parent / "data" / "genai_mobile_api.json").read_text())


def _strip(source: str) -> str:
    """Source without comments and string literals (they may hold brackets, colons, dots)."""
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    source = re.sub(r"//[^\n]*", " ", source)
    return re.sub(r'@?"(?:\\.|[^"\\])*"', "S", source)


def _args(source: str, open_at: int) -> int:
    """Number of top-level arguments of the call whose '(' is at open_at."""
    depth, count, empty = 0, 1, True
    for ch in source[open_at:]:
        if ch in "([{":
            depth += 1
            if depth == 1:
                continue
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return 0 if empty else count
        if depth == 1 and ch == ",":
            count += 1
        if not ch.isspace():
            empty = False
    raise AssertionError("unbalanced parentheses")


# ---------------------------------------------------------------- Kotlin / Java API


def kotlin_problems(source: str) -> tuple[list[str], int]:
    """(calls into ai.onnxruntime.genai that the API lacks, number of calls checked)."""
    java = API["java"]
    classes = set(java["methods"])
    text = _strip(source)
    problems, checked = [], 0
    for name in re.findall(r"^import ai\.onnxruntime\.genai\.(\w+)", text, re.M):
        if name not in classes:
            problems.append(f"import of unknown class {name}")
    typed = {v: t for v, t in re.findall(r"\b(?:val|var)\s+(\w+)\s*:\s*(\w+)", text) if t in classes}
    for m in re.finditer(r"(?<![\w.])(" + "|".join(sorted(classes)) + r")\(", text):
        cls, n = m.group(1), _args(text, m.end() - 1)
        checked += 1
        if n not in java["constructors"].get(cls, []):
            problems.append(f"{cls}() with {n} arguments: constructors take {java['constructors'].get(cls)}")
    for m in re.finditer(r"\b(\w+)\.(\w+)\(", text):
        var, method = m.groups()
        if var not in typed:
            continue
        cls, n = typed[var], _args(text, m.end() - 1)
        checked += 1
        arities = java["methods"][cls].get(method)
        if arities is None:
            problems.append(f"{var}.{method}(): {cls} has no method {method}")
        elif n not in arities:
            problems.append(f"{var}.{method}() with {n} arguments: {cls}.{method} takes {arities}")
    return problems, checked


def test_kotlin_runner_and_smoke_test_call_only_published_api():
    runner = (RUNNERS / "android/src/main/kotlin/ai/slmkit/runner/SlmkitRunner.kt").read_text()
    problems, checked = kotlin_problems(runner)
    assert problems == []
    assert checked >= 15, checked  # the generation loop, tokenizer and params calls were all seen


def test_kotlin_check_catches_renamed_and_removed_calls():
    runner = (RUNNERS / "android/src/main/kotlin/ai/slmkit/runner/SlmkitRunner.kt").read_text()
    broken = runner.replace("generator.generateNextToken()", "generator.computeLogits()")
    broken = broken.replace("Generator(model, params)", "Generator(params)")
    problems, _ = kotlin_problems(broken)
    assert problems == [
        "Generator() with 1 arguments: constructors take [2]",
        "generator.computeLogits(): Generator has no method computeLogits",
    ]


def test_android_smoke_test_uses_what_the_runner_defines():
    runner = _strip((RUNNERS / "android/src/main/kotlin/ai/slmkit/runner/SlmkitRunner.kt").read_text())
    test = _strip((RUNNERS / "android/src/androidTest/kotlin/ai/slmkit/runner/SlmkitSmokeTest.kt").read_text())
    defined = set(re.findall(r"\b(?:fun|val)\s+(\w+)", runner))
    used = set(re.findall(r"(?<![\w.])runner\.(\w+)", test))
    assert used and used <= defined, used - defined
    # the golden.json and manifest.json keys it reads are the ones slmkit writes
    for key in ("prompt_ids", "bundle_ids", "expected_ids", "min_greedy_prefix", "prompt", "cases"):
        assert f'"{key}"' in (RUNNERS / "android/src/androidTest/kotlin/ai/slmkit/runner/SlmkitSmokeTest.kt").read_text()


def test_android_gradle_snippet_names_the_verified_runtime_versions():
    gradle = (RUNNERS / "android" / "dependencies.gradle.kts").read_text()
    genai = metadata.version("onnxruntime-genai")
    assert f'files("libs/onnxruntime-genai-android-{genai}.aar")' in gradle
    assert f'"com.microsoft.onnxruntime:onnxruntime-android:{metadata.version("onnxruntime")}"' in gradle
    assert f"pod 'onnxruntime-genai-objc', '{genai}'" in (RUNNERS / "ios" / "Podfile").read_text()


# ---------------------------------------------------------------- Objective-C API


def objc_problems(source: str) -> tuple[list[str], int]:
    """(messages to OGA* objects or classes that the header lacks, number checked)."""
    classes = API["objc"]["classes"]
    text = _strip(source)
    typed = {v: t for t, v in re.findall(r"\b(OGA\w+)\s*\*\s*(\w+)", text) if t in classes}
    problems, checked = [], 0
    send = re.compile(r"(?<![\w\])@])\[\s*([^\[\]]+?)\s*\]")
    while True:
        m = send.search(text)
        if m is None:
            break
        body = m.group(1)
        receiver, _, rest = body.partition(" ")
        keywords = re.findall(r"(\w+)\s*:", rest)
        selector = "".join(f"{k}:" for k in keywords) if keywords else rest.strip()
        cls = typed.get(receiver) or (receiver if receiver in classes else None)
        if receiver.startswith("__OGA"):
            cls = receiver.strip("_")
        result = "__r__"
        if cls:
            checked += 1
            if selector not in classes[cls]:
                problems.append(f"[{cls} {selector}] is not in {API['objc']['header']}")
            if selector == "alloc" or selector.startswith("init"):
                result = f"__{cls}__"
        text = text[: m.start()] + result + text[m.end():]
    return problems, checked


def test_objc_runner_calls_only_published_api():
    runner = (RUNNERS / "ios/SlmkitRunner/SlmkitRunner.m").read_text()
    assert '#import "ort_genai_objc.h"' in runner
    problems, checked = objc_problems(runner)
    assert problems == []
    assert checked >= 20, checked


def test_objc_check_catches_renamed_calls():
    runner = (RUNNERS / "ios/SlmkitRunner/SlmkitRunner.m").read_text()
    broken = runner.replace("[generator generateNextTokenWithError:error]", "[generator computeLogitsWithError:error]")
    broken = broken.replace("[_tokenizer encode:text error:error]", "[_tokenizer encodeText:text error:error]")
    broken = broken.replace("[[OGATokenizerStream alloc] initWithTokenizer:", "[[OGATokenizerStream alloc] initWithModel:")
    problems, _ = objc_problems(broken)
    assert sorted(problems) == [
        "[OGAGenerator computeLogitsWithError:] is not in ort_genai_objc.h",
        "[OGATokenizer encodeText:error:] is not in ort_genai_objc.h",
        "[OGATokenizerStream initWithModel:error:] is not in ort_genai_objc.h",
    ]


def test_ios_smoke_test_uses_what_the_runner_declares():
    header = _strip((RUNNERS / "ios/SlmkitRunner/SlmkitRunner.h").read_text())
    test = _strip((RUNNERS / "ios/SlmkitSmokeTests/SlmkitSmokeTests.m").read_text())
    declared = {"".join(f"{k}:" for k in re.findall(r"(\w+)\s*:\s*\(", d)) or d.split(")")[-1].strip()
                for d in re.findall(r"^-\s*\([^;]+;", header, re.M)}
    declared |= set(re.findall(r"@property\([^)]*\)\s*\w+\s*(?:<[^>]*>)?\s*\*?\s*(\w+);", header))
    used = set()
    for body in re.findall(r"\[runner ([^\[\]]+)\]", test):
        keywords = re.findall(r"(\w+)\s*:", body)
        used.add("".join(f"{k}:" for k in keywords) if keywords else body.strip())
    used |= set(re.findall(r"(?<![\w.])runner\.(\w+)", test))
    assert used and used <= declared, used - declared
