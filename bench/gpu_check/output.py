"""The output folder of a run: one folder per stage, a summary of all of them, and one archive of it all.

Each stage's `result.json` and `summary.md` are written the moment it finishes, then `summary.md` and
`results.json` at the top are rewritten and the archive is packed again, atomically (a run killed while
packing leaves the previous archive whole). A lent GPU returns at most 8 files of 16 MiB: the archive,
the summary and the log are three.
"""

from __future__ import annotations

import json
import math
import os
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARCHIVE = "gpu-check.tar.gz"
SUMMARY = "gpu-check-summary.md"
ARCHIVE_LIMIT = 16 * 2**20  # one file back from a lent GPU
BULKY = ("report.json",)  # left out of the archive first when it would not fit


@dataclass
class StageResult:
    name: str
    status: str  # "ran", "error", "skipped"
    seconds: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)
    markdown: str = ""
    verdict: str = ""  # one line: what the stage found

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "verdict": self.verdict,
            **self.data,
        }


def jsonable(value: Any) -> Any:
    """JSON has no inf/nan or numpy scalars: plain floats (4 significant digits), strings for the rest."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):  # numpy scalar
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.4g}") if math.isfinite(value) else str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def write_text(path: Path, text: str) -> None:
    """Whole or not at all: written beside, then renamed over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


class Output:
    def __init__(self, folder: Path, archive_dir: Path | None, header: dict[str, Any]):
        self.folder = Path(folder)
        self.archive_dir = Path(archive_dir) if archive_dir else self.folder
        self.header = header
        self.results: dict[str, StageResult] = {}
        self.folder.mkdir(parents=True, exist_ok=True)
        self.archive_dir.mkdir(parents=True, exist_ok=True)

    def stage_dir(self, index: int, name: str) -> Path:
        path = self.folder / f"{index:02d}-{name}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def record(self, index: int, result: StageResult) -> None:
        folder = self.stage_dir(index, result.name)
        write_text(folder / "result.json", json.dumps(jsonable(result.as_dict()), indent=1) + "\n")
        write_text(folder / "summary.md", result.markdown or f"# {result.name}\n\n{result.verdict}\n")
        self.results[result.name] = result
        self.flush()

    def summary_markdown(self) -> str:
        h = self.header
        lines = [
            "# GPU check",
            "",
            f"Command: `{h['command']}`",
            "",
            f"Device `{h['device']}`, sizes `{h['config']}`; {h.get('machine', '')}",
            "",
            "| stage | status | seconds | verdict |",
            "|---|---|---|---|",
        ]
        for r in self.results.values():
            lines.append(f"| {r.name} | {r.status} | {r.seconds:.1f} | {r.verdict} |")
        for r in self.results.values():  # each stage's own summary, its headings one level down
            text = r.markdown.strip().splitlines()
            lines += ["", *(f"#{line}" if line.startswith("#") else line for line in text)]
        return "\n".join(lines) + "\n"

    def flush(self) -> Path:
        """Rewrite the summaries and pack the archive again; returns the archive's path."""
        summary = self.summary_markdown()
        write_text(self.folder / "summary.md", summary)
        results = {"header": self.header, "stages": [r.as_dict() for r in self.results.values()]}
        write_text(self.folder / "results.json", json.dumps(jsonable(results), indent=1) + "\n")
        if self.archive_dir != self.folder:
            write_text(self.archive_dir / SUMMARY, summary)
        return self.pack()

    def pack(self) -> Path:
        target = self.archive_dir / ARCHIVE
        left_out: list[str] = []
        for skip in ((), BULKY):
            fd, tmp = tempfile.mkstemp(dir=self.archive_dir, prefix=f".{ARCHIVE}.")
            os.close(fd)
            with tarfile.open(tmp, "w:gz") as tar:
                for path in sorted(self.folder.rglob("*")):
                    if not path.is_file() or path.name.startswith(".") or path == target:
                        continue
                    if path.name in skip:
                        left_out.append(str(path.relative_to(self.folder)))
                        continue
                    tar.add(path, arcname=str(Path(self.folder.name) / path.relative_to(self.folder)))
            if os.path.getsize(tmp) <= ARCHIVE_LIMIT or skip:
                break
            os.unlink(tmp)
        os.replace(tmp, target)
        if left_out:
            write_text(self.folder / "left-out-of-archive.txt", "\n".join(left_out) + "\n")
        return target
