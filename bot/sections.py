"""The building blocks of every settings section, the core's and the adapters'.

Kept apart from `bot.config` so an adapter's own section model (`adapters.telegram.config`,
`adapters.slack.config`) can use them while `bot.config` assembles those sections into
`Settings`, without a circular import.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_settings import NoDecode

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> Any:
    """ "90s", "5m", "24h", "1d" or a plain number of seconds -> seconds (float)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 5m, 24h)")
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return value


def _ids(value: Any) -> Any:
    """Allow-lists accept numbers (Telegram ids) and strings alike; compare as strings."""
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return [str(item).strip() for item in value]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]
IdList = Annotated[list[str], NoDecode, BeforeValidator(_ids)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccessSettings(Section):
    """Who may talk to the bot on one platform. Empty allow-lists allow everyone."""

    allowed_users: IdList = []
    allowed_chats: IdList = []
    admins: IdList = []
