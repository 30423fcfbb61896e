"""The bot's own texts in English and Simplified Chinese: the catalogs, the build, the choice.

The message keys are taken from the code the way `make messages` takes them (Babel's
extractors over babel.cfg), so a text added to the code without being put into the
catalogs fails here, and so does a translation that would break when formatted.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg

from bot.catalogs import catalog_files, compile_all, problems, read_catalog, untranslated
from bot.config import ConfigError, load_settings
from bot.i18n import LOCALES_DIR, Catalogs, available_languages, parse_accept_language

ROOT = Path(__file__).resolve().parent.parent
COUNTS = (0, 1, 2, 5)


def source_messages() -> dict[str, str | None]:
    """msgid -> plural msgid (None for a plain text) of every text in the code and page."""
    with (ROOT / "babel.cfg").open() as file:
        method_map, options_map = parse_mapping_cfg(file)
    found: dict[str, str | None] = {}
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(ROOT), method_map, options_map, keywords=DEFAULT_KEYWORDS
    ):
        if isinstance(message, str):
            found.setdefault(message, None)
        elif message[0]:
            found[message[0]] = message[1]
    return found


def sample_values(msgid: str) -> dict[str, object]:
    """A value for every placeholder: numbers for %d/%f, words for %s."""
    values: dict[str, object] = {}
    for name, kind in re.findall(r"%\((\w+)\)[#0 +-]*\d*(?:\.\d+)?([sdifr])", msgid):
        values[name] = 7 if kind in "dif" else f"<{name}>"
    return values


def test_the_code_has_texts_to_translate() -> None:
    messages = source_messages()
    # The kinds of text the issue names: queue, refusal, forget, help, the page.
    for msgid in (
        "⏳ Queued (position %(position)d) — I'll answer here.",
        "Sorry, %(command)s is for admins only.",
        "Done — I've forgotten this thread (%(n)d earlier question).",
        "Ask me anything in this thread and I'll answer here. Commands:",
        "New thread",
        "Ask a question, or type /help",
        "waiting in queue, position %(position)s",
    ):
        assert msgid in messages, msgid


def test_english_and_chinese_are_shipped() -> None:
    assert available_languages() == ("en", "zh")


@pytest.mark.parametrize("language", available_languages())
def test_every_text_is_in_the_catalog_and_formats(language: str) -> None:
    messages = source_messages()
    [po] = [path for lang, path in catalog_files() if lang == language]
    catalog = read_catalog(po, language)
    assert list(problems(catalog, po)) == []
    missing = [msgid for msgid in messages if catalog.get(msgid) is None]
    assert missing == [], f"run `make messages` and translate: {missing}"
    if language != "en":
        assert untranslated(catalog) == []

    texts = Catalogs().texts(language)
    for msgid, plural in messages.items():
        values = sample_values(plural or msgid)
        if plural is None:
            shown = texts.gettext(msgid, **values)
            assert "%(" not in shown, (msgid, shown)
            for value in values.values():
                assert str(value) in shown, (msgid, shown)
            continue
        for n in COUNTS:
            shown = texts.ngettext(msgid, plural, n, **{**values, "n": n})
            assert "%(" not in shown, (msgid, n, shown)
            assert str(n) in shown, (msgid, n, shown)
            if language == "en":
                assert shown == (msgid if n == 1 else plural) % {**values, "n": n}


def test_plurals_read_right_in_both_languages() -> None:
    one = "Done — I've forgotten this thread (%(n)d earlier question)."
    many = "Done — I've forgotten this thread (%(n)d earlier questions)."
    english, chinese = Catalogs().texts("en"), Catalogs().texts("zh")
    assert [english.ngettext(one, many, n) for n in (0, 1, 3)] == [
        "Done — I've forgotten this thread (0 earlier questions).",
        "Done — I've forgotten this thread (1 earlier question).",
        "Done — I've forgotten this thread (3 earlier questions).",
    ]
    assert chinese.ngettext(one, many, 1) == "好了——我已忘掉这个对话（之前的 1 个问题）。"
    assert chinese.ngettext(one, many, 3) == "好了——我已忘掉这个对话（之前的 3 个问题）。"


def copy_locales(tmp_path: Path) -> Path:
    target = tmp_path / "locales"
    shutil.copytree(LOCALES_DIR, target, ignore=shutil.ignore_patterns("*.mo"))
    return target


def break_translation(locales: Path, old: str, new: str) -> Path:
    po = locales / "zh" / "LC_MESSAGES" / "edgeqa.po"
    text = po.read_text(encoding="utf-8")
    assert old in text
    po.write_text(text.replace(old, new, 1), encoding="utf-8")
    return po


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ("（第 %(position)d 位）", "（第 %(postion)d 位）", "unknown %(postion)"),  # misspelt
        ("（第 %(position)d 位）", "（第几位）", "missing %(position)"),  # dropped
        ("（第 %(position)d 位）", "（第 %(position)s 位）", ""),  # %d became %s
    ],
)
def test_a_broken_placeholder_fails_the_build(
    tmp_path: Path, old: str, new: str, says: str
) -> None:
    locales = copy_locales(tmp_path)
    po = break_translation(locales, old, new)
    build = subprocess.run(
        [sys.executable, "-m", "bot.catalogs", "--locales", str(locales)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 1
    assert f"{po}:" in build.stderr and "Queued (position" in build.stderr
    assert says in build.stderr
    assert not po.with_suffix(".mo").exists()  # the broken catalog was not compiled
    assert (locales / "en" / "LC_MESSAGES" / "edgeqa.mo").exists()


def test_the_build_compiles_every_catalog_for_gettext(tmp_path: Path) -> None:
    locales = copy_locales(tmp_path)
    assert compile_all(locales) == []
    catalogs = Catalogs(directory=locales)
    assert catalogs.languages == ("en", "zh")
    assert catalogs.texts("zh").gettext("Stopped.") == "已停止。"


def test_without_compiled_catalogs_the_bot_still_speaks_chinese(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A clone run without `make catalogs` (no .mo): the .po is compiled in memory."""
    caplog.set_level(logging.INFO, "bot.i18n")
    locales = copy_locales(tmp_path)
    texts = Catalogs(directory=locales).texts("zh")
    assert texts.gettext("Stopped.") == "已停止。"
    assert "run `make catalogs`" in caplog.text


