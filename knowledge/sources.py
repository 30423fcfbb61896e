"""Finding the files of each `[[knowledge.sources]]` entry, and what is wrong with the rest.

A source is a folder (walked recursively, following links) or a glob ("wiki/**/*.md").
Only the formats in `readers.SUFFIXES` are taken; hidden files and folders (.git) and
other files are passed over without a word, since a docs folder always has some. A file
that should be read but cannot be (a link loop, a dangling link, no permission, over the
size cap) becomes a `Problem`: one log line, listed by `edgeqa kb status`, the rest goes on.

A source folder that is missing as a whole is a problem too, and its documents stay in the
index: a vanished folder is more often an unmounted share than a deliberate deletion. To
drop them, remove the source from the config.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from knowledge.config import SourceSettings
from knowledge.readers import SUFFIXES

log = logging.getLogger(__name__)

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True, slots=True)
class FoundFile:
    source: SourceSettings
    path: Path
    location: str  # relative to the source's folder, with "/" separators
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Problem:
    source: str
    location: str
    reason: str


@dataclass
class Scan:
    files: list[FoundFile]
    problems: list[Problem]
    missing_sources: set[str]  # sources whose folder is gone: keep their documents


def scan_sources(sources: list[SourceSettings], max_bytes: int) -> Scan:
    result = Scan([], [], set())
    for source in sources:
        _scan_one(source, max_bytes, result)
    return result


def _scan_one(source: SourceSettings, max_bytes: int, out: Scan) -> None:
    raw = os.path.expanduser(source.path)
    if _GLOB_CHARS & set(raw):
        base = Path(_glob_base(raw))
        if not base.is_dir():
            _missing(source, out)
            return
        paths: Iterator[Path] = (
            Path(p) for p in sorted(glob.glob(raw, recursive=True)) if not os.path.isdir(p)
        )
    else:
        base = Path(raw)
        if base.is_file():
            paths, base = iter([base]), base.parent
        elif not base.is_dir():
            _missing(source, out)
            return
        else:
            paths = _walk(base, source, out)
    for path in paths:
        if path.suffix.lower() not in SUFFIXES or _hidden(path.relative_to(base)):
            continue
        location = path.relative_to(base).as_posix()
        try:
            info = os.stat(path)  # follows links: a loop or a dangling link fails here
        except OSError as exc:
            _problem(out, source, location, exc.strerror or type(exc).__name__)
            continue
        if not stat.S_ISREG(info.st_mode):
            _problem(out, source, location, "not a regular file")
        elif not os.access(path, os.R_OK):
            _problem(out, source, location, "permission denied")
        elif info.st_size > max_bytes:
            _problem(
                out,
                source,
                location,
                f"too large ({_size(info.st_size)}; the limit is {_size(max_bytes)})",
            )
        else:
            out.files.append(FoundFile(source, path, location, info.st_size, info.st_mtime_ns))


def _walk(base: Path, source: SourceSettings, out: Scan) -> Iterator[Path]:
    """Files under `base`, following folder links but never into a folder twice (loops)."""
    seen: set[str] = set()

    def on_error(exc: OSError) -> None:
        where = Path(exc.filename).relative_to(base).as_posix() if exc.filename else "."
        _problem(out, source, where, f"cannot list folder: {exc.strerror}")

    for folder, dirs, files in os.walk(base, followlinks=True, onerror=on_error):
        real = os.path.realpath(folder)
        if real in seen:
            _problem(out, source, Path(folder).relative_to(base).as_posix(), "link loop")
            dirs.clear()
            continue
        seen.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            yield Path(folder) / name


def _glob_base(pattern: str) -> str:
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))]]
    return str(Path(*fixed)) if fixed else "."


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _missing(source: SourceSettings, out: Scan) -> None:
    out.missing_sources.add(source.path)
    _problem(out, source, ".", "source folder not found; its documents are kept")


def _problem(out: Scan, source: SourceSettings, location: str, reason: str) -> None:
    log.warning("knowledge: skipping %s/%s: %s", source.path, location, reason)
    out.problems.append(Problem(source.path, location, reason))
