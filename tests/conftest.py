"""Shared fixtures: tiny real GGUF models that llama.cpp loads in milliseconds.

`tiny_model_path`: random weights; greedy answers are printable ASCII that depend on the
whole prompt and always run to max_tokens. `tiny_script_model_path`: always answers
`tiny_script` (fixture) and then ends its turn. See tests/tiny_gguf.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    from tests.tiny_gguf import write_tiny_model
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from tiny_gguf import write_tiny_model  # type: ignore[no-redef]

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