def test_a_broken_catalog_built_some_other_way_costs_no_reply(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Never compiled by make (so never checked): the broken entry is English, the rest
    Chinese, and formatting never raises."""
    locales = copy_locales(tmp_path)
    break_translation(locales, "（第 %(position)d 位）", "（第 %(postion)d 位）")
    texts = Catalogs(directory=locales).texts("zh")
    queued = "⏳ Queued (position %(position)d) — I'll answer here."
    assert texts.gettext(queued, position=2) == "⏳ Queued (position 2) — I'll answer here."
    assert texts.gettext("Stopped.") == "已停止。"
    assert "left in English" in caplog.text


@pytest.mark.parametrize(
    ("tag", "language"),
    [
        ("zh-hans", "zh"),  # Telegram
        ("zh-CN", "zh"),  # Slack, browsers
        ("zh_TW", "zh"),  # Traditional readers get Simplified rather than English
        ("ZH", "zh"),
        ("en-US", "en"),
        ("fr", "en"),  # no catalog: English
        ("", "en"),
        ("\x00garbage", "en"),
    ],
)
def test_each_users_language_is_chosen_or_english(tag: str, language: str) -> None:
    assert Catalogs().for_tag(tag).language == language


def test_bot_language_overrides_every_user() -> None:
    assert Catalogs("zh").for_tag("en-US").language == "zh"
    assert Catalogs("en").for_tag("zh-CN").language == "en"
    assert Catalogs("en").for_header("zh-CN,zh;q=0.9").language == "en"


def test_bot_language_must_have_a_catalog(tmp_path: Path) -> None:
    config = tmp_path / "edgeqa.toml"
    config.write_text('[bot]\nlanguage = "zh"\n')
    assert load_settings(config, env={}).bot.language == "zh"
    config.write_text('[bot]\nlanguage = "klingon"\n')
    with pytest.raises(ConfigError, match=r"bot.language .*auto or one of: en, zh"):
        load_settings(config, env={})


@pytest.mark.parametrize(
    ("header", "tags"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", ["zh-CN", "zh", "en"]),
        ("en;q=0.5, zh-CN", ["zh-CN", "en"]),
        ("fr-CH, fr;q=0.9, *;q=0.5", ["fr-CH", "fr"]),
        ("zh;q=0, en", ["en"]),
        ("", []),
        (";;;,,,q=", []),
        ("zh;q=abc, en", ["en"]),
        ("<script>", []),
    ],
)
def test_accept_language_is_read_by_preference(header: str, tags: list[str]) -> None:
    assert parse_accept_language(header) == tags


def test_a_browser_preferring_an_unknown_language_gets_its_next_choice() -> None:
    assert Catalogs().for_header("fr-FR, zh-CN;q=0.8, en;q=0.5").language == "zh"
    assert Catalogs().for_header("fr-FR").language == "en"
