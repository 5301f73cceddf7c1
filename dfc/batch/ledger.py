"""The ledger: a JSONL file in the output folder recording every finished (or failed) video.

One writer (the coordinator) appends one line per video and fsyncs it, so a record is on the disk before
the next video is handed out, and a run killed at any moment loses at most the videos in progress. A
line torn by a crash mid-write can only be the last; it is dropped when the ledger is reopened. The first
line names the command and its settings: a resumed run must use the same ones.

JSONL rather than sqlite: there is exactly one writer, appends of whole lines are all that is needed,
the file can be read with `cat`/`jq` while a run goes on, and sqlite's locking is unreliable on the
network file systems (NFS) that multi-machine runs write to.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from common.atomic import StagedOutput
from dfc.errors import UserError

LEDGER_NAME = "dfc-ledger.jsonl"
STAGING_NAME = ".dfc-staging"  # where workers write a video's outputs until it is finished (dfc.batch.engine)
FORMAT = 1


def input_stamp(path: str | os.PathLike) -> dict[str, int | None]:
    """What identifies the version of an input that was processed: its size and modification time."""
    try:
        st = os.stat(path)
    except OSError:
        return {"size": None, "mtime_ns": None}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


class Ledger:
    def __init__(self, path: Path, header: dict[str, Any], records: list[dict[str, Any]]):
        self.path = path
        self.header = header
        self.records = records
        self._latest = {record.get("input"): record for record in records}
        self._file = None

    # ----------------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, out: Path, command: str, settings: dict[str, Any], *, force: bool) -> Ledger:
        """The ledger of output folder `out`: a new one, or the earlier run's to resume.

        A missing or empty `out` starts a new job. An `out` holding a ledger of the same command and
        settings resumes it. Anything else is refused unless `force` (then a new ledger starts there).
        """
        path = out / LEDGER_NAME
        header = {"ledger": FORMAT, "command": command, "settings": settings, "started": _now()}
        if out.exists() and not out.is_dir():
            raise UserError(f"{out}: exists and is not a folder; give a folder for the outputs")
        if not out.exists():
            if not out.absolute().parent.is_dir():
                raise UserError(f"{out}: the folder {out.absolute().parent} does not exist")
            out.mkdir()
        elif path.is_file() and not force and cls._read(path).records:
            ledger = cls._read(path)  # (a ledger with no video yet, e.g. the weights failed: start again)
            theirs = ledger.header
            if theirs.get("command") != command:
                raise UserError(
                    f"{out}: holds a `dfc {theirs.get('command')}` run; choose another folder or pass --force"
                )
            changed = _differences(theirs.get("settings", {}), settings)
            if changed:
                raise UserError(
                    f"{out}: holds a run with other settings ({changed}); use the same settings to resume "
                    "it, or another folder, or --force to start again"
                )
            ledger._truncate_torn_tail()
            return ledger
        elif any(p.name not in (LEDGER_NAME, STAGING_NAME) for p in out.iterdir()) and not force:
            raise UserError(
                f"{out}: exists and is not an empty folder, and holds no ledger of an earlier run to resume; "
                "choose a new folder or pass --force"
            )
        with StagedOutput(path, sync=True) as staged:
            with open(staged.tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(header) + "\n")
                f.flush()
                os.fsync(f.fileno())
            staged.commit()
        return cls(path, header, [])

    @classmethod
    def _read(cls, path: Path) -> Ledger:
        lines = path.read_bytes().split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # `tail` is b"" unless the last line was torn
        entries = []
        for number, line in enumerate(complete, 1):
            try:
                entries.append(json.loads(line))
            except ValueError:
                raise UserError(f"{path}: line {number} is damaged; the ledger cannot be resumed") from None
        del tail  # a torn last line is a record that was never completed: its video is redone
        if not entries or not isinstance(entries[0], dict) or entries[0].get("ledger") != FORMAT:
            raise UserError(f"{path}: not a dfc ledger (format {FORMAT})")
        return cls(path, entries[0], entries[1:])

    def _truncate_torn_tail(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)

    # ------------------------------------------------------------------------------------ reading

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last record of each input (absolute path)."""
        return self._latest

    def is_finished(self, input_path: str, stamp: dict[str, int | None]) -> bool:
        """Done before, on an input of the same size and modification time."""
        record = self._latest.get(input_path)
        return (
            record is not None
            and record.get("status") == "done"
            and record.get("size") == stamp["size"]
            and record.get("mtime_ns") == stamp["mtime_ns"]
        )

    # ------------------------------------------------------------------------------------ writing

    def append(self, record: dict[str, Any]) -> None:
        """One line, on the disk before this returns."""
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.append(record)
        self._latest[record["input"]] = record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k} {old.get(k)!r} then, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k))
