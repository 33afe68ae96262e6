"""Hub ids: download the files a build reads (config, safetensors, tokenizer; never pickles or
code) with huggingface_hub, with progress, a timeout on every request, and one clear error for
each way a download fails. The resolved commit is returned for the manifest."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputModelError

# Files a build reads; everything else in a Hub repo (pickles, ONNX exports, images) is skipped.
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]
COMMIT = re.compile(r"^[0-9a-f]{40}$")
LOCAL = "or pass a local folder (the checkpoint's config.json, *.safetensors and tokenizer files)"


def download(repo_id: str, cache_dir: Path | None) -> tuple[Path, str | None]:
    """(snapshot folder, resolved commit). Works offline from the cache (HF_HUB_OFFLINE=1, or no
    network) when the model was downloaded before."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()  # its retry warnings: the error below says what happened
    try:
        with _request_timeouts(float(constants.HF_HUB_DOWNLOAD_TIMEOUT)), _progress() as progress:
            folder = snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, cache_dir=cache_dir, tqdm_class=progress)
    except Exception as e:  # huggingface_hub raises its own errors and its HTTP client's
        raise InputModelError(explain(repo_id, e, constants)) from None
    folder = Path(folder)
    return folder, folder.name if COMMIT.match(folder.name) else None


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def explain(repo_id: str, e: BaseException, constants: Any) -> str:
    """One message for a failed download: what happened and the fix."""
    from huggingface_hub import errors

    head = f"Could not download '{repo_id}' from the Hugging Face Hub"
    chain = _chain(e)
    names = {type(c).__name__ for c in chain}
    status = next(
        (
            c.response.status_code
            for c in chain
            if isinstance(c, errors.HfHubHTTPError) and getattr(c, "response", None) is not None
        ),
        None,
    )
    root = chain[-1]
    if constants.HF_HUB_OFFLINE:
        return (
            f"{head}: HF_HUB_OFFLINE=1 is set and the model is not in the cache ({constants.HF_HUB_CACHE}). "
            f"Unset HF_HUB_OFFLINE to download it, {LOCAL}."
        )
    if isinstance(e, errors.GatedRepoError):
        return (
            f"{head}: it is a gated model (HTTP 403). Accept its license on its Hub page, then log in "
            f"(`hf auth login`, or set HF_TOKEN), {LOCAL}."
        )
    if isinstance(e, errors.RepositoryNotFoundError) or status in (401, 404):
        return (
            f"{head}: no such model, or it is private (HTTP {status}). Check the id (for example "
            f"microsoft/Phi-3.5-mini-instruct); for a private model log in (`hf auth login`, or set "
            f"HF_TOKEN), {LOCAL}."
        )
    if isinstance(e, errors.RevisionNotFoundError):
        return f"{head}: its main branch was not found (HTTP {status}). Check the id, {LOCAL}."
    if status is not None:
        return f"{head}: the Hub answered HTTP {status}. Try again later, {LOCAL}."
    if names & {"RemoteProtocolError", "ReadError", "IncompleteRead", "ChunkedEncodingError"}:
        return (
            f"{head}: the download broke off ({root}). Run the same command again: finished files "
            f"are kept in the cache ({constants.HF_HUB_CACHE}) and not fetched twice."
        )
    if any("Timeout" in n for n in names) or any(isinstance(c, TimeoutError) for c in chain):
        return (
            f"{head}: the Hub did not answer within {constants.HF_HUB_DOWNLOAD_TIMEOUT} s. Check your "
            f"network or proxy (HTTPS_PROXY), raise HF_HUB_DOWNLOAD_TIMEOUT on a slow link, {LOCAL}."
        )
    if names & {"ConnectError", "ConnectionError", "gaierror", "ConnectionRefusedError", "ProxyError"}:
        return (
            f"{head}: cannot reach {constants.ENDPOINT} ({root}). Check your network or proxy "
            f"(HTTPS_PROXY); to build a model downloaded before, set HF_HUB_OFFLINE=1; {LOCAL}."
        )
    return f"{head} ({type(root).__name__}: {root}). Check the id and your network, {LOCAL}."


@contextlib.contextmanager
def _request_timeouts(seconds: float) -> Iterator[None]:
    """huggingface_hub sends its API requests with no timeout: a Hub that accepts the connection
    and never answers would hang the build. Give every request of its session a limit."""
    from huggingface_hub import get_session

    def limit(request: Any) -> None:
        asked = request.extensions.get("timeout") or {}
        request.extensions["timeout"] = {
            k: seconds if asked.get(k) is None else asked[k] for k in ("connect", "read", "write", "pool")
        }

    hooks = get_session().event_hooks["request"]
    hooks.append(limit)
    try:
        yield
    finally:
        hooks.remove(limit)


@contextlib.contextmanager
def _progress() -> Iterator[type]:
    """A tqdm class for snapshot_download that shows the bytes written (its "Reconstructing" bar,
    fed by every file) on slmkit's progress line and draws nothing itself. huggingface_hub never
    closes that bar; leaving this block does."""
    import io

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from tqdm.auto import tqdm

    from ..progress import bar

    shown: list[Any] = []

    class HubProgress(tqdm):
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs.update(file=io.StringIO(), mininterval=0)
            super().__init__(*args, **kwargs)
            self._slmkit = None
            if kwargs.get("unit") == "B" and str(kwargs.get("desc", "")).startswith("Reconstructing"):
                cm = bar("download", self.total or 0, "bytes")
                self._slmkit = cm.__enter__()
                shown.append(cm)

        def update(self, n: float | None = 1) -> bool | None:
            if self._slmkit is not None:
                self._slmkit.set_total(self.total or 0)
                self._slmkit.advance(n or 0)
            return super().update(n)

    # While huggingface_hub's own bars are disabled (slmkit's quiet() does it) it feeds no bar at
    # all, this one included; this class draws nothing of theirs, so enable them meanwhile.
    was_disabled = are_progress_bars_disabled()
    enable_progress_bars()
    failed = True
    try:
        yield HubProgress
        failed = False
    finally:
        if was_disabled:
            disable_progress_bars()
        for cm in shown:
            cm.__exit__(*((RuntimeError, RuntimeError("download failed"), None) if failed else (None, None, None)))
