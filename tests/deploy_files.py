"""Readers for the deployment files, just enough to check what they claim in tests.

Docker cannot run here, so tests/test_deploy.py reads the Dockerfile and runs what the image
would run (the same argv, the same environment) outside Docker; the systemd unit is read the
same way. These parsers follow the formats' rules that matter for our files: Dockerfile line
continuations, comments, exec-form JSON, `ARG` defaults in `FROM`, `ENV k=v ...`; systemd's
repeated keys and time spans.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]

    def last(self, instruction: str) -> str:
        found = self.all(instruction)
        assert found, f"stage {self.name!r} has no {instruction}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                assert sep, f"ENV in the legacy `ENV key value` form: {args}"
                values[key] = value
        return values

    def exec_form(self, instruction: str) -> list[str]:
        value = json.loads(self.last(instruction))
        assert isinstance(value, list) and all(isinstance(v, str) for v in value)
        return value


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may sit between continued lines, as Docker allows
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a line continuation"
    result = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), " ".join(args.split())))
    return result


def dockerfile_stages(path: Path) -> list[Stage]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction, rest in dockerfile_instructions(path):
        if instruction == "ARG" and not stages:
            key, _, default = rest.partition("=")
            args[key] = default.strip('"')
        elif instruction == "FROM":
            words = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, words[0]))
        else:
            assert stages, f"{instruction} before the first FROM"
            stages[-1].instructions.append((instruction, rest))
    return stages


def healthcheck_command(stage: Stage) -> list[str]:
    """The exec-form command of the stage's HEALTHCHECK (after its --options)."""
    _options, sep, command = stage.last("HEALTHCHECK").partition(" CMD ")
    assert sep, "HEALTHCHECK without an exec-form CMD"
    value = json.loads(command)
    assert isinstance(value, list)
    return [str(v) for v in value]


def systemd_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections -> (key, value) in order; keys may repeat (Environment=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def unit_value(section: list[tuple[str, str]], key: str) -> str:
    values = [v for k, v in section if k == key]
    assert values, f"{key}= is missing"
    return values[-1]


_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|hr)?")
_SPAN_SECONDS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def systemd_seconds(value: str) -> float:
    """A systemd time span ("60s", "1min 30s", "90") in seconds."""
    total, pos = 0.0, 0
    text = value.strip()
    while pos < len(text):
        match = _SPAN.match(text, pos)
        assert match, f"not a time span: {value!r}"
        total += float(match.group(1)) * _SPAN_SECONDS[match.group(2) or "s"]
        pos = match.end()
        while pos < len(text) and text[pos] == " ":
            pos += 1
    return total


def systemd_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]?)", value.strip())
    assert match, f"not a byte size: {value!r}"
    return int(match.group(1)) * 1024 ** "_KMGT".index(match.group(2) or "_")
