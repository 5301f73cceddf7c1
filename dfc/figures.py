"""Pictures for people: labelled side-by-side videos, sample grids and frame-keep timelines.

Videos are uint8 `(T, H, W, 3)`. Tiles are enlarged (nearest neighbour) to at least `MIN_TILE` pixels so
the small test models still give a figure one can look at and label.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

MIN_TILE = 128
LABEL_HEIGHT = 14
_BACKGROUND = 255


def labelled_grid(videos: Sequence[np.ndarray], labels: Sequence[str], columns: int) -> np.ndarray:
    """One uint8 video `(T_max, rows*h, columns*w, 3)` with a caption above each tile.

    Videos may differ in length (generated samples do): a shorter one holds its last frame, so every tile
    stays visible for the whole loop.
    """
    if not videos:
        raise ValueError("no videos to lay out")
    if len(labels) != len(videos):
        raise ValueError(f"{len(videos)} videos but {len(labels)} labels")
    tiles = [_captioned(_enlarged(v), label) for v, label in zip(videos, labels)]
    height, width = tiles[0].shape[1:3]
    length = max(t.shape[0] for t in tiles)
    rows = -(-len(tiles) // columns)
    canvas = np.full((length, rows * height, columns * width, 3), _BACKGROUND, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        held = np.concatenate([tile, np.repeat(tile[-1:], length - tile.shape[0], axis=0)])
        canvas[:, r * height : (r + 1) * height, c * width : (c + 1) * width] = held
    return canvas


def side_by_side(videos: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """Labelled videos in one row: `Original | Top-16 | ...`."""
    return labelled_grid(videos, labels, columns=len(videos))


def _enlarged(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video, dtype=np.uint8)
    factor = max(1, -(-MIN_TILE // min(video.shape[1:3])))
    return video.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else video


def _captioned(video: np.ndarray, label: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    width = video.shape[2]
    strip = Image.new("RGB", (width, LABEL_HEIGHT), (_BACKGROUND,) * 3)
    ImageDraw.Draw(strip).text((2, 1), label, fill=(0, 0, 0), font=ImageFont.load_default())
    caption = np.broadcast_to(np.asarray(strip), (video.shape[0], LABEL_HEIGHT, width, 3))
    return np.concatenate([caption, video[..., :3]], axis=1)


def keep_timeline(
    path: str | Path,
    title: str,
    probabilities: np.ndarray,
    bernoulli_keeps: np.ndarray,
    topk_keeps: dict[str, np.ndarray],
) -> None:
    """A PNG: the encoder's keep probability per frame, how often each frame survived the Bernoulli
    draws, and which frames each top-K budget keeps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probabilities = np.asarray(probabilities, dtype=np.float64)
    frames = np.arange(len(probabilities))
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9.5, 4.5), sharex=True, gridspec_kw={"height_ratios": [2, max(1, len(topk_keeps)) / 2]}
    )
    top.bar(frames, np.mean(bernoulli_keeps, axis=0), color="#9ecae1", label="kept share of Bernoulli draws")
    top.plot(frames, probabilities, "o-", color="#08519c", markersize=3, label="keep probability")
    top.axhline(0.5, color="grey", linewidth=0.8, linestyle="--", label="threshold")
    top.set_ylim(0, 1.05)
    top.set_ylabel("probability")
    top.set_title(title)
    # beside the axes: keep probabilities sit near 1, where a legend inside the plot would hide them
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    for row, keep in enumerate(topk_keeps.values()):
        kept = frames[np.asarray(keep, dtype=bool)]
        bottom.scatter(kept, np.full(len(kept), row), marker="|", s=120, color="#d94801")
    bottom.set_yticks(range(len(topk_keeps)), list(topk_keeps))
    bottom.set_ylim(len(topk_keeps) - 0.5, -0.5)  # first budget on top, as listed
    bottom.set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
