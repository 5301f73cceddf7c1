"""Decoding a `.dfc` file clip by clip into frames at the source size, one frame at a time: peak memory
is one batch of model-size clips plus one source-size frame, whatever the video's length."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from dfc.codec import check_model_fits, decode_clips
from dfc.container import CompressedVideo
from dfc.video import restore_frames


def _consecutive_batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Runs of consecutive clips of one length, at most `batch_size` long, in order."""
    batch: list[int] = []
    for index, length in enumerate(lengths):
        if batch and (len(batch) == batch_size or lengths[batch[0]] != length):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def output_size(cv: CompressedVideo, full_frame: bool = True) -> tuple[int, int]:
    """(width, height) of the frames `iter_frames` yields."""
    crop = cv.crop
    if full_frame:
        return crop.source_width, crop.source_height
    return crop.width, crop.height


def iter_frames(
    vae, cv: CompressedVideo, *, full_frame: bool = True, batch_size: int = 4, progress: bool = False
) -> Iterator[np.ndarray]:
    """uint8 frames `(H, W, 3)` of the whole video, in order, decoded a batch of clips at a time."""
    from tqdm.auto import tqdm

    check_model_fits(vae, cv)
    with tqdm(total=cv.num_frames, desc="decoding", unit="frame", disable=not progress, leave=False) as bar:
        for members in _consecutive_batches([c.num_frames for c in cv.clips], batch_size):
            decoded = decode_clips(vae, [cv.clips[i] for i in members], batch_size=len(members))
            for frame in decoded:
                yield restore_frames(frame[None], cv.crop, full_frame=full_frame)[0]
                bar.update(1)
            del decoded
