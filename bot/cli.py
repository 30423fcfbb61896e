"""`edgeqa` / `python -m bot`: run the bot, check the config, manage the database and model."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from adapters.base import PlatformError, StartError
from bot.config import ConfigError, Settings, load_settings
from llm.base import ModelError


def main(argv: Sequence[str] | None = None) -> int:
    # --config is accepted before or after the command ("edgeqa check-config --config x").
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="settings file (default: ./edgeqa.toml)",
    )
    parser = argparse.ArgumentParser(prog="edgeqa", description=__doc__, parents=[common])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="start the bot (default)")
    commands.add_parser("check-config", parents=[common], help="validate the settings only")
    db = commands.add_parser("db", help="database maintenance").add_subparsers(
        dest="db_command", metavar="ACTION", required=True
    )
    db.add_parser("upgrade", parents=[common], help="create or upgrade the schema")
    db.add_parser("prune", parents=[common], help="delete expired conversations now")
    model = commands.add_parser("model", help="the GGUF model").add_subparsers(
        dest="model_command", metavar="ACTION", required=True
    )
    model.add_parser("pull", parents=[common], help="download the configured model")
    model.add_parser("path", parents=[common], help="print the model's path (pulls if needed)")
    kb = commands.add_parser("kb", help="the knowledge base").add_subparsers(
        dest="kb_command", metavar="ACTION", required=True
    )
    kb.add_parser("sync", parents=[common], help="index new and changed documents now")
    kb.add_parser("status", parents=[common], help="documents, chunks, skipped files")
    search = kb.add_parser("search", parents=[common], help="ranked passages for a question")
    search.add_argument("query", help="the question")
    search.add_argument("--json", action="store_true", help="print a JSON list of hits")
    search.add_argument("--limit", type=int, default=4, help="hits at most (default 4)")
    search.add_argument(
        "--collection", action="append", help="search only this collection (repeatable)"
    )
    search.add_argument(
        "--min-score", type=float, help="override knowledge.min_score (0 shows every hit)"
    )
    args = parser.parse_args(argv)

    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"edgeqa: {exc}", file=sys.stderr)
        return 2
    try:
        return _dispatch(args, settings)
    except (ModelError, StartError, PlatformError) as exc:
        print(f"edgeqa: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    command = args.command or "run"
    if command == "check-config":
        print(describe(settings))
        return 0
    if command == "db":
        return asyncio.run(_db(args.db_command, settings))
    if command == "kb":
        return asyncio.run(_kb(args, settings))
    if command == "model":
        from llm.model_files import pull_model, resolve_model

        if args.model_command == "pull":
            print(pull_model(settings.model_ref, settings.engine.model_dir))
        else:
            print(resolve_model(settings.model_ref, settings.engine.model_dir))
        return 0
    from bot.app import App, serve
    from bot.logs import setup_logging

    setup_logging(settings)
    asyncio.run(serve(App(settings)))
    return 0


async def _db(action: str, settings: Settings) -> int:
    from bot.logs import setup_logging
    from storage.migrate import upgrade
    from storage.pruning import prune_once

    setup_logging(settings)
    url = settings.history.database_url
    if action == "upgrade":
        revision = await upgrade(url)
        print(f"database is at revision {revision}")
    else:
        removed = await prune_once(url, settings.history.ttl)
        print(f"pruned {removed} conversation(s) idle longer than {settings.history.ttl:g}s")
    return 0


async def _kb(args: argparse.Namespace, settings: Settings) -> int:
    from bot.logs import setup_logging
    from knowledge.commands import run_kb

    setup_logging(settings)
    return await run_kb(
        args.kb_command,
        settings,
        query=getattr(args, "query", ""),
        as_json=getattr(args, "json", False),
        limit=getattr(args, "limit", 4),
        collections=getattr(args, "collection", None),
        min_score=getattr(args, "min_score", None),
    )


def describe(settings: Settings) -> str:
    """What the settings amount to, without secrets."""
    adapters = [
        name
        for name, on in (
            ("browser chat", settings.web_chat_enabled),
            ("telegram", settings.telegram.enabled),
            ("slack", settings.slack.enabled),
        )
        if on
    ]
    return "\n".join(
        [
            "configuration OK",
            f"  adapters: {', '.join(adapters) or 'none'}",
            f"  http:     http://{settings.web.host}:{settings.web.port}",
            f"  engine:   {settings.engine.kind}, model {settings.model_ref}",
            f"  history:  {_safe_url(settings.history.database_url)}, "
            f"ttl {settings.history.ttl:g}s, pruned every {settings.history.prune_interval:g}s",
        ]
    )


def _safe_url(url: str) -> str:
    """Hide a password in a database URL."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparseable database URL)"


if __name__ == "__main__":
    sys.exit(main())
