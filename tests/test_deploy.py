"""The deployment files say what they do: Dockerfile, .dockerignore, docker-compose.yml and the
systemd unit in deploy/.

Docker cannot run here. Instead the image is rebuilt as far as it can be outside Docker: the
project wheel is built from exactly the sources the builder stage copies, and the image's
ENTRYPOINT + CMD runs from that wheel with the environment the image sets (its /data volume
moved to a temp dir, the port chosen by the OS), against the tiny model placed in the model
cache where the image looks for its default model. Its own HEALTHCHECK command then has to
pass, the browser chat has to want the token, and SIGTERM has to end it cleanly.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from bot.config import DEFAULT_MODEL, SECRET_ENV, Settings, load_settings
from tests.bot_process import ROOT, BotProcess, clean_environ
from tests.deploy_files import (
    Stage,
    dockerfile_stages,
    healthcheck_command,
    systemd_bytes,
    systemd_seconds,
    systemd_unit,
    unit_value,
)

VENV_BIN = Path(sys.executable).parent
TOKEN = "test-token-0123456789"
# The project's top-level packages, as pyproject.toml lists them for the wheel.
PACKAGES = {
    pattern.rstrip("*")
    for pattern in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
}


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages(ROOT / "Dockerfile")


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def image_env(runtime: Stage, data: Path, **extra: str) -> dict[str, str]:
    """The image's ENV with /data at `data`, outside Docker (this venv plays /opt/edgeqa/venv)."""
    env = clean_environ()
    for key, value in runtime.env().items():
        if key == "PATH":
            value = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        env[key] = value.replace("/data", str(data))
    return {**env, **extra}


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, **kwargs)


def test_dockerfile_builds_llama_cpp_once_and_runs_unprivileged(
    stages: list[Stage], runtime: Stage
) -> None:
    builder = next(s for s in stages if s.name == "builder")
    assert len(stages) == 2 and runtime.name == "runtime"
    assert builder.base == runtime.base == "python:3.11-slim"
    builds = " ".join(builder.all("RUN"))
    assert "build-essential" in builds and "cmake" in builds
    assert "pip wheel" in builds and "llama-cpp-python==" in builds
    # The runtime only copies the built venv: no compiler, no second build.
    runs = " ".join(runtime.all("RUN"))
    assert "build-essential" not in runs and "cmake" not in runs and "pip" not in runs
    assert any(c.startswith("--from=builder /opt/edgeqa/venv") for c in runtime.all("COPY"))

    user = runtime.last("USER")
    assert user not in ("root", "0") and f"useradd --system --uid 10001 --gid {user}" in runs
    assert runtime.exec_form("ENTRYPOINT") == ["edgeqa"] and runtime.exec_form("CMD") == ["run"]
    assert "/healthz" in " ".join(healthcheck_command(runtime))
    assert runtime.last("STOPSIGNAL") == "SIGTERM"

    env = runtime.env()
    assert runtime.last("EXPOSE") == env["EDGEQA_WEB__PORT"] == "8080"
    assert env["EDGEQA_WEB__HOST"] == "0.0.0.0"
    assert runtime.last("VOLUME") == '["/data"]' and runtime.last("WORKDIR") == "/data"
    assert env["EDGEQA_ENGINE__MODEL_DIR"].startswith("/data/")
    assert make_url(env["EDGEQA_HISTORY__DATABASE_URL"]).database == "/data/edgeqa.db"
    # No secret is baked into the image.
    baked = " ".join(
        args for s in stages for name, args in s.instructions if name in ("ENV", "ARG")
    )
    assert not any(secret in baked for secret in SECRET_ENV.values())


def test_dockerignore_keeps_data_models_and_secrets_out_of_the_build(stages: list[Stage]) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for pattern in (".git", ".venv", "data/", "*.gguf", "*.db", ".env", "edgeqa.toml"):
        assert pattern in ignored
    copied = [word for c in stages[0].all("COPY") for word in c.split()[:-1]]
    assert set(copied) == {"pyproject.toml", "setup.py", "README.md", *PACKAGES}
    assert not [(c, p) for c in copied for p in ignored if fnmatch(c, p.rstrip("/"))]


