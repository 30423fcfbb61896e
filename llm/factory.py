"""Build the configured engine (the app and the CLI call this; tests build engines directly)."""

from __future__ import annotations

from bot.config import Settings
from llm.base import Engine


def create_engine(settings: Settings) -> Engine:
    """`engine.kind` picks the engine; EDGEQA_MODEL (settings.model_ref) picks the model.

    Nothing is loaded or contacted here: `await engine.start()` does that.
    """
    if settings.engine.kind == "openai":
        from llm.openai_engine import OpenAICompatEngine

        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        return OpenAICompatEngine(settings.engine, api_key=key)
    from llm.llama_engine import LlamaCppEngine

    return LlamaCppEngine(
        settings.engine,
        model=settings.model_ref,
        debug=settings.log.level == "DEBUG",
    )
