"""Each Slack user's language, for the bot's own texts: users.info with include_locale.

Slack sends no language with events or slash commands; users.info returns the user's
locale ("zh-CN", "en-US") when asked with include_locale=true, and needs the `users:read`
bot scope. Without that scope (an app installed before it was added to the manifest)
Slack answers `missing_scope`: we say so once and stop asking, and the bot speaks English
(or `bot.language`). A locale is kept for an hour per user, so a conversation costs one
call; a slow or failing lookup never holds an answer up for more than LOOKUP_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.shared import BoundedMap

log = logging.getLogger(__name__)

SCOPE = "users:read"
KEEP_FOR = 3600.0  # seconds a user's locale is reused
RETRY_AFTER = 300.0  # seconds before asking again about a user whose lookup failed
LOOKUP_TIMEOUT = 3.0
SIZE = 10_000
# Errors that mean no user's locale can be read with this token: stop asking.
NO_ACCESS = {"missing_scope", "not_allowed_token_type", "no_permission", "ekm_access_denied"}


class UserLocales:
    def __init__(self, client: AsyncWebClient, clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._clock = clock
        self._known: BoundedMap[str, tuple[str, float]] = BoundedMap(SIZE)  # user->(locale, until)
        self.available = True  # False once Slack said the token may not read users

    async def of(self, user: str) -> str:
        """The user's locale, e.g. "zh-CN"; "" when unknown."""
        if not user or not self.available:
            return ""
        now = self._clock()
        known = self._known.get(user)
        if known is not None and known[1] > now:
            return known[0]
        locale, keep = await self._lookup(user)
        if keep:
            self._known.put(user, (locale, now + keep))
        return locale

    async def _lookup(self, user: str) -> tuple[str, float]:
        """(locale, seconds to keep it); 0 seconds: do not keep."""
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                response = await self._client.users_info(user=user, include_locale=True)
        except SlackApiError as exc:
            data = exc.response.data  # a str when Slack (or a proxy) sent no JSON
            error = str(data.get("error", "")) if isinstance(data, dict) else ""
            error = error or f"HTTP {exc.response.status_code}"
            if error in NO_ACCESS:
                self.available = False
                log.warning(
                    "slack: users.info refused (%s): add the %s scope to the app and "
                    "reinstall it to answer each user in their language; English until then",
                    error,
                    SCOPE,
                )
                return "", 0.0
            log.info("slack: no locale for user %s (%s)", user, error)
            return "", RETRY_AFTER
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.info("slack: locale lookup for %s failed: %s", user, type(exc).__name__)
            return "", 0.0
        info = response.get("user")
        locale = info.get("locale", "") if isinstance(info, dict) else ""
        return (locale if isinstance(locale, str) else ""), KEEP_FOR
