"""Vectors through real llama.cpp, a sync killed with SIGKILL, yielding to answers, the CLI
and the bot's own sync job."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text

import knowledge.sync
from bot.app import App
from knowledge.base import KnowledgeBase
from llm.embeddings import Embedder
from storage.sql import SqlRepository
from tests.harness import eventually, test_settings
from tests.knowledge_support import locations, settings, write
from tests.tiny_bert import write_tiny_bert

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert.gguf")


@pytest.fixture
async def db(tmp_path: Path):
    repo = SqlRepository(f"sqlite+aiosqlite:///{tmp_path / 'kb.db'}")
    await repo.start()
    yield repo
    await repo.close()


def garage_docs(root: Path) -> None:
    write(root, "parking.md", "# Parking\n\nThe automobile spaces.")
    write(root, "hotels.md", "# Hotels\n\nThe hotel refund policy: ask the travel desk.")


async def test_vectors_find_what_no_keyword_matches(db, tmp_path, tiny_bert_path) -> None:
    garage_docs(tmp_path / "d")
    config = settings((tmp_path / "d", "d"), min_score=0.05)
    keyword_only = KnowledgeBase(config, db.db)
    await keyword_only.sync()
    question = "Where is my vehicle?"
    assert await keyword_only.retrieve(question) == []  # "vehicle" is in no document

    hybrid = KnowledgeBase(config, db.db, load_embedder=lambda: Embedder(tiny_bert_path))
    report = await hybrid.sync()
    assert report.updated == 2  # a new embedding model redoes every document
    assert await locations(hybrid, question, limit=1) == ["parking.md"]
    status = await hybrid.status()
    assert status.embedded == status.chunks == 2
    assert status.embedding == "tiny-bert.gguf:32"
    await hybrid.close()


async def test_an_embedding_model_that_cannot_load_leaves_keyword_search(db, tmp_path) -> None:
    garage_docs(tmp_path / "d")
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF not really")

    def load() -> Embedder:
        return Embedder(broken)

    kb = KnowledgeBase(settings((tmp_path / "d", "d")), db.db, load_embedder=load)
    await kb.sync()
    assert await locations(kb, "hotel refund policy") == ["hotels.md"]
    assert (await kb.status()).embedding.startswith("unavailable: llama.cpp could not load")


async def test_indexing_waits_for_answers_but_is_never_starved(
    db, tmp_path, tiny_bert_path, monkeypatch
) -> None:
    for i in range(3):
        write(tmp_path / "d", f"doc{i}.md", f"# Doc {i}\n\nThe hotel number {i} policy.")
    asked: list[bool] = []
    answering = True

    def busy() -> bool:
        asked.append(answering)
        return answering

    kb = KnowledgeBase(
        settings((tmp_path / "d", "d")),
        db.db,
        load_embedder=lambda: Embedder(tiny_bert_path),
        busy=busy,
    )
    syncing = asyncio.create_task(kb.sync())
    await eventually(lambda: len(asked) > 3)
    assert not syncing.done() and (await kb.status()).documents == 0  # waiting, not indexing
    answering = False
    report = await syncing
    assert report.added == 3
    # A chat that is never idle still gets its documents indexed, MAX_PAUSE at a time.
    monkeypatch.setattr(knowledge.sync, "MAX_PAUSE", 0.01)
    answering = True
    write(tmp_path / "d", "doc3.md", "# Doc 3\n\nAnother hotel.")
    assert (await kb.sync()).added == 1
    await kb.close()


KILLED_SYNC = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from knowledge.base import KnowledgeBase
    from knowledge.config import KnowledgeSettings, SourceSettings
    from storage.sql import SqlRepository

    async def main():
        repo = SqlRepository({url!r})
        await repo.start()
        kb = KnowledgeBase(KnowledgeSettings(sources=[SourceSettings(path={docs!r})],
                                             embedding_model=""), repo.db)
        def progress(done, total, location):
            print(done, flush=True)
        await kb.sync(progress)

    asyncio.run(main())
    """
)


async def test_a_sync_killed_mid_way_leaves_a_consistent_index(db, tmp_path) -> None:
    docs = tmp_path / "docs"
    for i in range(40):
        body = "\n\n".join(f"## Part {j}\n\nRoom {i}-{j} holds {j + 4} people." for j in range(30))
        write(docs, f"room{i:02}.md", f"# Room {i}\n\n{body}")
    script = KILLED_SYNC.format(root=str(ROOT), url=db.url, docs=str(docs))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    while int(await child.stdout.readline()) < 5:  # the child reports each file it starts
        pass
    os.kill(child.pid, signal.SIGKILL)
    await child.wait()

    async with db.db.connect() as conn:
        documents = (await conn.execute(text("SELECT count(*) FROM kb_documents"))).scalar_one()
        broken = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM kb_documents d WHERE d.chunk_count != "
                    "(SELECT count(*) FROM kb_chunks c WHERE c.document_id = d.id)"
                )
            )
        ).scalar_one()
        chunks = (await conn.execute(text("SELECT count(*) FROM kb_chunks"))).scalar_one()
        indexed = (await conn.execute(text("SELECT count(*) FROM kb_fts_docsize"))).scalar_one()
        unfinished = (
            await conn.execute(text("SELECT count(*) FROM kb_syncs WHERE finished_at IS NULL"))
        ).scalar_one()
    assert 5 <= documents < 40 and broken == 0 and chunks == indexed and unfinished == 1

    kb = KnowledgeBase(settings((docs, "docs")), db.db)
    report = await kb.sync()
    assert (report.added, report.unchanged) == (40 - documents, documents)
    assert (await kb.retrieve("How many people does room 39-29 hold?"))[0].location == ("room39.md")


