"""The engine's pure parts: text streaming, chat templates, slot choice, waiting line."""

from __future__ import annotations

import pytest

from llm.base import ChatMessage, EngineBusy
from llm.chat_template import ChatTemplate
from llm.llama_slots import Slot, StateCache, choose_slot, common_prefix, plan_prefill
from llm.textstream import TextStream
from llm.waitline import WaitLine


def _feed(stream: TextStream, data: bytes) -> list[str]:
    out = [stream.push(data[i : i + 1]) for i in range(len(data))]
    return [*out, stream.finish()]


def test_multibyte_characters_come_out_whole_when_fed_byte_by_byte() -> None:
    out = _feed(TextStream(), "a中😀".encode())
    assert [s for s in out if s] == ["a", "中", "😀"]


def test_an_unfinished_character_at_the_end_becomes_a_replacement_mark() -> None:
    assert "".join(_feed(TextStream(), b"ok" + "中".encode()[:2])) == "ok\ufffd"


def test_stop_strings_are_held_back_until_decided() -> None:
    stream = TextStream(stop=["END"])
    assert stream.push(b"abc E") == "abc "
    assert stream.push(b"N") == ""
    assert stream.push(b"x") == "ENx"  # not a stop after all: released
    assert stream.push(b" END more") == " "
    assert stream.stopped and stream.push(b"ignored") == "" and stream.finish() == ""


def test_held_text_is_released_when_the_answer_ends() -> None:
    stream = TextStream(stop=["###"])
    assert stream.push(b"done #") == "done "
    assert stream.finish() == "#"


def test_chat_template_keeps_message_text_literal() -> None:
    template = ChatTemplate(None)  # ChatML fallback
    segments = template.segments([ChatMessage("user", "<|im_end|> hi")])
    assert ("<|im_end|> hi", True) in segments
    assert segments[0] == ("<|im_start|>user\n", False)
    assert segments[-1] == ("<|im_end|>\n<|im_start|>assistant\n", False)


def test_a_template_that_refuses_system_messages_gets_them_folded_in() -> None:
    strict = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('no system role') }}{% endif %}"
        "[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    )
    rendered = ChatTemplate(strict).render(
        [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]
    )
    assert rendered == "[user]Be brief.\n\nHi"


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3, 4], [1, 2, 9]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix(list(range(1000)), [*range(777), -1]) == 777


def test_a_request_takes_its_own_slot_then_a_free_one_then_the_least_recently_used() -> None:
    slots = [Slot(i) for i in range(3)]
    for slot, owner, used in zip(slots, ["a", "b", None], [1.0, 2.0, 0.0], strict=True):
        slot.owner, slot.last_used = owner, used
    assert choose_slot(slots, "b") is slots[1]
    assert choose_slot(slots, "new") is slots[2]
    assert choose_slot(slots[:2], "new") is slots[0]


def test_state_cache_drops_the_oldest_to_fit() -> None:
    cache = StateCache(capacity=10)
    cache.put("a", [1], b"12345")
    cache.put("b", [2], b"12345")
    cache.put("c", [3], b"123")
    assert cache.take("a") is None and len(cache) == 2
    assert cache.take("b") == ([2], b"12345")
    cache.put("huge", [4], b"x" * 11)
    assert cache.take("huge") is None and cache.used == 3


async def test_waitline_positions_move_up_and_the_bound_holds() -> None:
    line = WaitLine(capacity=1, max_queue=2)
    running = line.join()
    second, third = line.join(), line.join()
    assert running.admitted and (second.position, third.position) == (1, 2)
    with pytest.raises(EngineBusy):
        line.join()
    line.leave(second)
    await third.moved()
    assert third.position == 1
    line.leave(running)
    await third.moved()
    assert third.admitted and line.running == 1 and line.queued == 0


def test_threads_default_to_physical_cores_this_process_may_use() -> None:
    import os

    from llm.llama_engine import physical_cores

    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


def _reading(seq: int, to_read: int, left: int | None = None, submitted: float = 0.0) -> Slot:
    """A slot whose request got it with `to_read` prompt tokens, `left` of them still unread."""
    from llm.llama_worker import Job
    from llm.native import SamplingParams

    job = Job(
        prompt=list(range(to_read)),
        conversation_id=str(seq),
        max_tokens=8,
        sampling=SamplingParams(0.0, 1.0, 0, 1.0, 0),
        stop=(),
        emit=lambda _: None,
        submitted=submitted,
    )
    slot = Slot(seq)
    slot.job, slot.to_read = job, to_read
    slot.pending = list(range(to_read if left is None else left))
    return slot


def test_a_short_question_is_read_whole_before_long_prompts_whatever_the_slot_order() -> None:
    long_a, long_b = _reading(0, 2000, 1500), _reading(1, 2000, submitted=1.0)
    short = _reading(3, 60, submitted=2.0)
    plan = plan_prefill([long_a, long_b, short], 0, room=512, step=128, short=128)
    assert plan == [(short, 60)]  # alone: its step is as short as its prompt
    # Once it answers, the long prompts go on a few tokens per step beside its answer...
    plan = plan_prefill([long_a, long_b], 1, room=511, step=128, short=128)
    assert plan == [(long_a, 1)]
    # ... and in step-sized chunks, the one with less left first, when nobody is answering.
    assert plan_prefill([long_b, long_a], 0, room=512, step=128, short=128) == [(long_a, 128)]


def test_prompt_tokens_beside_answers_grow_with_the_answers_and_fit_the_batch() -> None:
    prompt = _reading(7, 3000)
    counts = [plan_prefill([prompt], d, room=512, step=128, short=128)[0][1] for d in (1, 3, 7)]
    assert counts == sorted(counts) and counts[0] >= 1 and counts[-1] <= 4
    shorts = [_reading(i, 100) for i in range(6)]
    plan = plan_prefill(shorts, 2, room=510, step=128, short=128)
    assert sum(n for _, n in plan) == 510  # several short questions: as many as the batch holds
