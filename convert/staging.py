"""The converter's output staged beside its destination (`common.atomic`), with the converter's errors."""

from __future__ import annotations

from pathlib import Path

from common.atomic import StagedOutput
from convert.options import ConvertError, Options


def stage(dst: Path, is_dir: bool, options: Options) -> StagedOutput:
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConvertError(f"{dst.parent}: cannot create the output directory ({err.strerror})") from None
    return StagedOutput(dst, is_dir=is_dir, replace=options.force, sync=options.sync)


def commit(staged: StagedOutput) -> None:
    try:
        staged.commit()
    except FileExistsError:
        raise ConvertError(
            f"{staged.dst} appeared while converting; not replacing it without --force"
        ) from None
