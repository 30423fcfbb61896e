"""Markdown -> Slack mrkdwn for final answers, and a user's mrkdwn -> plain question text."""

from __future__ import annotations

import pytest

from adapters.slack.render import escape, mentions, to_mrkdwn, to_plain
from tests.fakes.slack_api import shown


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("plain words", "plain words"),
        ("**bold** and __bold__", "*bold* and *bold*"),
        ("*it* and _it_", "_it_ and _it_"),
        ("~~gone~~", "~gone~"),
        ("`x < y && z`", "`x &lt; y &amp;&amp; z`"),
        ("a & b < c > d", "a &amp; b &lt; c &gt; d"),
        ("[docs](https://example.com/a?b=1&c=2)", "<https://example.com/a?b=1&amp;c=2|docs>"),
        ("<https://example.com>", "<https://example.com>"),
        ("[rel](/local/path)", "rel"),
        ("# Title\n\ntext", "*Title*\n\ntext"),
        ("- one\n- two", "• one\n• two"),
        ("3. three\n4. four", "3. three\n4. four"),
        ("- a\n  - nested", "• a\n  • nested"),
        ("> quoted\n> more", "> quoted\n> more"),
        ("line one\nline two", "line one\nline two"),
        ("para one\n\npara two", "para one\n\npara two"),
        ("***", "──────────"),
        ("<b>html</b> stays text", "&lt;b&gt;html&lt;/b&gt; stays text"),
        ("![chart](https://x.io/c.png)", "<https://x.io/c.png|chart>"),
    ],
)
def test_markdown_to_mrkdwn(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_code_blocks_keep_their_text_and_lose_the_language() -> None:
    markdown = "Run:\n\n```python\nif a < b and c > d:\n    print('**not bold**')\n```\nDone."
    assert to_mrkdwn(markdown) == (
        "Run:\n\n```\nif a &lt; b and c &gt; d:\n    print('**not bold**')\n```\n\nDone."
    )


def test_an_unclosed_code_block_is_still_closed() -> None:
    assert to_mrkdwn("```\nhalf written") == "```\nhalf written\n```"


def test_a_numbered_list_with_paragraphs() -> None:
    markdown = "1. First\n\n   More about it.\n\n2. Second"
    assert to_mrkdwn(markdown) == "1. First\n\n   More about it.\n\n2. Second"


def test_tables_become_aligned_monospace() -> None:
    markdown = "| name | n |\n|---|---|\n| a<b | 10 |\n| cc | 2 |"
    assert to_mrkdwn(markdown) == ("```\nname | n\n-----+---\na&lt;b  | 10\ncc   | 2\n```")


def test_escape_only_touches_the_three_control_characters() -> None:
    assert escape("**a** <b> & c") == "**a** &lt;b&gt; &amp; c"


@pytest.mark.parametrize(
    ("mrkdwn", "plain"),
    [
        ("<@U0BOT> what is 2 &lt; 3?", "what is 2 < 3?"),
        ("hey <@U0BOT|edgeqa> look", "hey look"),
        ("<@U0BOT>\n```x = 1```", "```x = 1```"),
        ("ask <@U0BOB> about <#C0DEV|dev>", "ask @U0BOB about #dev"),
        (
            "see <https://a.io/x|the page> and <https://b.io>",
            "see the page (https://a.io/x) and https://b.io",
        ),
        ("mail <mailto:a@b.io|a@b.io>", "mail a@b.io"),
        ("<!here> anyone? A &amp; B", "@here anyone? A & B"),
        ("<@U0BOT>", ""),
    ],
)
def test_incoming_text(mrkdwn: str, plain: str) -> None:
    assert to_plain(mrkdwn, "U0BOT") == plain


def test_mentions() -> None:
    assert mentions("hi <@U0BOT>", "U0BOT")
    assert mentions("hi <@U0BOT|edgeqa>", "U0BOT")
    assert not mentions("hi <@U0BOTX>", "U0BOT")
    assert not mentions("hi @U0BOT", "U0BOT")


@pytest.mark.parametrize(
    ("markdown", "seen", "styles"),
    [
        ("2*3*4 = 24", "2*3*4 = 24", []),  # CommonMark: emphasis; Slack: no style in a word
        ("a_b_c and snake_case", "a_b_c and snake_case", []),
        ("\\*not bold\\* and \\_not italic\\_", "*not bold* and _not italic_", []),
        ("5 * 3 * 2 and ~ tilde ~", "5 * 3 * 2 and ~ tilde ~", []),
        ("中文*强调*中文", "中文*强调*中文", []),
        (
            "**bold**, *it* and ~~gone~~",
            "bold, it and gone",
            [("bold", "bold"), ("italic", "it"), ("strike", "gone")],
        ),
        ("**Note:** `a*b*c`", "Note: a*b*c", [("bold", "Note:"), ("code", "a*b*c")]),
    ],
)
def test_rendering_changes_style_never_the_characters_seen(
    markdown: str, seen: str, styles: list[tuple[str, str]]
) -> None:
    """Read back as Slack shows it (tests/fakes/slack_api.shown)."""
    assert shown(to_mrkdwn(markdown)) == (seen, styles)


def test_sources_footer_links_web_documents_and_escapes_titles() -> None:
    from adapters.slack.render import sources_footer
    from bot.types import Source

    footer = sources_footer(
        [
            Source(1, "R&D <secret> | plans", "rd.md", "https://wiki.example/rd?a=1&b=|2"),
            Source(3, "Local notes", "notes/a.md"),
            Source(4, "Script", "x.md", "javascript:alert(1)"),
        ]
    )
    assert footer == (
        "📚 [1] <https://wiki.example/rd?a=1&amp;b=%7C2|R&amp;D &lt;secret&gt; ¦ plans>"
        " · [3] Local notes · [4] Script"
    )
    assert sources_footer([]) == ""
