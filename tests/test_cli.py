"""The `edgeqa` command as an operator meets it: clear one-line failures, db maintenance."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def edgeqa(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEQA_")}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**clean, **env},
        timeout=60,
    )


def last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_missing_model_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    result = edgeqa(tmp_path, "run", EDGEQA_MODEL=str(tmp_path / "nope.gguf"))
    assert result.returncode == 1
    line = last_line(result)
    assert line.startswith("edgeqa: ") and "EDGEQA_MODEL" in line


def test_a_file_that_is_not_a_model_is_refused_cleanly(tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\x00" * 10)  # the magic, then nothing sensible
    result = edgeqa(tmp_path, "run", EDGEQA_MODEL=str(fake))
    assert result.returncode == 1
    assert "fake.gguf" in last_line(result)


def test_a_taken_port_is_one_line(tmp_path: Path, tiny_model_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = edgeqa(
            tmp_path, "run", EDGEQA_MODEL=str(tiny_model_path), EDGEQA_WEB__PORT=str(port)
        )
    assert result.returncode == 1
    line = last_line(result)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "EDGEQA_WEB__PORT" in line


def test_db_upgrade_and_prune(tmp_path: Path) -> None:
    result = edgeqa(tmp_path, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert "database is at revision" in result.stdout
    assert (tmp_path / "data" / "edgeqa.db").exists()
    result = edgeqa(tmp_path, "db", "prune", EDGEQA_HISTORY__TTL="1m")
    assert result.returncode == 0, result.stderr
    assert "pruned 0 conversation(s) idle longer than 60s" in result.stdout
