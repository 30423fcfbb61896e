"""Build the message catalogs: check every `.po`, then compile it to the `.mo` gettext reads.

`python -m bot.catalogs` (run by `make catalogs`, and by the wheel build in setup.py) stops
with the file, line and message of every translation that would fail or mislead when shown:
a placeholder renamed, dropped or added (Babel's python-format checker plus a stricter one
of ours, since Babel lets a translation drop a named placeholder), a plural form missing. So
a broken catalog fails the build, not a user's message. The `.mo` files are build output
(git-ignored), written next to their `.po` or under `--into`.

This module needs only Babel and the standard library: setup.py imports it before the rest
of the project's dependencies exist.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from babel.messages.catalog import Catalog, Message
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

DOMAIN = "edgeqa"
LOCALES_DIR = Path(__file__).resolve().parent / "locales"
PLACEHOLDER = re.compile(r"%\((\w+)\)")


@dataclass(frozen=True, slots=True)
class Problem:
    path: Path
    line: int | None
    message: str
    error: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message!r}: {self.error}"


def catalog_files(directory: Path = LOCALES_DIR) -> list[tuple[str, Path]]:
    """(language, .po path) for every catalog under `directory`."""
    return sorted(
        (po.parent.parent.name, po) for po in directory.glob(f"*/LC_MESSAGES/{DOMAIN}.po")
    )


def read_catalog(po: Path, language: str) -> Catalog:
    with po.open("rb") as file:
        return read_po(file, locale=language)


def names(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def problems(catalog: Catalog, po: Path) -> Iterator[Problem]:
    """Everything that would make a translated text fail or lie when formatted."""
    for message, errors in catalog.check():
        for error in errors:
            yield Problem(po, message.lineno, _msgid(message), str(error))
    plural_count = catalog.num_plurals
    for message in catalog:
        if not message.id or not message.string:
            continue
        yield from _placeholder_problems(message, po, plural_count)


def _placeholder_problems(message: Message, po: Path, plural_count: int) -> Iterator[Problem]:
    msgid = _msgid(message)
    if not message.pluralizable:
        assert isinstance(message.string, str)
        if names(message.string) != names(msgid):
            yield _mismatch(po, message, msgid, names(msgid), names(message.string))
        return
    singular, plural = message.id[0], message.id[1]
    forms = _forms(message)
    if not any(forms):
        return  # not translated: shown in English
    if len(forms) != plural_count or not all(forms):
        yield Problem(po, message.lineno, msgid, f"needs {plural_count} plural forms")
        return
    for index, form in enumerate(forms):
        wanted = names(plural)
        # With several forms the first serves n == 1 and may leave the number out, as the
        # English singular does ("one earlier question").
        allowed = {frozenset(wanted)}
        if plural_count > 1 and index == 0:
            allowed |= {frozenset(names(singular)), frozenset(wanted - {"n"})}
        if frozenset(names(form)) not in allowed:
            yield _mismatch(po, message, msgid, wanted, names(form))


def _mismatch(po: Path, message: Message, msgid: str, want: set[str], got: set[str]) -> Problem:
    detail = []
    if want - got:
        detail.append("missing " + ", ".join(f"%({n})" for n in sorted(want - got)))
    if got - want:
        detail.append("unknown " + ", ".join(f"%({n})" for n in sorted(got - want)))
    return Problem(po, message.lineno, msgid, "placeholders differ: " + "; ".join(detail))


def _forms(message: Message) -> list[str]:
    string = message.string
    if isinstance(string, str) or string is None:
        return [string or ""]
    return [form or "" for form in string]


def _msgid(message: Message) -> str:
    return message.id if isinstance(message.id, str) else message.id[0]


def untranslated(catalog: Catalog) -> list[str]:
    """Messages a user would see in English (not translated, or marked fuzzy)."""
    return [_msgid(m) for m in catalog if m.id and (m.fuzzy or not all(_forms(m)))]


def compile_all(directory: Path = LOCALES_DIR, into: Path | None = None) -> list[Problem]:
    """Check every catalog and compile the sound ones. Returns the problems found (a
    catalog with problems is not compiled, so an old `.mo` is not mistaken for it)."""
    found: list[Problem] = []
    for language, po in catalog_files(directory):
        catalog = read_catalog(po, language)
        trouble = list(problems(catalog, po))
        found += trouble
        if trouble:
            continue
        mo = po.with_suffix(".mo")
        if into is not None:
            mo = into / po.relative_to(directory).with_suffix(".mo")
            mo.parent.mkdir(parents=True, exist_ok=True)
        with mo.open("wb") as file:
            write_mo(file, catalog)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.catalogs", description=__doc__)
    parser.add_argument("--locales", type=Path, default=LOCALES_DIR, help="the catalogs' folder")
    parser.add_argument("--into", type=Path, help="write the .mo files under this folder")
    args = parser.parse_args(argv)
    found = compile_all(args.locales, args.into)
    for problem in found:
        print(f"error: {problem}", file=sys.stderr)
    for language, po in catalog_files(args.locales):
        left = untranslated(read_catalog(po, language))
        if left and language != "en":
            print(f"warning: {po}: {len(left)} messages untranslated: {left[:3]}", file=sys.stderr)
    if found:
        print(f"{len(found)} broken translations: catalogs not compiled", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
