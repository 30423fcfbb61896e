"""The tiny GGUF fixtures load in the real llama.cpp and behave as documented."""

from __future__ import annotations

from pathlib import Path

from llama_cpp import Llama


def _answer(path: Path, question: str) -> tuple[str, str]:
    llm = Llama(str(path), n_ctx=256, verbose=False)
    out = llm.create_chat_completion(
        [{"role": "user", "content": question}], max_tokens=20, temperature=0
    )
    assert isinstance(out, dict)  # not a stream
    choice = out["choices"][0]
    content, reason = choice["message"]["content"], choice["finish_reason"]
    assert content is not None and reason is not None
    return content, reason


def test_tiny_model_is_small_and_writes_prompt_dependent_ascii(tiny_model_path: Path) -> None:
    assert tiny_model_path.stat().st_size < 512 * 1024
    first, reason = _answer(tiny_model_path, "hello there")
    second, _ = _answer(tiny_model_path, "something else entirely")
    assert reason == "length"
    assert first.isascii() and first.isprintable() and len(first) == 20
    assert first != second


def test_tiny_script_model_answers_its_script(
    tiny_script_model_path: Path, tiny_script: str
) -> None:
    assert _answer(tiny_script_model_path, "anything") == (tiny_script, "stop")
