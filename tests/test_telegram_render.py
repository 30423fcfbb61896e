"""Markdown -> Telegram HTML: what a user sees in the final answer, and what Telegram accepts.

Every rendered text is also fed to the fake server's HTML parser, which refuses what
Telegram refuses (unknown tags, unbalanced tags, a raw "<" or "&").
"""

from __future__ import annotations

import pytest

from adapters.telegram.render import escape, render, visible_text
from tests.fakes.telegram_api import ApiError, parse_html


def accepted(markdown: str) -> str:
    html = render(markdown)
    parse_html(html)  # raises like Telegram would
    return html


def test_fenced_code_keeps_language_and_escapes() -> None:
    html = accepted("Try:\n\n```python\nif a < b and c > d & e:\n    print('**no bold**')\n```")
    assert html == (
        "Try:\n\n"
        '<pre><code class="language-python">if a &lt; b and c &gt; d &amp; e:\n'
        "    print('**no bold**')</code></pre>"
    )


def test_code_without_language_and_indented_code() -> None:
    assert accepted("```\nx = 1\n```") == "<pre>x = 1</pre>"
    assert accepted("para\n\n    indented <code>") == "para\n\n<pre>indented &lt;code&gt;</pre>"


def test_inline_code_bold_italics_strike() -> None:
    html = accepted("Use `a<b>` with **bold**, *it*, _it2_ and ~~gone~~.")
    assert html == (
        "Use <code>a&lt;b&gt;</code> with <b>bold</b>, <i>it</i>, <i>it2</i> and <s>gone</s>."
    )


def test_links_are_escaped_in_href_and_text() -> None:
    html = accepted('See [the <docs>](https://example.com/a?x=1&y="2") now')
    assert html == 'See <a href="https://example.com/a?x=1&amp;y=%222%22">the &lt;docs&gt;</a> now'
    assert visible_text(html) == "See the <docs> now"


def test_unsafe_link_schemes_stay_text() -> None:
    html = accepted("[click](javascript:alert(1))")
    assert "<a" not in html
    assert "click" in visible_text(html)


def test_lists_become_lines_with_bullets_and_numbers() -> None:
    html = accepted("Steps:\n\n1. first **one**\n2. second\n   - nested\n\n- a\n- b\n\nEnd.")
    assert html == ("Steps:\n\n1. first <b>one</b>\n2. second\n  • nested\n\n• a\n• b\n\nEnd.")


def test_ordered_list_keeps_its_start_number() -> None:
    assert accepted("3. three\n4. four") == "3. three\n4. four"


def test_headings_quotes_rules() -> None:
    html = accepted("# Title\n\n> quoted *text*\n\n---\n\nafter")
    assert html == "<b>Title</b>\n\n<blockquote>quoted <i>text</i></blockquote>\n\n———\n\nafter"


def test_plain_text_is_only_escaped() -> None:
    text = "1 < 2 && 3 > 2, \"quotes\" and 'apostrophes' stay"
    assert accepted(text) == escape(text)
    assert visible_text(render(text)) == text


@pytest.mark.parametrize(
    "markdown",
    [
        "**bold without end",
        "*half",
        "`unclosed code",
        "[link](",
        "```\nunclosed fence <b>",
        "<b>raw html</b> & <script>x</script>",
        "~~strike",
        "__**mixed*_ up",
    ],
)
def test_unbalanced_or_raw_markup_is_always_valid_html(markdown: str) -> None:
    html = accepted(markdown)
    # Nothing the user wrote is lost: every word is still visible.
    for word in markdown.replace("<", " ").replace(">", " ").split():
        stripped = word.strip("*_`[]()~#/")
        if stripped.isalpha():
            assert stripped in visible_text(html)


def test_raw_html_from_the_model_is_shown_not_interpreted() -> None:
    html = accepted("<b>not bold</b>")
    assert html == "&lt;b&gt;not bold&lt;/b&gt;"


def test_table_is_kept_as_preformatted_text() -> None:
    html = accepted("| a | b |\n|---|---|\n| 1 | <2> |")
    assert html == "<pre>| a | b |\n|---|---|\n| 1 | &lt;2&gt; |</pre>"


def test_the_fake_refuses_what_telegram_refuses() -> None:
    for bad in ("<b>open", "a < b", "x & y", "<div>no</div>", "<b><i>x</b></i>"):
        with pytest.raises(ApiError, match="can't parse entities"):
            parse_html(bad)


def test_sources_footer_links_only_web_documents_escaped() -> None:
    from adapters.telegram.render import plain_sources, sources_footer
    from bot.types import Source

    sources = [
        Source(1, "R&D <b>plans</b>", "rd.md", 'https://wiki.example/rd?a=1&b="2"'),
        Source(2, "差旅政策", "政策/差旅.md"),
        Source(3, "Chat", "x.md", "tg://user?id=1"),
    ]
    assert sources_footer(sources) == (
        '📚 [1] <a href="https://wiki.example/rd?a=1&amp;b=&quot;2&quot;">'
        "R&amp;D &lt;b&gt;plans&lt;/b&gt;</a> · [2] 差旅政策 · [3] Chat"
    )
    assert plain_sources(sources[:2]) == (
        '📚 [1] R&D <b>plans</b> (https://wiki.example/rd?a=1&b="2") · [2] 差旅政策'
    )