def build_wheel_like_the_builder(stages: list[Stage], tmp_path: Path) -> Path:
    """`pip wheel /src` on the files the builder stage COPYs; unpacked, it is what the image
    installs. Returns the unpacked directory."""
    src = tmp_path / "src"
    for copy in stages[0].all("COPY"):
        *sources, _target = copy.split()
        for name in sources:
            origin = ROOT / name
            if origin.is_dir():
                # As in a clean checkout: no compiled catalogs (the build makes them).
                ignore = shutil.ignore_patterns("__pycache__", "*.mo")
                shutil.copytree(origin, src / name, ignore=ignore)
            else:
                src.mkdir(exist_ok=True)
                shutil.copy(origin, src / name)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("--wheel-dir", str(tmp_path / "wheels"), str(src)),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    [wheel] = (tmp_path / "wheels").glob("edgeqa-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    assert "storage/migrations/versions/0001_initial.py" in names
    assert {f"{package}/__init__.py" for package in PACKAGES} <= set(names)
    assert "adapters/web/static/index.html" in names
    # The catalogs compiled by the build (the .mo files are not in git).
    assert "bot/locales/zh/LC_MESSAGES/edgeqa.mo" in names
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "edgeqa = bot.cli:main" in (site / entry_points).read_text()
    return site


@pytest.mark.timeout(120)
async def test_the_image_command_serves_healthz_and_stops_on_sigterm(
    stages: list[Stage], runtime: Stage, tmp_path: Path, tiny_model_path: Path
) -> None:
    site = build_wheel_like_the_builder(stages, tmp_path)
    data = tmp_path / "data"
    # The default model, as a first start would have left it in the model cache volume.
    env = image_env(runtime, data, EDGEQA_WEB__PORT="0", EDGEQA_WEB_TOKEN=TOKEN)
    cached = Path(env["EDGEQA_ENGINE__MODEL_DIR"], DEFAULT_MODEL)
    cached.parent.mkdir(parents=True)
    shutil.copy(tiny_model_path, cached)
    env["PYTHONPATH"] = str(site)  # the wheel's code, not this checkout's
    where = ["python", "-c", "import bot.cli, storage.migrate; print(bot.cli.__file__)"]
    assert run(where, env=env, cwd=tmp_path).stdout.startswith(str(site))

    command = runtime.exec_form("ENTRYPOINT") + runtime.exec_form("CMD")
    cwd = Path(runtime.last("WORKDIR").replace("/data", str(data)))
    async with BotProcess(env, tmp_path / "bot.log", argv=command, cwd=cwd) as bot:
        check = healthcheck_command(runtime)
        probe = {**env, "EDGEQA_WEB__PORT": str(bot.port)}
        assert (await asyncio.to_thread(run, check, env=probe)).returncode == 0

        # Listening on all interfaces, the chat wants the token; health and metrics do not.
        params = {"browser": "browser-0001", "thread": "thread-0001"}
        async with bot.http.get("/api/history", params=params) as response:
            assert response.status == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with bot.http.get("/api/history", params=params, headers=bearer) as response:
            assert response.status == 200
        async with bot.http.get("/metrics") as response:
            assert response.status == 200

        bot.send(signal.SIGTERM)
        assert await bot.wait_exit(within=45) == 0
        assert (await asyncio.to_thread(run, check, env=probe)).returncode != 0
    assert (data / "edgeqa.db").is_file()
    log = bot.log_text()
    assert f"model {cached.name} ready" in log  # found in the cache, not downloaded
    assert "http://0.0.0.0:" in log and TOKEN not in log


@pytest.mark.parametrize("token", [None, ""], ids=["unset", "empty"])
def test_the_image_refuses_to_open_the_chat_without_a_token(
    runtime: Stage, tmp_path: Path, token: str | None
) -> None:
    extra = {"EDGEQA_WEB__PORT": "0"} | ({} if token is None else {"EDGEQA_WEB_TOKEN": token})
    command = runtime.exec_form("ENTRYPOINT") + runtime.exec_form("CMD")
    result = subprocess.run(
        command,
        env=image_env(runtime, tmp_path, **extra),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "EDGEQA_WEB_TOKEN" in result.stderr and len(result.stderr.splitlines()) == 1


def test_compose_runs_the_bot_on_postgres_with_secrets_from_the_host(runtime: Stage) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    db, bot = compose["services"]["db"], compose["services"]["bot"]
    assert db["image"] == "postgres:16" and "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert bot["build"] == "." and bot["depends_on"] == {"db": {"condition": "service_healthy"}}

    env = dict(item.partition("=")[::2] for item in bot["environment"])
    # Every secret comes from the host: passed through by name or as ${SAME_NAME...}.
    for name in [*SECRET_ENV.values(), "EDGEQA_HISTORY__DATABASE_URL"]:
        assert name in env, f"{name} is not passed to the bot"
    for name, value in env.items():
        if name in SECRET_ENV.values():
            assert value in ("", f"${{{name}}}") or value.startswith(f"${{{name}:")
    assert db["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")

    url = make_url(
        env["EDGEQA_HISTORY__DATABASE_URL"].replace(
            "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}", "pw"
        )
    )
    assert (url.drivername, url.host, url.password) == ("postgresql+asyncpg", "db", "pw")
    assert (url.username, url.database) == (
        db["environment"]["POSTGRES_USER"],
        db["environment"]["POSTGRES_DB"],
    )
    assert any(v.endswith(":/data") for v in bot["volumes"])
    assert bot["ports"] == [f"{runtime.last('EXPOSE')}:{runtime.last('EXPOSE')}"]
    grace = Settings().bot.shutdown_grace
    assert systemd_seconds(bot["stop_grace_period"]) >= grace + 15


def test_systemd_unit_restarts_on_failure_within_limits_and_outlasts_the_grace() -> None:
    unit = systemd_unit(ROOT / "deploy/edgeqa.service")
    service = unit["Service"]
    assert unit_value(service, "Restart") == "on-failure"
    assert unit_value(service, "User") == "edgeqa"
    assert unit_value(service, "KillSignal") == "SIGTERM"
    assert unit_value(service, "EnvironmentFile") == "/etc/edgeqa/env"
    high, most = (systemd_bytes(unit_value(service, k)) for k in ("MemoryHigh", "MemoryMax"))
    assert 512 * 2**20 <= high < most
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
    ]:
        assert unit_value(service, key) == value

    program, *args = unit_value(service, "ExecStart").split()
    assert program == "/opt/edgeqa/.venv/bin/edgeqa" and args[:2] == ["run", "--config"]
    # The settings file the unit names is deploy/edgeqa.toml, installed there.
    settings = load_settings(ROOT / "deploy/edgeqa.toml", env={})
    assert args[2] == "/etc/edgeqa/edgeqa.toml"
    stop = systemd_seconds(unit_value(service, "TimeoutStopSec"))
    assert stop >= settings.bot.shutdown_grace + 15
    # What the service writes lies inside the paths it may write.
    writable = unit_value(service, "ReadWritePaths").split()
    database = Path(str(make_url(settings.history.database_url).database))
    for path in (database, Path(settings.engine.model_dir)):
        assert any(path.is_relative_to(root) for root in writable), path
    # Every secret has its line in the template of /etc/edgeqa/env.
    template = (ROOT / "deploy/env.example").read_text()
    assert all(f"{name}=" in template for name in SECRET_ENV.values())


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify also checks that ExecStart's program exists: point it at this venv's edgeqa.
    text = (ROOT / "deploy/edgeqa.service").read_text()
    unit = tmp_path / "edgeqa.service"
    unit.write_text(text.replace("/opt/edgeqa/.venv/bin/edgeqa", str(VENV_BIN / "edgeqa")))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    # It reports bad lines as warnings with exit status 0, so the output must be empty too.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
