"""StreamFlusher: cadence, dedupe, splitting, backoff, final delivery — against a recording
adapter, since the flusher's contract is about which sends/edits happen and when.

Every test runs on a fast-forwarded event loop (looptime): the flusher reads the loop's clock
and waits on it, so "an edit every 0.1 s" and "wait out a 0.3 s Retry-After" are exact and
instant, whatever the machine's speed or load."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from adapters.base import AdapterLimits, PlatformError, RateLimited, Refused
from bot.flusher import DeliveryFailed, StreamFlusher, split_point
from bot.types import ConversationKey, Source
from tests.doubles import RecordingAdapter
from tests.harness import eventually

pytestmark = pytest.mark.looptime

KEY = ConversationKey("test", "", "chat", "thread")


def adapter(max_len: int = 4000, interval: float = 0.05) -> RecordingAdapter:
    return RecordingAdapter(limits=AdapterLimits(max_len, interval))


async def stream(flusher: StreamFlusher, pieces: list[str], delay: float) -> None:
    flusher.start()
    for piece in pieces:
        flusher.feed(piece)
        await asyncio.sleep(delay)


def words(n: int) -> list[str]:
    return [f"word{i} " for i in range(n)]


async def test_first_text_goes_out_then_edits_keep_the_cadence() -> None:
    chat = adapter(interval=0.1)
    flusher = StreamFlusher(chat, KEY)
    pieces = words(60)
    await stream(flusher, pieces, 0.01)
    await flusher.finish("".join(pieces))

    writes = chat.writes()
    assert writes[0].kind == "send"
    assert len(chat.messages()) == 1
    assert chat.messages() == ["".join(pieces)]
    # 0.6 s of tokens at one edit per 0.1 s: the first text, then an edit every 0.1 s (the
    # last one final), not 60.
    gaps = [b.at - a.at for a, b in itertools.pairwise(writes)]
    assert gaps == pytest.approx([0.1] * 6)
    assert writes[-1].final and not any(w.final for w in writes[:-1])


async def test_never_sends_unchanged_text() -> None:
    chat = adapter(interval=0.02)
    flusher = StreamFlusher(chat, KEY)
    flusher.start()
    flusher.feed("same text")
    await asyncio.sleep(0.1)
    for _ in range(5):
        flusher.feed("")  # nothing new
        await asyncio.sleep(0.03)
    await flusher.finish("same text")
    texts = [(w.text, w.final) for w in chat.writes()]
    assert texts == [("same text", False), ("same text", True)]


async def test_long_answer_continues_in_new_messages_with_nothing_lost() -> None:
    chat = adapter(max_len=100, interval=0.01)
    flusher = StreamFlusher(chat, KEY)
    pieces = words(80)
    await stream(flusher, pieces, 0.002)
    await flusher.finish("".join(pieces))

    messages = chat.messages()
    assert len(messages) >= 5
    assert all(len(m) <= 100 for m in messages)
    assert "".join(messages) == "".join(pieces)
    # Every message ends final, and splits fall between words.
    finals = {w.message_id for w in chat.writes() if w.final}
    assert len(finals) == len(messages)
    assert all(m.endswith(" ") for m in messages[:-1])


async def test_rate_limit_pauses_edits_and_final_text_still_arrives() -> None:
    chat = adapter(interval=0.02)
    chat.fail("edit", RateLimited(0.3))
    flusher = StreamFlusher(chat, KEY)
    flusher.start()
    flusher.feed("one ")
    await asyncio.sleep(0.05)
    flusher.feed("two ")  # this edit is refused with retry_after 0.3
    await asyncio.sleep(0.05)
    for piece in words(10):
        flusher.feed(piece)
        await asyncio.sleep(0.02)
    final = "one two " + "".join(words(10))
    chat.fail("edit", RateLimited(0.2), RateLimited(0.2))  # the final edit too, twice
    await flusher.finish(final)

    edits = chat.writes("edit")
    assert chat.messages() == [final]
    assert edits[-1].final and edits[-1].text == final
    # After the 429 nothing was tried for the 0.3 s asked for; the final edit, refused twice
    # with 0.2 s, went out 0.2 s after the second refusal.
    refused_at = [at for _kind, at in chat.refused]
    assert len(refused_at) == 3
    assert refused_at[1] - refused_at[0] == pytest.approx(0.3)
    assert refused_at[2] - refused_at[1] == pytest.approx(0.2)
    assert edits[0].at - refused_at[2] == pytest.approx(0.2)


async def test_final_delivery_retries_platform_errors_then_gives_up() -> None:
    chat = adapter()
    flusher = StreamFlusher(chat, KEY)
    flusher.start()
    flusher.feed("partial")
    await asyncio.sleep(0.05)
    chat.fail("edit", PlatformError("502"), PlatformError("dropped connection"))
    await flusher.finish("partial and final")
    assert chat.messages() == ["partial and final"]

    down = adapter()
    flusher = StreamFlusher(down, KEY, give_up_after=1.0)
    down.fail("send", *[PlatformError("503")] * 50)
    with pytest.raises(DeliveryFailed):
        await flusher.finish("never arrives")
    assert down.messages() == []
    # Tried at once and after a 0.5 s backoff; the next (1 s later) would pass the deadline.
    tries = [at for _kind, at in down.refused]
    assert [b - a for a, b in itertools.pairwise(tries)] == pytest.approx([0.5])


async def test_platform_that_counts_longer_gets_smaller_pieces() -> None:
    chat = adapter(max_len=200, interval=0.01)
    chat.too_long_over = 120  # e.g. markup added when rendering
    flusher = StreamFlusher(chat, KEY)
    answer = "".join(words(90))
    await flusher.finish(answer)
    assert "".join(chat.messages()) == answer
    assert all(len(m) <= 120 for m in chat.messages())


async def test_typing_until_first_token_and_placeholder_becomes_the_answer() -> None:
    chat = adapter(interval=0.01)
    flusher = StreamFlusher(chat, KEY)
    flusher.start()
    flusher.status("⏳ Queued (position 1) — I'll answer here.")
    await asyncio.sleep(0.05)
    flusher.start_typing()
    await asyncio.sleep(0.05)
    flusher.feed("The answer.")
    await flusher.finish("The answer.")

    kinds = [op.kind for op in chat.ops]
    assert kinds[0] == "send" and chat.ops[0].text.startswith("⏳ Queued (position 1)")
    assert "typing" in kinds
    assert "💭 Thinking…" in [op.text for op in chat.ops]
    first_text = next(i for i, op in enumerate(chat.ops) if op.text == "The answer.")
    assert "typing" not in kinds[first_text:]
    assert chat.messages() == ["The answer."]


def test_split_point_prefers_line_and_word_boundaries() -> None:
    text = "a" * 60 + "\n" + "b" * 60
    assert split_point(text, 100) == 61
    assert split_point("x" * 150, 100) == 100
    assert split_point("short", 100) == 5


async def test_a_deleted_message_is_replaced_by_a_new_one() -> None:
    chat = adapter(interval=0.01)
    flusher = StreamFlusher(chat, KEY)
    flusher.start()
    flusher.feed("first part ")
    await asyncio.sleep(0.05)
    chat.fail("edit", Refused("message_not_found"))  # someone deleted it meanwhile
    flusher.feed("and the rest")
    await flusher.finish("first part and the rest")
    assert chat.messages()[-1] == "first part and the rest"
    assert chat.writes()[-1].final


async def test_a_chat_that_refuses_for_good_is_not_retried() -> None:
    chat = adapter()
    chat.fail("send", Refused("bot was blocked by the user"))
    flusher = StreamFlusher(chat, KEY, give_up_after=60)
    with pytest.raises(DeliveryFailed):
        await flusher.finish("hello")
    assert len(chat.refused) == 1  # one try, not 60 s of retries


async def test_the_first_text_waits_for_a_few_words() -> None:
    """Not "Al" or a lone quote for the seconds until the next edit."""
    for pieces in (
        ['"', "Al", "ice ", "is ", "here ", "today ", "and ", "more."],
        list("巴黎是法国的首都，也是最大的城市。"),
    ):
        chat = adapter(interval=1.0)
        flusher = StreamFlusher(chat, KEY)
        await stream(flusher, pieces, 0.03)
        await flusher.finish("".join(pieces))
        first = chat.writes()[0].text
        assert len(first.split()) >= 4 or len(first) >= 12, first
        assert chat.messages() == ["".join(pieces)]


async def test_a_short_first_text_still_goes_out_after_one_interval() -> None:
    chat = adapter(interval=0.1)
    flusher = StreamFlusher(chat, KEY)
    flusher.start()
    flusher.feed("Hm")
    await eventually(lambda: chat.writes())
    assert chat.writes()[0].text == "Hm"
    await flusher.finish("Hm")


async def test_failing_streaming_updates_back_off(caplog: pytest.LogCaptureFixture) -> None:
    chat = adapter(interval=0.02)
    flusher = StreamFlusher(chat, KEY)
    flusher.start()
    flusher.feed("one two three four ")
    await eventually(lambda: chat.writes())
    chat.fail("edit", *[PlatformError("502 Bad Gateway")] * 100)
    await stream(flusher, words(200), 0.0125)  # ~2.5 s of tokens
    chat.faults.clear()
    await flusher.finish("one two three four " + "".join(words(200)))
    tries = [at for kind, at in chat.refused if kind == "edit"]
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    assert 2 <= len(gaps) <= 4
    assert all(later >= 1.8 * earlier for earlier, later in itertools.pairwise(gaps))
    assert caplog.text.count("backing off") == 1


async def test_sources_go_under_the_last_message_within_its_limit() -> None:
    chat = adapter(max_len=200, interval=0.01)
    chat.too_long_over = 200  # the platform refuses anything longer
    flusher = StreamFlusher(chat, KEY)
    pieces = words(60)
    sources = [Source(1, "Travel policy", "travel.md"), Source(2, "差旅政策", "差旅.md")]
    await stream(flusher, pieces, 0.002)
    await flusher.finish("".join(pieces), sources)

    messages = chat.messages()
    footer = chat.render_sources(sources)
    assert messages[-1].endswith(footer) and all(footer not in m for m in messages[:-1])
    assert all(len(m) <= 200 for m in messages)
    assert "".join(messages).removesuffix(footer) == "".join(pieces)
    assert [op.sources for op in chat.writes() if op.sources] == [tuple(sources)]
