"""One rule for odd characters, whether the bot reads a question or storage writes it."""

from bot.text import clean_text, storable


def test_a_question_and_its_stored_copy_follow_the_same_surrogate_rule():
    typed = "ok \ud83d\ude00 and \ud83d alone\x00"
    assert storable(typed) == "ok \U0001f600 and \ufffd alone"
    assert clean_text(typed) == storable(typed)


def test_input_loses_controls_but_keeps_what_a_reader_sees():
    assert clean_text("a\tb\r\nc\x1b[31m\x7f") == "a\tb\nc[31m"
    assert clean_text("שלום \u202e 👩‍👩‍👧 中文\u200b") == "שלום \u202e 👩‍👩‍👧 中文\u200b"


def test_storage_keeps_everything_it_can_hold():
    kept = "a\tb\r\n\x1b[31m"
    assert storable(kept) is kept
