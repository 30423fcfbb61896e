"""Shared fixtures.

Tiny real GGUF models that llama.cpp loads in milliseconds: `tiny_model_path`: random
weights; greedy answers are printable ASCII that depend on the whole prompt and always run
to max_tokens. `tiny_script_model_path`: always answers `tiny_script` (fixture) and then
ends its turn. See tests/tiny_gguf.py.

`fake`: the fake Telegram Bot API (tests/fakes/telegram_api.py), started for one test.
(test_openai_engine.py has a `fake` of its own, a fake OpenAI server, which wins there.)

The storage tests' databases: `url`, an empty database once per backend (SQLite, and
PostgreSQL when EDGEQA_TEST_DATABASE_URL is set), and `repo`, a started SqlRepository on it.
See tests/storage_support.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage.sql import SqlRepository
from tests.fakes.telegram_api import FakeTelegram
from tests.storage_support import BACKENDS, database_url, open_repo

try:
    from tests.tiny_gguf import write_tiny_model
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from tiny_gguf import write_tiny_model  # type: ignore[no-redef,import-not-found]

# Distinct bytes, several multi-byte characters: a CJK character, an accent, €, an emoji.
TINY_SCRIPT = "Hi 中é€😀!"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_script() -> str:
    """What `tiny_script_model_path` answers to anything."""
    return TINY_SCRIPT


@pytest.fixture(scope="session")
def tiny_script_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(
        tmp_path_factory.mktemp("models") / "tiny-script.gguf", script=TINY_SCRIPT
    )


@pytest.fixture(params=BACKENDS)
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database_url(request.param, tmp_path) as value:
        yield value


@pytest.fixture
async def repo(url: str) -> AsyncIterator[SqlRepository]:
    async with open_repo(url) as value:
        yield value


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = FakeTelegram()
    await server.start()
    yield server
    await server.close()
