"""Ollama's Modelfile for a GGUF bundle: FROM the bundle's model.gguf, a TEMPLATE in Ollama's Go
template language written from the checkpoint's own chat template, a `stop` for every EOS
token's text, num_ctx = the target's context cap, greedy decoding.

The TEMPLATE comes from renderings of the chat template, not from its Jinja source: a user turn,
a user and an assistant turn, and a system and a user turn are rendered with marker contents, and
the text around each marker is a role's prefix and suffix. Templates that wrap each message the
same way whatever comes next (Phi-3/3.5/4's <|role|>...<|end|>, ChatML's <|im_start|>role...
<|im_end|>) are written this way; `pieces` refuses the others, and `render` replays the pieces as
Ollama does so that a test compares them with the chat template's own rendering.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MARK = {"system": "\x01SYSTEM\x01", "user": "\x01USER\x01", "assistant": "\x01ASSISTANT\x01"}


def pieces(tokenizer: Any) -> dict[str, str] | None:
    """{role}_prefix / {role}_suffix for system, user and assistant, `generation` (what opens the
    answer) and `default_system` (the system message the template adds when there is none), from
    the tokenizer's chat template; None when its renderings are not messages wrapped one by one
    (then the Modelfile has no TEMPLATE and Ollama uses the file's own)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None

    def render(messages: list[tuple[str, str]], generation: bool = True) -> str:
        turns = [{"role": r, "content": c} for r, c in messages]
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation)

    s, u, a = MARK["system"], MARK["user"], MARK["assistant"]
    try:
        system = render([("system", s), ("user", u)])
        user = render([("user", u)])
        chat = render([("user", u), ("assistant", a), ("user", u)])
    except Exception:  # a template that needs other messages (tools, a system turn first ...)
        return None
    bos = getattr(tokenizer, "bos_token", None) or ""
    # The template's own BOS text goes: llama.cpp and Ollama add the BOS token themselves.
    head = bos if bos and "bos_token" in template and system.startswith(bos) and user.startswith(bos) else ""
    # A turn opens the same way for every role: the system turn's opening with the role renamed.
    opening = system[len(head) : system.index(s)]
    if "system" not in opening:
        return None
    out = {f"{r}_prefix": opening.replace("system", r) for r in ("system", "user", "assistant")}
    out["generation"] = out["assistant_prefix"]
    after_user = user[user.index(u) + len(u) :]
    between = chat[chat.index(a) + len(a) : chat.rindex(u)]
    if not (after_user.endswith(out["generation"]) and between.endswith(out["user_prefix"])):
        return None
    out["user_suffix"] = after_user[: len(after_user) - len(out["generation"])]
    out["assistant_suffix"] = between[: len(between) - len(out["user_prefix"])]
    out["system_suffix"] = system[system.index(s) + len(s) : system.index(u) - len(out["user_prefix"])]
    default = user[len(head) : user.index(u) - len(out["user_prefix"])]
    ps, ss = out["system_prefix"], out["system_suffix"]
    if default and not (default.startswith(ps) and default.endswith(ss)):
        return None
    out["default_system"] = default[len(ps) : len(default) - len(ss)] if default else ""
    for messages in (
        [("user", "hi"), ("assistant", "yes"), ("user", "and?")],
        [("system", "Be brief."), ("user", "hi")],
    ):
        if render(messages) != head + replay(out, messages):
            return None
    return out


def replay(p: dict[str, str], messages: list[tuple[str, str]]) -> str:
    """The prompt Ollama makes with the Modelfile's TEMPLATE (and SYSTEM) for `messages`: the
    default system message first when there is none, the answer opened after a last non-assistant
    message."""
    if p["default_system"] and (not messages or messages[0][0] != "system"):
        messages = [("system", p["default_system"]), *messages]
    text = "".join(p[f"{role}_prefix"] + content + p[f"{role}_suffix"] for role, content in messages)
    return text + (p["generation"] if messages and messages[-1][0] != "assistant" else "")


def go_template(p: dict[str, str]) -> str:
    """The TEMPLATE text: each message wrapped by its role's pieces, the answer opened after the last
    message. One line with no whitespace between actions (no trim markers, which would also eat a
    piece's own newlines): the output is the pieces and the contents, nothing else."""

    def lit(s: str) -> str:
        return s.replace("{{", '{{ "{{" }}')

    roles = "".join(
        f'{{{{ {"if" if n == 0 else "else if"} eq .Role "{role}" }}}}'
        f"{lit(p[f'{role}_prefix'])}{{{{ .Content }}}}{lit(p[f'{role}_suffix'])}"
        for n, role in enumerate(("system", "user", "assistant"))
    )
    return (
        "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + roles
        + "{{ end }}"
        + f'{{{{ if and $last (ne .Role "assistant") }}}}{lit(p["generation"])}{{{{ end }}}}{{{{ end }}}}'
    )


def write_modelfile(model_dir: Path, src: Any, stop_ids: list[int], context_cap: int) -> bool:
    """model/Modelfile for the checkpoint `src` (source.checkpoint.SourceModel); returns whether it
    carries a TEMPLATE (see pieces)."""
    from ..families import family_of
    from ..source.hf import load_tokenizer, quiet

    quiet()
    tokenizer = load_tokenizer(src.path, family_of(src.config).hf_config(src.path))
    p = pieces(tokenizer)
    lines = ["FROM ./model.gguf", ""]
    if p is not None:
        lines += ['TEMPLATE """' + go_template(p) + '"""', ""]
        if p["default_system"]:
            lines += ['SYSTEM """' + p["default_system"] + '"""', ""]
    stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_ids]
    lines += [f'PARAMETER stop "{_quoted(t)}"' for t in dict.fromkeys(stops) if t]
    lines += [f"PARAMETER num_ctx {context_cap}", "PARAMETER temperature 0", ""]
    (model_dir / "Modelfile").write_text("\n".join(lines), encoding="utf-8")
    return p is not None


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