def test_kb_cli_sync_status_and_json_search(tmp_path: Path) -> None:
    write(tmp_path / "handbook", "travel.md", "# Travel\n\n## Hotels\n\nBerlin: EUR 165 a night.")
    write(tmp_path / "handbook", "bad.pdf", b"%PDF-1.4 broken")
    config = tmp_path / "edgeqa.toml"
    config.write_text(
        textwrap.dedent(
            """
            [history]
            database_url = "sqlite+aiosqlite:///kb.db"
            [knowledge]
            embedding_model = ""
            [[knowledge.sources]]
            path = "handbook"
            url_prefix = "https://wiki.example/"
            """
        )
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()

    def edgeqa(*args: str) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEQA_")}
        return subprocess.run(
            [sys.executable, "-m", "bot", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            cwd=elsewhere,  # source paths resolve against the config file, not the cwd
            env={**clean, "PYTHONPATH": str(ROOT)},
            timeout=120,
        )

    synced = edgeqa("kb", "sync")
    assert synced.returncode == 0, synced.stderr
    assert "1 added" in synced.stdout and "skipped bad.pdf: cannot parse pdf" in synced.stdout
    status = edgeqa("kb", "status")
    assert "documents: 1 (default 1)" in status.stdout and "bad.pdf" in status.stdout
    found = edgeqa("kb", "search", "hotel price in Berlin", "--json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert hits[0]["location"] == "travel.md" and hits[0]["title"] == "Travel"
    assert hits[0]["url"] == "https://wiki.example/travel.md" and "EUR 165" in hits[0]["text"]
    assert 0.3 <= hits[0]["score"] <= 1
    printed = edgeqa("kb", "search", "hotel price in Berlin")
    assert printed.stdout.startswith("1. ") and "travel.md > Travel > Hotels" in printed.stdout
    nothing = edgeqa("kb", "search", "football results on Mars", "--json")
    assert json.loads(nothing.stdout) == []


async def test_the_bot_syncs_its_sources_on_the_scheduler(tmp_path, tiny_model_path) -> None:
    write(tmp_path / "docs", "vpn.md", "# VPN\n\nA VPN configuration is valid for 21 days.")
    sources = json.dumps([{"path": str(tmp_path / "docs"), "collection": "it"}])
    config = test_settings(
        tmp_path,
        model=tiny_model_path,
        EDGEQA_KNOWLEDGE__SOURCES=sources,
        EDGEQA_KNOWLEDGE__EMBEDDING_MODEL="",
    )
    app = App(config, adapters=[])
    await app.start()
    try:
        kb = app.knowledge
        assert kb is not None
        await eventually(lambda: kb.stats.documents == 1)
        hits = await kb.retrieve("How long is a VPN configuration valid?")
        assert hits[0].collection == "it" and "21 days" in hits[0].text
        metrics = app.metrics.render()
        assert "edgeqa_kb_documents 1" in metrics and "edgeqa_kb_searches_total 1" in metrics
    finally:
        await app.stop(grace=5)


async def test_a_question_never_waits_for_the_embedding_model(db, tmp_path, tiny_bert_path) -> None:
    import threading

    garage_docs(tmp_path / "d")
    indexer = KnowledgeBase(
        settings((tmp_path / "d", "d")), db.db, load_embedder=lambda: Embedder(tiny_bert_path)
    )
    await indexer.sync()  # the vectors are in the index; this process has no model yet
    await indexer.close()
    release = threading.Event()

    def slow_load() -> Embedder:  # a download in progress
        release.wait(60)
        return Embedder(tiny_bert_path)

    kb = KnowledgeBase(
        settings((tmp_path / "d", "d"), min_score=0.05), db.db, load_embedder=slow_load
    )
    assert await locations(kb, "hotel refund policy") == ["hotels.md"]  # keywords, at once
    assert await kb.retrieve("Where is my vehicle?") == []
    release.set()
    await eventually(lambda: kb._embedder is not None)
    assert await locations(kb, "Where is my vehicle?", limit=1) == ["parking.md"]
    await kb.close()
