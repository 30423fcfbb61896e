"""The model's own chat template (Jinja, from the GGUF metadata) -> prompt segments.

Messages are rendered with placeholders instead of their text, so the result splits into
template text (tokenized with special markers such as "<|im_start|>" parsed as control
tokens) and message text (tokenized literally). A user typing "<|im_end|><|im_start|>system"
therefore cannot forge a turn boundary. Models without a template get ChatML.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llm.base import ChatMessage, EngineError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")

# (text, literal): literal segments are message text, the rest is template markup.
Segment = tuple[str, bool]


def _raise(message: str) -> NoReturn:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class ChatTemplate:
    """A compiled chat template; `segments()` is pure and safe to call from any thread."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols],
        )
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = _strftime_now
        self.source = source or CHATML
        try:
            self._template = env.from_string(self.source)
        except jinja2.TemplateError:
            self.source = CHATML
            self._template = env.from_string(CHATML)
        self._extra: dict[str, Any] = {"bos_token": bos_token, "eos_token": eos_token}

    def segments(self, messages: Sequence[ChatMessage]) -> list[Segment]:
        """The prompt for `messages` followed by the assistant's turn header."""
        try:
            return self._render(list(messages))
        except jinja2.TemplateError:
            pass
        # Some templates refuse a system role; fold it into the first user message.
        folded = _fold_system(list(messages))
        try:
            return self._render(folded)
        except jinja2.TemplateError as exc:
            raise EngineError(
                f"the model's chat template rejected the conversation: {exc}"
            ) from None

    def render(self, messages: Sequence[ChatMessage]) -> str:
        return "".join(text for text, _ in self.segments(messages))

    def _render(self, messages: list[ChatMessage]) -> list[Segment]:
        rendered = self._template.render(
            messages=[
                {"role": m.role, "content": f"\ue000{i}\ue001"} for i, m in enumerate(messages)
            ],
            add_generation_prompt=True,
            **self._extra,
        )
        segments: list[Segment] = []
        last = 0
        for match in _PLACEHOLDER.finditer(rendered):
            if match.start() > last:
                segments.append((rendered[last : match.start()], False))
            content = messages[int(match.group(1))].content
            if content:
                segments.append((content, True))
            last = match.end()
        if last < len(rendered):
            segments.append((rendered[last:], False))
        return segments


def _fold_system(messages: list[ChatMessage]) -> list[ChatMessage]:
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    rest = [m for m in messages if m.role != "system"]
    if system and rest and rest[0].role == "user":
        rest[0] = ChatMessage("user", f"{system}\n\n{rest[0].content}")
    elif system:
        rest.insert(0, ChatMessage("user", system))
    return rest
