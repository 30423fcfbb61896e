"""Logging that cannot leak secrets.

Tokens travel in URLs (Telegram's bot API puts the token in every request path) and some
libraries log request URLs at INFO. A filter on the root handler replaces every configured
secret with "***" whatever logger produced the line, and chatty HTTP loggers are quietened.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from bot.config import SECRET_ENV, Settings

QUIET = (
    "httpx",
    "httpcore",
    "aiohttp.access",
    "apscheduler",
    "slack_bolt",
    "slack_sdk",
    "telegram",
)


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = message
        for secret in self._secrets:
            redacted = redacted.replace(secret, "***")
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def secrets_of(settings: Settings) -> list[str]:
    values = []
    for name in SECRET_ENV:
        secret = getattr(settings, name)
        if secret is not None:
            values.append(secret.get_secret_value())
    return values


def setup_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log.level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets_of(settings)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
