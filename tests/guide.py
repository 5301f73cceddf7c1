"""A markdown guide as the steps a reader takes, so a test can take them too and the guide stays true.

Fenced blocks, in the order they appear:

- ```python: code the reader runs, in one namespace, in the guide's working folder. A block whose first
  line is `# examples/gpt2/table.py` (a path in the repository) shows that file, or a part of it: it is not
  run, it must appear in the file line for line (the file is what the commands use).
- ```console: `$ dfc ARGS` prompts, each followed by what it prints. A shown line `...` stands for any
  number of lines; every other shown line must appear in the command's output, in the order shown. A
  prompt ending in `# exit N` must exit with N, any other with 0.
- ```text whose first line is `# PATH` (a path in the guide's working folder): an excerpt of a file the
  walk wrote so far, read like a command's output (`...` for lines left out, the rest in order).
- any other fence (```bash, ```text without a path) is for reading only.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.M | re.S)
_SHOWN_FILE = re.compile(r"^# ((?:[\w.-]+/)+[\w.-]+\.py)\s*$")
_WRITTEN_FILE = re.compile(r"^# ([\w./-]+)\s*$")
_EXIT = re.compile(r"\s+#\s*exit\s+(\d+)\s*$")


@dataclass
class Code:
    source: str
    line: int  # where the block starts in the guide (1-based), for messages


@dataclass
class ShownFile:
    path: str
    lines: list[str]
    line: int


@dataclass
class Command:
    args: list[str]
    exit_code: int
    shown: list[str] = field(default_factory=list)
    line: int = 0

    @property
    def text(self) -> str:
        return "dfc " + shlex.join(self.args)


@dataclass
class WrittenFile:
    path: str  # relative to the guide's working folder
    shown: list[str]
    line: int


Step = Code | ShownFile | Command | WrittenFile


def steps(text: str) -> list[Step]:
    out: list[Step] = []
    for match in _FENCE.finditer(text):
        language, body = match.group(1), match.group(2)
        line = text.count("\n", 0, match.start()) + 1
        if language == "python":
            first, _, rest = body.partition("\n")
            shown = _SHOWN_FILE.match(first)
            if shown:
                out.append(ShownFile(shown.group(1), rest.splitlines(), line))
            else:
                out.append(Code(body, line))
        elif language == "console":
            out.extend(_commands(body, line))
        elif language == "text":
            first, _, rest = body.partition("\n")
            written = _WRITTEN_FILE.match(first)
            if written:
                out.append(WrittenFile(written.group(1), [x.rstrip() for x in rest.splitlines()], line))
    return out


def _commands(body: str, line: int) -> list[Command]:
    commands: list[Command] = []
    for offset, raw in enumerate(body.splitlines(), start=1):
        if raw.startswith("$ "):
            prompt = raw[2:]
            code = 0
            exit_match = _EXIT.search(prompt)
            if exit_match:
                code, prompt = int(exit_match.group(1)), prompt[: exit_match.start()]
            words = shlex.split(prompt)
            if not words or words[0] != "dfc":
                raise ValueError(f"guide line {line + offset}: only `$ dfc ...` prompts are run: {raw!r}")
            commands.append(Command(words[1:], code, [], line + offset))
        elif commands:
            commands[-1].shown.append(raw.rstrip())
        elif raw.strip():
            raise ValueError(f"guide line {line + offset}: output before any `$ dfc` prompt: {raw!r}")
    return commands


def shown_in_file(shown: ShownFile, repo: Path) -> str | None:
    """None when the shown lines appear in the file, contiguously; otherwise what is wrong."""
    path = repo / shown.path
    if not path.is_file():
        return f"guide line {shown.line}: {shown.path} does not exist"
    lines = [line.rstrip() for line in path.read_text().splitlines()]
    want = [line.rstrip() for line in shown.lines]
    while want and not want[-1]:
        want.pop()
    for start in range(len(lines) - len(want) + 1):
        if lines[start : start + len(want)] == want:
            return None
    return f"guide line {shown.line}: the block is not a part of {shown.path} as it is now"


def missing_output(command: Command | WrittenFile, output: str) -> str | None:
    """None when every shown line appears in `output` in the order shown; otherwise the first one that
    does not."""
    actual = [line.rstrip() for line in output.splitlines()]
    position = 0
    for want in command.shown:
        if want.strip() in ("", "..."):
            continue
        try:
            position = actual.index(want, position) + 1
        except ValueError:
            return want
    return None
