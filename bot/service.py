"""ConversationService: one incoming message in, one streamed answer (or command reply) out.

This is the only place that knows the whole flow — access, commands, rate limit, the
per-thread queue, history under a token budget, the engine call, the flusher and the
stored turn — so adapters stay thin and every platform behaves the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from adapters.base import Adapter
from bot.access import AccessPolicy
from bot.commands import Activity, Command, CommandContext, execute, parse_command
from bot.config import Settings
from bot.flusher import DeliveryFailed, StreamFlusher
from bot.grounding import Knowledge, cited, search, to_sources
from bot.i18n import N_, Catalogs, Texts
from bot.metrics import Metrics
from bot.prompt import Prompt, build_prompt, cut_middle
from bot.ratelimit import RateLimiter
from bot.text import clean_text
from bot.types import CommandSyntax, ConversationKey, IncomingMessage, Progress, Source
from knowledge.types import Passage
from llm.base import Engine, EngineBusy, EngineError, GenerationRequest, RequestStats
from storage.base import Repository, Turn, TurnStatus

log = logging.getLogger(__name__)

# Marks put after an answer that did not end normally (after a blank line), and notes, in
# the asker's language.
STOPPED_MARK = N_("⏹ _(stopped)_")
INTERRUPTED_MARK = N_("⚠️ _(cut short: the bot is restarting)_")
ERROR_MARK = N_("⚠️ _(something went wrong while answering; please ask again)_")
LENGTH_MARK = N_("… _(answer cut at the length limit)_")
RESTARTING = N_("I'm restarting — please ask again in a minute.")
UNDELIVERED = N_("⚠️ I couldn't deliver my whole answer here. Please ask again.")
CUT_NOTE = N_("_(Your message was too long for me, so I read only its beginning and end.)_")
NOT_IN_DOCS = N_(
    "The company's documents don't cover this question, so I can't answer it from them. "
    "Try rephrasing it, or ask someone who knows."
)
GENERAL_NOTE = N_(
    "_(Not from the company's documents — they don't cover this; answering from general "
    "knowledge.)_"
)
SEARCH_FAILED = N_("I couldn't search the company's documents just now. Please ask again later.")


def queued_text(position: int, texts: Texts) -> str:
    return texts.gettext("⏳ Queued (position %(position)d) — I'll answer here.", position=position)


@dataclass(eq=False)
class _Generation:
    """The answer being written in one thread, so /stop and shutdown can reach it."""

    task: asyncio.Task[RequestStats | None] | None = None
    parts: list[str] = field(default_factory=list)
    first_token_at: float | None = None
    end: TurnStatus | None = None  # set when stopped or interrupted from outside
    delivered: asyncio.Event = field(default_factory=asyncio.Event)  # its final text is out

    def halt(self, status: TurnStatus) -> bool:
        if self.task is None or self.task.done():
            return False
        self.end = status
        self.task.cancel()
        return True


@dataclass(eq=False)
class _Thread:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: list[StreamFlusher] = field(default_factory=list)
    current: _Generation | None = None


class ConversationService:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        repo: Repository,
        metrics: Metrics | None = None,
        knowledge: Knowledge | None = None,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._repo = repo
        self.metrics = metrics or Metrics()
        # The company's documents (None: answers come from the model alone). Public, so the
        # app can attach a knowledge base that needs the started database.
        self.knowledge = knowledge
        self._access = AccessPolicy(settings)
        self._catalogs = Catalogs(settings.bot.language)
        self._rate = RateLimiter(settings.bot.rate_limit_per_minute)
        self._adapters: dict[str, Adapter] = {}
        self._threads: dict[ConversationKey, _Thread] = {}
        self._accepting = True
        self._idle = asyncio.Event()  # set while no thread is being answered
        self._idle.set()
        self._handling = 0  # messages inside handle()/command(): questions, queued or not
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._started = time.monotonic()
        self.metrics.gauge("edgeqa_queue_length", lambda: float(self.queue_length()))
        self.metrics.gauge("edgeqa_active_answers", lambda: float(len(self._generations())))
        self.metrics.gauge(
            "edgeqa_engine_tokens_per_second", lambda: self._engine.stats().tokens_per_second
        )
        self.metrics.gauge(
            "edgeqa_answer_tokens_per_second",
            lambda: self._engine.stats().answer_tokens_per_second,
        )

    # -- wiring --------------------------------------------------------------------------

    def register(self, adapter: Adapter) -> None:
        self._adapters[adapter.name] = adapter

    def active_keys(self) -> set[ConversationKey]:
        """Conversations being answered or waiting: never pruned under them."""
        return set(self._threads)

    def queue_length(self) -> int:
        waiting = sum(len(t.waiting) for t in self._threads.values())
        return waiting + self._engine.stats().queued

    def _generations(self) -> list[_Generation]:
        return [t.current for t in self._threads.values() if t.current is not None]

    # -- the CoreHandler protocol ---------------------------------------------------------

    @property
    def busy(self) -> bool:
        """A message is being handled: a question answered or queued, or a command run."""
        return self._handling > 0

    async def wait_quiet(self) -> None:
        """Return once no message is being handled (at once if none is). What "nothing more
        will happen" means for the core: tests wait on it instead of a fixed sleep."""
        await self._quiet.wait()

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        self._handling += 1
        self._quiet.clear()
        try:
            yield
        finally:
            self._handling -= 1
            if not self._handling:
                self._quiet.set()

    async def handle(self, msg: IncomingMessage) -> None:
        with self._busy():
            await self._handle(msg)

    async def _handle(self, msg: IncomingMessage) -> None:
        adapter = self._adapters.get(msg.key.platform)
        if adapter is None:
            log.error("no adapter registered for platform %r", msg.key.platform)
            return
        if not self._access.allowed(msg):
            log.info("ignored a message from %s in %s: not allowed", msg.user_id, msg.key)
            return
        try:
            # Cleaned like questions are: a command's reply may echo its arguments, and a
            # lone surrogate or NUL there would make the platform refuse the reply.
            command = parse_command(clean_text(msg.text))
            if command is not None:
                await self._reply(adapter, msg, await self._execute(command, msg))
            else:
                await self._question(adapter, msg)
        except Exception as exc:
            self.on_error(exc, f"handling a message in {msg.key}")
            with contextlib.suppress(Exception):
                sorry = self.texts(msg).gettext("Sorry, something went wrong on my side.")
                await self._reply(adapter, msg, sorry)

    async def command(self, msg: IncomingMessage) -> str:
        with self._busy():
            return await self._command(msg)

    async def _command(self, msg: IncomingMessage) -> str:
        if not self._access.allowed(msg):
            log.info("refused a command from %s in %s: not allowed", msg.user_id, msg.key)
            return self.texts(msg).gettext("Sorry, you can't use this bot here.")
        command = parse_command(clean_text(msg.text)) or Command("help", "", known=True)
        return await self._execute(command, msg)

    def texts(self, msg: IncomingMessage) -> Texts:
        """The bot's texts in the language of the user who sent `msg`."""
        return self._catalogs.for_tag(msg.language)

    async def history(self, key: ConversationKey) -> Sequence[Turn]:
        return await self._repo.load_history(key)

    def allows(self, msg: IncomingMessage) -> bool:
        return self._access.allowed(msg)

    def on_error(self, exc: BaseException, what: str) -> None:
        """The one place an unexpected error ends up, whether the core caught it or an
        adapter's background task did (botbuilder's on_turn_error): logged with its trace."""
        log.error("%s failed", what, exc_info=exc)

    # -- questions -----------------------------------------------------------------------

    async def _question(self, adapter: Adapter, msg: IncomingMessage) -> None:
        text = clean_text(msg.text)
        texts = self.texts(msg)
        if not has_words(text):
            answer = texts.gettext("Ask me a question in words and I'll answer here.")
            await self._reply(adapter, msg, answer)
            return
        if not self._accepting:
            await self._reply(adapter, msg, texts.gettext(RESTARTING))
            return
        wait = self._rate.check(msg.key.platform, msg.user_id)
        if wait:
            self.metrics.inc("edgeqa_rate_limited_total", platform=msg.key.platform)
            slow_down = texts.ngettext(
                "You're asking faster than I can answer — please wait %(wait).0f s "
                "(limit: %(n)d question a minute).",
                "You're asking faster than I can answer — please wait %(wait).0f s "
                "(limit: %(n)d questions a minute).",
                self._settings.bot.rate_limit_per_minute,
                wait=wait,
            )
            await self._reply(adapter, msg, slow_down)
            return
        self.metrics.inc("edgeqa_questions_total", platform=msg.key.platform)
        thread = self._threads.setdefault(msg.key, _Thread())
        self._idle.clear()
        flusher = self._flusher(adapter, msg)
        flusher.start()
        if thread.lock.locked():
            thread.waiting.append(flusher)
            flusher.status(queued_text(len(thread.waiting), texts))
            flusher.progress(Progress(queue_position=len(thread.waiting)))
        try:
            async with thread.lock:
                if flusher in thread.waiting:
                    thread.waiting.remove(flusher)
                for position, waiter in enumerate(thread.waiting, start=1):
                    waiter.status(queued_text(position, waiter.texts))
                    waiter.progress(Progress(queue_position=position))
                if not self._accepting:
                    # Queued before a shutdown began: starting it now would outlast the grace.
                    await self._finish(flusher, texts.gettext(RESTARTING))
                    return
                await self._answer(flusher, msg, text, thread)
        finally:
            if flusher in thread.waiting:
                thread.waiting.remove(flusher)
                await flusher.close()
            if not thread.lock.locked() and not thread.waiting:
                self._threads.pop(msg.key, None)
                if not self._threads:
                    self._idle.set()

    async def _answer(
        self, flusher: StreamFlusher, msg: IncomingMessage, text: str, thread: _Thread
    ) -> None:
        received = time.monotonic()
        await self._repo.touch(msg.key)
        history = await self._repo.load_history(msg.key)
        too_long = len(text) > self._settings.bot.max_question_chars
        text = cut_middle(text, self._settings.bot.max_question_chars)
        passages: list[Passage] = []
        if self.knowledge is not None:
            flusher.start_typing()  # searching (and embedding the question) takes a moment
            try:
                passages = await self._retrieve(msg, text, history)
            except Exception:
                log.exception("searching the knowledge base failed in %s", msg.key)
                await self._finish(flusher, flusher.texts.gettext(SEARCH_FAILED))
                return
            if not passages:
                self.metrics.inc("edgeqa_retrieval_abstentions_total", platform=msg.key.platform)
                if self._settings.knowledge.mode == "strict":
                    abstained = flusher.texts.gettext(NOT_IN_DOCS)
                    await self._finish(flusher, abstained)
                    await self._repo.append_turn(
                        msg.key, user_id=msg.user_id, question=text, answer=abstained
                    )
                    return
        prompt = build_prompt(
            self._settings.bot.system_prompt,
            history,
            text,
            budget=self._budget(),
            count=self._engine.count_tokens,
            passages=passages,
            passage_budget=self._settings.knowledge.passage_tokens,
        )
        if prompt.question_cut or too_long:
            flusher.feed(flusher.texts.gettext(CUT_NOTE) + "\n\n")
        if self.knowledge is not None and not prompt.passages:
            flusher.feed(flusher.texts.gettext(GENERAL_NOTE) + "\n\n")

        generation = _Generation()
        thread.current = generation
        try:
            await self._run(flusher, msg, text, prompt, generation, thread, received)
        finally:
            generation.delivered.set()

    async def _run(
        self,
        flusher: StreamFlusher,
        msg: IncomingMessage,
        text: str,
        prompt: Prompt,
        generation: _Generation,
        thread: _Thread,
        received: float,
    ) -> None:
        request = GenerationRequest(prompt.messages, conversation_id=str(msg.key))
        sources = to_sources(prompt.passages)
        flusher.start_typing()
        generation.task = asyncio.create_task(self._generate(request, flusher, generation))
        status: TurnStatus = "complete"
        stats: RequestStats | None = None
        mark = ""
        try:
            stats = await asyncio.shield(generation.task)
        except asyncio.CancelledError:
            # Our own task was cancelled (shutdown): cut the answer and still record it.
            if generation.end is None:
                generation.halt("interrupted")
            with contextlib.suppress(asyncio.CancelledError):
                await generation.task
        except EngineBusy as exc:
            log.info("engine busy in %s: %s", msg.key, exc)
            busy = flusher.texts.gettext("I'm busy right now. Please ask again in a minute.")
            await self._finish(flusher, busy)
            return
        except EngineError as exc:
            log.warning("engine failed in %s: %s", msg.key, exc)
            status, mark = "error", ERROR_MARK
        finally:
            thread.current = None
        if generation.end is not None:
            status = generation.end
            mark = STOPPED_MARK if status == "stopped" else INTERRUPTED_MARK
        elif stats is not None and stats.finish_reason == "length":
            mark = LENGTH_MARK
        if generation.first_token_at is not None:
            self.metrics.observe_ttft(generation.first_token_at - received)
        if stats is not None:
            self.metrics.inc("edgeqa_tokens_generated_total", stats.generated_tokens)
            self.metrics.inc("edgeqa_prompt_tokens_total", stats.prompt_tokens)
        answer = "".join(generation.parts)
        self.metrics.inc("edgeqa_answers_total", platform=msg.key.platform, status=status)
        texts = flusher.texts
        shown = flusher.text + ("\n\n" + texts.gettext(mark) if mark else "")
        if not answer and status == "complete":
            shown += texts.gettext("_(I have no answer to that.)_")
        if not answer and status == "interrupted":
            # No words yet: say what to do, as the queued ones are told.
            shown = texts.gettext(RESTARTING)
        footer = cited(answer, sources) if answer and status != "error" else []
        await self._finish(flusher, shown if answer else shown.lstrip(), footer)
        if status != "error" and answer:
            await self._repo.append_turn(
                msg.key,
                user_id=msg.user_id,
                question=text,
                answer=answer,
                status=status,
                prompt_tokens=prompt.tokens,
                completion_tokens=stats.generated_tokens if stats else len(generation.parts),
                sources=sources,
            )

    async def _retrieve(
        self, msg: IncomingMessage, question: str, history: Sequence[Turn]
    ) -> list[Passage]:
        assert self.knowledge is not None
        return await search(
            self.knowledge, msg.key, question, history, self._settings.knowledge.top_k
        )

    async def _generate(
        self, request: GenerationRequest, flusher: StreamFlusher, generation: _Generation
    ) -> RequestStats | None:
        stats: RequestStats | None = None
        tokens = 0
        first_tokens = 0  # the pace counts tokens after the first chunk, over the time since
        stream = self._engine.stream(request)
        try:
            async for chunk in stream:
                if chunk.queue_position is not None:
                    flusher.status(queued_text(chunk.queue_position, flusher.texts))
                    flusher.progress(Progress(queue_position=chunk.queue_position))
                if chunk.text:
                    if generation.first_token_at is None:
                        generation.first_token_at = time.monotonic()
                        first_tokens = chunk.tokens
                    tokens += chunk.tokens
                    generation.parts.append(chunk.text)
                    flusher.feed(chunk.text)
                    elapsed = time.monotonic() - generation.first_token_at
                    later = tokens - first_tokens
                    speed = later / elapsed if later > 0 and elapsed > 0 else 0.0
                    flusher.progress(Progress(tokens=tokens, tokens_per_second=speed))
                if chunk.done:
                    stats = chunk.stats
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if stats is not None:
            flusher.progress(
                Progress(
                    tokens=stats.generated_tokens,
                    tokens_per_second=stats.tokens_per_second,
                    done=True,
                )
            )
        return stats

    def _budget(self) -> int:
        room = self._engine.context_size - self._settings.engine.max_tokens
        return max(64, min(self._settings.bot.context_tokens, room))

    def _flusher(self, adapter: Adapter, msg: IncomingMessage) -> StreamFlusher:
        return StreamFlusher(
            adapter,
            msg.key,
            reply_to=msg.message_id,
            give_up_after=self._settings.bot.delivery_timeout,
            on_edit=lambda: self.metrics.inc("edgeqa_edits_sent_total", platform=adapter.name),
            texts=self.texts(msg),
        )

    async def _finish(
        self, flusher: StreamFlusher, text: str, sources: Sequence[Source] = ()
    ) -> None:
        try:
            await flusher.finish(text, sources)
        except DeliveryFailed as exc:
            self.metrics.inc("edgeqa_delivery_failures_total")
            log.error("could not deliver an answer: %s", exc)
            await flusher.notice(flusher.texts.gettext(UNDELIVERED))

    async def _reply(self, adapter: Adapter, msg: IncomingMessage, text: str) -> None:
        await self._finish(self._flusher(adapter, msg), text)

    # -- commands (the table and the handlers are in bot.commands) ------------------------

    async def _execute(self, command: Command, msg: IncomingMessage) -> str:
        adapter = self._adapters.get(msg.key.platform)
        syntax = adapter.command_syntax if adapter and adapter.names_commands else CommandSyntax()
        is_admin = self._access.is_admin(msg.key.platform, msg.user_id)
        if command.spec is not None and command.spec.admin and not is_admin:
            log.info(
                "refused /%s for non-admin %s on %s", command.name, msg.user_id, msg.key.platform
            )
        context = CommandContext(msg, command.args, is_admin, syntax, self, self.texts(msg))
        return await execute(command, context)

    # -- the commands.Core protocol ------------------------------------------------------

    @property
    def repo(self) -> Repository:
        return self._repo

    @property
    def engine(self) -> Engine:
        return self._engine

    def activity(self) -> Activity:
        return Activity(
            waiting=sum(len(t.waiting) for t in self._threads.values()),
            answering=len(self._generations()),
            uptime=time.monotonic() - self._started,
        )

    def abstentions(self) -> int:
        return int(self.metrics.total("edgeqa_retrieval_abstentions_total"))

    async def stop_answer(self, msg: IncomingMessage) -> bool:
        thread = self._threads.get(msg.key)
        generation = thread.current if thread is not None else None
        if generation is None or not generation.halt("stopped"):
            return False
        # The reply to /stop goes below the answer it stopped: where the answer only becomes
        # a message when final (a Telegram draft), replying at once would put it above.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                generation.delivered.wait(), self._settings.bot.delivery_timeout + 10.0
            )
        return True

    # -- shutdown ------------------------------------------------------------------------

    async def shutdown(self, grace: float) -> None:
        """Stop taking questions, let answers in flight finish for `grace` seconds, then cut
        the rest (each is delivered with a note and stored as interrupted)."""
        self._accepting = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace)
        for generation in self._generations():
            generation.halt("interrupted")
        with contextlib.suppress(TimeoutError):
            # Cut answers still need their final edit and their turn stored.
            await asyncio.wait_for(self._idle.wait(), 10.0)


def has_words(text: str) -> bool:
    """Anything visible? Zero-width and direction marks alone are not a question."""
    return any(ch.isprintable() and not ch.isspace() for ch in text)
