"""The bot's own texts in its users' languages: gettext catalogs, one language per message.

Every text the bot writes itself (queue lines, refusals, help, the browser page) is an
English msgid marked for Babel's extractor (`texts.gettext(...)`, `texts.ngettext(...)`,
`N_(...)` for texts defined before a language is known); the catalogs in `bot/locales/`
translate them. `make catalogs` compiles the `.po` files to `.mo` (checked: a broken
placeholder stops the build, see `bot.catalogs`). Should a `.mo` be missing or older than
its `.po` (a clone run without make), the `.po` is compiled here in memory instead, so the
bot never falls back to English just because a build step was skipped.

The language of a reply is chosen per message from what the platform says about its user
(`IncomingMessage.language`: Telegram's language_code, Slack's user locale, the browser's
Accept-Language); `bot.language` set to a language overrides that for everyone; anything
without a catalog gets English, the language the msgids are written in.
"""

from __future__ import annotations

import functools
import gettext
import io
import logging
import re
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

DOMAIN = "edgeqa"
LOCALES_DIR = Path(__file__).resolve().parent / "locales"
SOURCE_LANGUAGE = "en"
AUTO = "auto"

# "%(name)s" placeholders, as Babel's python-format checker reads them.
PLACEHOLDER = re.compile(r"%\((\w+)\)[#0 +-]*\d*(?:\.\d+)?[sdifr]")


def N_(message: str) -> str:
    """Mark `message` for extraction without translating it (it is translated where shown)."""
    return message


@functools.cache
def available_languages(directory: Path = LOCALES_DIR) -> tuple[str, ...]:
    """The languages with a catalog, English first (it needs none: the msgids are English)."""
    found = {
        path.parent.parent.name
        for pattern in (f"*/LC_MESSAGES/{DOMAIN}.po", f"*/LC_MESSAGES/{DOMAIN}.mo")
        for path in directory.glob(pattern)
    }
    return (SOURCE_LANGUAGE, *sorted(found - {SOURCE_LANGUAGE}))


def primary_subtag(tag: str) -> str:
    """ "zh-Hans-CN", "zh_CN", "ZH" -> "zh" (RFC 4647 lookup falls back to the language)."""
    return tag.strip().replace("_", "-").split("-", 1)[0].lower()


def parse_accept_language(header: str) -> list[str]:
    """The language tags of an Accept-Language header, most wanted first ("*" and q=0 left
    out). aiohttp has no parser for it and the grammar is a comma list with q-values, so a
    dependency for it would be larger than this; garbage gives fewer tags, never an error."""
    weighted: list[tuple[float, int, str]] = []
    for index, part in enumerate(header[:1000].split(",")):
        tag, _, params = part.partition(";")
        tag = tag.strip()
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if tag and tag != "*" and quality > 0 and re.fullmatch(r"[A-Za-z0-9_-]{1,35}", tag):
            weighted.append((-quality, index, tag))
    return [tag for _, _, tag in sorted(weighted)]


class Texts:
    """One language's texts. The method names are Babel's default extraction keywords."""

    def __init__(self, language: str, translations: gettext.NullTranslations) -> None:
        self.language = language
        self._translations = translations
        self._warned: set[str] = set()

    def gettext(self, message: str, /, **values: object) -> str:
        return self._format(message, self._translations.gettext(message), values)

    def ngettext(self, singular: str, plural: str, n: int, /, **values: object) -> str:
        """The form for `n` (English: singular for 1; Chinese: one form); `n` is a value."""
        values.setdefault("n", n)
        chosen = self._translations.ngettext(singular, plural, n)
        return self._format(singular if n == 1 else plural, chosen, values)

    def plural_forms(self, singular: str, plural: str) -> dict[str, str]:
        """The message's forms keyed by CLDR plural category ("one", "few", "other"...), for
        a browser choosing with Intl.PluralRules: each category's form is the one gettext's
        Plural-Forms rule picks for the first whole number in that category."""
        from babel.core import Locale  # Babel is only needed for the page

        rule = Locale.parse(self.language).plural_form
        forms: dict[str, str] = {}
        for n in range(200):
            forms.setdefault(rule(n), self._translations.ngettext(singular, plural, n))
        return forms

    def _format(self, source: str, translated: str, values: dict[str, object]) -> str:
        if not values:
            return translated
        try:
            return translated % values
        except (KeyError, ValueError, TypeError) as exc:
            # `make catalogs` refuses such a catalog; one built some other way must still
            # not cost the user their reply: say it in English instead.
            if source not in self._warned:
                self._warned.add(source)
                log.error(
                    "broken %s translation of %r (%s); using English", self.language, source, exc
                )
            return source % values


@functools.cache
def _load(language: str, directory: Path) -> gettext.NullTranslations:
    folder = directory / language / "LC_MESSAGES"
    po, mo = folder / f"{DOMAIN}.po", folder / f"{DOMAIN}.mo"
    if mo.exists() and (not po.exists() or mo.stat().st_mtime >= po.stat().st_mtime):
        with mo.open("rb") as file:
            return gettext.GNUTranslations(file)
    if po.exists():
        log.info("%s has no up-to-date .mo (run `make catalogs`); compiled it in memory", po)
        return compile_in_memory(po, language)
    return gettext.NullTranslations()


def compile_in_memory(po: Path, language: str) -> gettext.NullTranslations:
    """The `.po` as gettext reads a `.mo`, leaving out (and logging) entries whose
    placeholders do not match: those stay English rather than fail when formatted."""
    from babel.messages.mofile import write_mo  # Babel is only needed on this path
    from babel.messages.pofile import read_po

    with po.open("rb") as file:
        catalog = read_po(file, locale=language)
    for message, errors in list(catalog.check()):
        log.error("%s: %r left in English: %s", po, message.id, "; ".join(map(str, errors)))
        del catalog[message.id]
    buffer = io.BytesIO()
    write_mo(buffer, catalog)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


class Catalogs:
    """Picks the language of each reply. `forced` is `bot.language` ("auto" or a language)."""

    def __init__(self, forced: str = AUTO, directory: Path = LOCALES_DIR) -> None:
        self.directory = directory
        self.languages = available_languages(directory)
        self.forced = forced if forced in self.languages else AUTO

    def choose(self, tags: Iterable[str]) -> str:
        """The first of the user's languages (most wanted first) that has a catalog."""
        if self.forced != AUTO:
            return self.forced
        for tag in tags:
            language = primary_subtag(tag)
            if language in self.languages:
                return language
        return SOURCE_LANGUAGE

    def texts(self, language: str) -> Texts:
        if language not in self.languages:
            language = SOURCE_LANGUAGE
        return _texts(language, self.directory)

    def for_tag(self, tag: str) -> Texts:
        """The texts for a user whose platform reports language `tag` ("" if unknown)."""
        return self.texts(self.choose([tag] if tag else []))

    def for_header(self, accept_language: str) -> Texts:
        """The texts for a browser sending this Accept-Language header."""
        return self.texts(self.choose(parse_accept_language(accept_language)))


@functools.cache
def _texts(language: str, directory: Path) -> Texts:
    if language == SOURCE_LANGUAGE and not (directory / language).exists():
        return Texts(language, gettext.NullTranslations())
    return Texts(language, _load(language, directory))


def english() -> Texts:
    """The source texts, for places that have no user to ask (logs, start-up errors)."""
    return Catalogs(SOURCE_LANGUAGE).texts(SOURCE_LANGUAGE)
