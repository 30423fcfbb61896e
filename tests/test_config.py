"""Settings: file + environment, one clear line for every mistake."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from bot.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def _no_local_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own edgeqa.toml must not leak into these tests."""
    monkeypatch.chdir(tmp_path)


def test_defaults_are_the_embedded_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.web_chat_enabled
    assert (settings.web.host, settings.web.port) == ("127.0.0.1", 8080)
    assert settings.history.database_url == "sqlite+aiosqlite:///./data/edgeqa.db"
    assert settings.history.ttl == 24 * 3600 and settings.history.prune_interval == 300
    assert settings.bot.context_tokens == 2048 and settings.bot.rate_limit_per_minute == 10
    assert (settings.engine.temperature, settings.engine.top_p) == (0.7, 0.9)
    assert settings.engine.max_tokens == 512


def test_file_then_environment_overrides(tmp_path: Path) -> None:
    config = tmp_path / "edgeqa.toml"
    config.write_text('[web]\nport = 9000\n[history]\nttl = "30m"\n[telegram]\nadmins = [42]\n')
    settings = load_settings(config, env={"EDGEQA_WEB__PORT": "8081", "EDGEQA_MODEL": "/m.gguf"})
    assert settings.web.port == 8081  # the environment wins
    assert settings.history.ttl == 1800
    assert settings.telegram.admins == ["42"]
    assert settings.model_ref == "/m.gguf"


def test_example_config_is_valid_and_documents_every_setting() -> None:
    example = Path(__file__).parent.parent / "config.example.toml"
    settings = load_settings(example, env={})
    raw = example.read_text()
    data = tomllib.loads(raw)
    sections = ("engine", "bot", "history", "web", "telegram", "slack", "knowledge", "log")
    assert set(data) == set(sections)
    for section in sections:
        model = getattr(settings, section)
        # Lists of tables (knowledge.sources) are documented by a commented-out example.
        examples = {f for f in type(model).model_fields if f"# [[{section}.{f}]]" in raw}
        assert set(data[section]) | examples == set(type(model).model_fields), section
        # ...and the values written there are the defaults.
        assert model == type(model)(), section


@pytest.mark.parametrize(
    ("env", "file", "expected"),
    [
        ({"EDGEQA_WEB__PORT": "eighty"}, "", "web.port"),
        ({}, "[web]\nport = 'x'\n", "web.port"),
        ({}, "[web]\nprot = 1\n", "unknown setting web.prot"),
        ({}, "[nope]\na = 1\n", "unknown setting nope"),
        ({"EDGEQA_HISTORY__TTL": "soon"}, "", "history.ttl"),
        ({"EDGEQA_TELEGRAM__ENABLED": "true"}, "", "EDGEQA_TELEGRAM_TOKEN"),
        ({"EDGEQA_SLACK__ENABLED": "1"}, "", "EDGEQA_SLACK_BOT_TOKEN"),
        (
            {"EDGEQA_SLACK__ENABLED": "1", "EDGEQA_SLACK_BOT_TOKEN": "xoxb-1"},
            "",
            "EDGEQA_SLACK_APP_TOKEN",
        ),
        ({"EDGEQA_WEB__HOST": "0.0.0.0"}, "", "EDGEQA_WEB_TOKEN"),
        ({}, "[telegram]\ntoken = 'abc'\n", "EDGEQA_TELEGRAM_TOKEN"),
        ({}, "[web\n", "not valid TOML"),
    ],
)
def test_mistakes_stop_with_one_line_naming_the_setting(
    tmp_path: Path, env: dict[str, str], file: str, expected: str
) -> None:
    path = tmp_path / "edgeqa.toml"
    path.write_text(file)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_tokens_are_never_printed() -> None:
    settings = load_settings(env={"EDGEQA_TELEGRAM_TOKEN": "123:supersecret"})
    assert "supersecret" not in repr(settings)
    assert "supersecret" not in str(settings.model_dump())


def test_check_config_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[web]\nport = -1\n")
    run = [sys.executable, "-m", "bot", "check-config"]
    result = subprocess.run([*run, "--config", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "web.port" in result.stderr

    good = tmp_path / "good.toml"
    good.write_text("[web]\nport = 8099\n")
    result = subprocess.run([*run, "--config", str(good)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "8099" in result.stdout
