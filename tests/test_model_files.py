"""Model resolution: local files, hub downloads (from a local fake hub), and bad files."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bot.config import EngineSettings, Settings
from llm.base import ModelError
from llm.factory import create_engine
from llm.gguf_check import _TYPE_SIZES, check_gguf
from llm.llama_engine import LlamaCppEngine
from llm.model_files import pull_model, resolve_model
from llm.openai_engine import OpenAICompatEngine
from tests.fakes.common import serve
from tests.harness import free_port

REF = "acme/tiny-GGUF/tiny-q8.gguf"


def test_a_local_gguf_resolves_to_itself(tiny_model_path: Path, tmp_path: Path) -> None:
    assert resolve_model(str(tiny_model_path), tmp_path) == tiny_model_path.resolve()
    info = check_gguf(tiny_model_path)
    assert info.architecture == "qwen2" and info.tensors > 10


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a GGUF model file"),
        (b"hello, I am a text file" * 10, "not a GGUF model file"),
        (b"<!DOCTYPE html><html>Not found</html>", "web page"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n", "Git LFS"),
    ],
)
def test_files_that_are_not_gguf_get_a_clear_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelError, match=message) as caught:
        resolve_model(str(bad), tmp_path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.001])
def test_truncated_files_are_refused_before_llama_cpp_sees_them(
    tiny_model_path: Path, tmp_path: Path, keep: float
) -> None:
    data = tiny_model_path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: max(int(len(data) * keep), 24)])
    with pytest.raises(ModelError, match="truncated"):
        resolve_model(str(cut), tmp_path)


async def test_the_engine_reports_a_bad_model_file_instead_of_crashing(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    engine = LlamaCppEngine(EngineSettings(), model=bad)
    with pytest.raises(ModelError, match=r"broken\.gguf"):
        await engine.start()
    await engine.close()


@pytest.fixture(scope="module")
def tiny_bytes(tiny_model_path: Path) -> bytes:
    return tiny_model_path.read_bytes()


async def test_a_gguf_llama_cpp_cannot_load_is_a_model_error(
    tiny_bytes: bytes, tmp_path: Path
) -> None:
    # Well-formed GGUF, unknown architecture: passes our check, refused by llama.cpp.
    odd = tmp_path / "odd.gguf"
    odd.write_bytes(tiny_bytes.replace(b"qwen2", b"zzzz9", 1))
    engine = LlamaCppEngine(EngineSettings(), model=odd)
    with pytest.raises(ModelError, match="could not load"):
        await engine.start()


def test_a_missing_local_path_says_how_to_point_at_a_gguf(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=re.escape("EDGEQA_MODEL=/path/to/model.gguf")):
        resolve_model("./models/nope.gguf", tmp_path)


def test_offline_without_a_cached_file_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError) as caught:
        resolve_model(REF, tmp_path / "models")
    message = str(caught.value)
    assert message.startswith(f"no model: could not download {REF}")
    assert "EDGEQA_MODEL=/path/to/model.gguf" in message and "\n" not in message
    with pytest.raises(ModelError, match="not downloaded yet"):
        resolve_model(REF, tmp_path / "models", download=False)


@pytest.fixture
async def fake_hub(tiny_bytes: bytes) -> AsyncIterator[tuple[str, list[str]]]:
    """The two hub endpoints hf_hub_download uses (metadata HEAD, file GET)."""
    data = tiny_bytes
    etag = hashlib.sha256(data).hexdigest()
    seen: list[str] = []

    async def resolve(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        if request.match_info["path"] != "tiny-q8.gguf":
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound"})
        headers = {
            "ETag": f'"{etag}"',
            "X-Repo-Commit": "a" * 40,
            "Content-Length": str(len(data)),
            "Accept-Ranges": "bytes",
        }
        body = b"" if request.method == "HEAD" else data
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/acme/tiny-GGUF/resolve/{revision}/{path:.*}", resolve)
    runner, port = await serve(app)
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_pull_downloads_once_into_the_model_dir(
    fake_hub: tuple[str, list[str]],
    tiny_bytes: bytes,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    endpoint, seen = fake_hub
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    models = tmp_path / "models"
    path = await asyncio.to_thread(pull_model, REF, models)
    assert path == models / "acme" / "tiny-GGUF" / "tiny-q8.gguf"
    assert path.read_bytes() == tiny_bytes
    assert any(line.startswith("GET") for line in seen)
    seen.clear()
    # Later: found in the cache, the hub is not asked again.
    assert await asyncio.to_thread(resolve_model, REF, models) == path
    assert seen == []


def test_the_type_size_table_matches_ggml() -> None:
    from gguf.constants import GGML_QUANT_SIZES

    for kind, sizes in _TYPE_SIZES.items():
        assert GGML_QUANT_SIZES[kind] == sizes, kind  # type: ignore[index]


def test_the_factory_builds_the_configured_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEQA_MODEL", "/models/mine.gguf")
    local = create_engine(Settings())
    assert isinstance(local, LlamaCppEngine)
    assert local._model_ref == "/models/mine.gguf"
    monkeypatch.setenv("EDGEQA_ENGINE__KIND", "openai")
    monkeypatch.setenv("EDGEQA_OPENAI_API_KEY", "sk-test-123456")
    remote = create_engine(Settings())
    assert isinstance(remote, OpenAICompatEngine)
    assert remote._api_key == "sk-test-123456"
