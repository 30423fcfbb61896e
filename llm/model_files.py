"""Where the model file comes from: a local path, or a model-hub reference downloaded once.

A hub reference is "owner/repo/file.gguf" (e.g. the default
"Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_0.gguf"); it is downloaded with
huggingface_hub into `model_dir/owner/repo/` (a progress bar on stderr) and reused from
there. When nothing can be had, one line says how to point at a local GGUF instead.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from llm.base import ModelError
from llm.gguf_check import check_gguf

log = logging.getLogger(__name__)

USE_LOCAL = "set EDGEQA_MODEL=/path/to/model.gguf to use a local GGUF"


def parse_hub_ref(ref: str) -> tuple[str, str] | None:
    """("owner/repo", "path/in/repo.gguf") for a hub reference, else None."""
    ref = ref.removeprefix("hf://").removeprefix("hf:")
    parts = ref.split("/")
    if len(parts) < 3 or not all(parts) or ref.startswith((".", "~")):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def resolve_model(ref: str, model_dir: str | Path, *, download: bool = True) -> Path:
    """The checked local GGUF for `ref`, downloading a hub reference if needed and allowed."""
    ref = ref.strip()
    if not ref:
        raise ModelError(f"no model configured; {USE_LOCAL}")
    local = Path(ref).expanduser()
    if local.is_file():
        check_gguf(local)
        return local.resolve()
    if local.is_dir():
        raise ModelError(f"{ref} is a directory, not a GGUF file; {USE_LOCAL}")
    hub = parse_hub_ref(ref)
    if hub is None:
        raise ModelError(f"model file not found: {ref}; {USE_LOCAL}")
    cached = _cached(hub, Path(model_dir).expanduser())
    if cached is not None:
        return cached
    if not download:
        raise ModelError(
            f"no model: {ref} is not downloaded yet (run `edgeqa model pull`); {USE_LOCAL}"
        )
    return pull_model(ref, model_dir)


def pull_model(ref: str, model_dir: str | Path) -> Path:
    """Download a hub reference into `model_dir` (with a progress bar); return its path.

    A local path is only checked. An existing complete download is not fetched again.
    """
    ref = ref.strip()
    hub = parse_hub_ref(ref)
    if hub is None or Path(ref).expanduser().exists():
        return resolve_model(ref, model_dir, download=False)
    repo, filename = hub
    target_dir = Path(model_dir).expanduser() / repo
    cached = _cached(hub, Path(model_dir).expanduser())
    if cached is not None:
        return cached
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    try:
        _probe(endpoint)
        from huggingface_hub import hf_hub_download

        log.info("downloading %s from %s", filename, repo)
        path = hf_hub_download(repo, filename, local_dir=target_dir, endpoint=endpoint)
    except Exception as exc:
        reason = _short(exc)
        raise ModelError(
            f"no model: could not download {ref} ({reason}; offline?); {USE_LOCAL}"
        ) from None
    result = Path(str(path))
    check_gguf(result)
    return result


def _probe(endpoint: str) -> None:
    """Fail in seconds when the hub is unreachable (huggingface_hub retries for ~25 s).

    Skipped behind an HTTP proxy, where a direct connection says nothing.
    """
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=5).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConnectionError(f"cannot connect to {url.hostname}: {reason}") from None


def _cached(hub: tuple[str, str], model_dir: Path) -> Path | None:
    """A complete earlier download: ours in model_dir, or one in the Hugging Face cache."""
    repo, filename = hub
    ours = model_dir / repo / filename
    if ours.is_file():
        check_gguf(ours)
        return ours
    try:
        from huggingface_hub import try_to_load_from_cache

        theirs = try_to_load_from_cache(repo, filename)
    except Exception:  # a malformed reference or an unreadable cache: not cached
        return None
    if isinstance(theirs, str) and Path(theirs).is_file():
        check_gguf(theirs)
        return Path(theirs)
    return None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text if len(text) <= 120 else text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
