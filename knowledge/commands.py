"""`edgeqa kb sync | status | search`: the knowledge base from a terminal.

Each command opens the history database (upgrading its schema like `edgeqa db upgrade`),
does its one thing and closes it, so it can run beside a running bot: both write through
the same one-transaction-per-document path.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from knowledge.base import KbStatus
from knowledge.setup import build_knowledge
from knowledge.sync import Progress, SyncReport
from storage.sql import SqlRepository

if TYPE_CHECKING:
    from bot.config import Settings


async def run_kb(
    action: str,
    settings: Settings,
    *,
    query: str = "",
    as_json: bool = False,
    limit: int = 4,
    collections: list[str] | None = None,
    min_score: float | None = None,
) -> int:
    if not settings.knowledge.enabled:
        print("edgeqa: no [[knowledge.sources]] in the settings", file=sys.stderr)
        return 2
    if min_score is not None:
        knowledge = settings.knowledge.model_copy(update={"min_score": min_score})
        settings = settings.model_copy(update={"knowledge": knowledge})
    repo = SqlRepository(settings.history.database_url)
    await repo.start()
    kb = build_knowledge(settings, repo.db)
    assert kb is not None
    try:
        if action == "sync":
            with _progress_bar() as progress:
                report = await kb.sync(progress)
            print(describe_report(report))
            return 0
        if action == "status":
            print(describe_status(await kb.status()))
            return 0
        await kb.embedder()  # a search from the terminal may wait for the model
        passages = await kb.retrieve(query, collections=collections, limit=limit)
        if as_json:
            print(json.dumps([_hit(p) for p in passages], ensure_ascii=False, indent=1))
        elif not passages:
            print("nothing relevant found (below knowledge.min_score)")
        else:
            for rank, p in enumerate(passages, 1):
                where = f"{p.location} > {p.heading}" if p.heading else p.location
                print(f"{rank}. {p.score:.3f}  {where}  ({p.title}) [{p.collection}]")
                if p.url:
                    print(f"   {p.url}")
                print("   " + " ".join(p.text.split())[:300])
        return 0
    finally:
        await kb.close()
        await repo.close()


def _hit(p: Any) -> dict[str, Any]:
    return {
        "location": p.location,
        "title": p.title,
        "heading": p.heading,
        "collection": p.collection,
        "url": p.url,
        "score": p.score,
        "chunk_id": p.chunk_id,
        "text": p.text,
    }


def describe_report(r: SyncReport) -> str:
    lines = [
        f"synced in {r.seconds:.1f}s: {r.added} added, {r.updated} updated, {r.removed} removed, "
        f"{r.unchanged} unchanged, {len(r.problems)} skipped ({r.chunks} chunks written)"
    ]
    lines += [f"  skipped {loc}: {reason}" for loc, reason in r.problems]
    return "\n".join(lines)


def describe_status(s: KbStatus) -> str:
    per = ", ".join(f"{name} {n}" for name, n in sorted(s.collections.items())) or "none"
    last = s.last_sync.strftime("%Y-%m-%d %H:%M:%S UTC") if s.last_sync else "never"
    counts = ", ".join(f"{v} {k}" for k, v in s.last_counts.items())
    lines = [
        f"documents: {s.documents} ({per})",
        f"chunks:    {s.chunks}, {s.embedded} with vectors",
        f"embedding: {s.embedding}",
        f"last sync: {last}" + (f" ({counts})" if counts else ""),
        f"skipped:   {len(s.errors)}",
    ]
    lines += [f"  {loc}: {reason}" for loc, reason in s.errors]
    return "\n".join(lines)


class _progress_bar:
    """A tqdm bar on a terminal; nothing when stderr is not one (logs, pipes)."""

    def __init__(self) -> None:
        self._bar: Any = None

    def __enter__(self) -> Progress | None:
        if not sys.stderr.isatty():
            return None
        from tqdm import tqdm

        self._bar = tqdm(total=0, unit="file", file=sys.stderr, dynamic_ncols=True)

        def progress(done: int, total: int, location: str) -> None:
            self._bar.total = total
            self._bar.n = done
            self._bar.set_postfix_str(location[-40:], refresh=False)
            self._bar.refresh()

        update: Callable[[int, int, str], None] = progress
        return update

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()
