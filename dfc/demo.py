"""`dfc demo`: from a JAX checkpoint to a compressed and decompressed video, on a fresh machine.

Without weights: build the small VAE in `jax_ref`, train it briefly on the demo clip, save a real Orbax
checkpoint, convert it with `dfc convert`, check the pair with `dfc parity`, then compress and decompress
the clip (written with ffmpeg) with the converted weights. With `--orbax CKPT` the same runs on that
checkpoint (no training); with `--weights W` on ready PyTorch weights (nothing to convert or check).
`dfc convert` and `dfc parity` run in this process through the CLI's own entry point, exactly as typed.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfc.errors import UserError

DEMO_PRESET = "vae-small"
CLIP_SIZE = (96, 72)  # width, height: not the model's 64x64 nor its aspect, so fitting is exercised
CLIP_FRAMES = 48  # a 32-frame clip and a shorter 16-frame one
DEMO_CLIP_FRAMES = 32
CLIP_FPS = 12.0
RD_CRFS = (18, 34, 51)  # the x264 sweep of the summary's rate-distortion line
TRAIN_STEPS = 36  # ~2 s each at 64x64 on 2 cores, plus ~25 s to compile: the demo stays under 3 min
MARKER = ".dfc-demo"  # a folder holding it was made by the demo, which may replace its files
# what the demo writes into --out; only these are replaced when it runs again
ARTIFACTS = (
    "checkpoint",
    "weights",
    "parity",
    "input.mp4",
    "compressed.dfc",
    "decoded.mp4",
    "comparison.gif",
)


@dataclass
class DemoOptions:
    out: Path
    weights: str | None = None
    orbax: str | None = None
    train_steps: int = TRAIN_STEPS
    preset: str = DEMO_PRESET
    keep_rate: float | None = 0.5
    seed: int = 0
    quiet: bool = False
    force: bool = False


@dataclass
class DemoSummary:
    lines: list[tuple[str, str]] = field(default_factory=list)
    parity_passed: bool | None = None

    def add(self, label: str, text: str) -> None:
        self.lines.append((label, text))

    def render(self) -> str:
        width = max(len(label) for label, _ in self.lines)
        return "\n".join(f"{label.ljust(width)}  {text}" for label, text in self.lines)


def demo_clip(
    num_frames: int = CLIP_FRAMES, width: int = CLIP_SIZE[0], height: int = CLIP_SIZE[1]
) -> np.ndarray:
    """uint8 `(T, H, W, 3)`: a sky-to-sea gradient, a sun crossing it and a boat bobbing on a wave."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = 0.6 * height
    sky = np.stack([0.35 + 0.5 * y / horizon, 0.55 + 0.3 * y / horizon, 0.95 - 0.2 * y / horizon], -1)
    sea = np.stack([0.05 + 0 * y, 0.25 + 0.2 * (y - horizon) / height, 0.55 + 0 * y], -1)
    background = np.where((y < horizon)[..., None], sky, sea)
    frames = np.empty((num_frames, height, width, 3), np.float32)
    for t in range(num_frames):
        phase = t / max(1, num_frames - 1)
        frame = background.copy()
        sun = (x - (0.15 + 0.7 * phase) * width) ** 2 + (
            y - (0.35 - 0.15 * np.sin(np.pi * phase)) * height
        ) ** 2
        frame[sun < (0.12 * height) ** 2] = (1.0, 0.85, 0.3)
        boat_x = (0.8 - 0.5 * phase) * width
        boat_y = horizon + 0.12 * height + 2 * np.sin(2 * np.pi * 3 * phase)
        hull = (np.abs(x - boat_x) < 0.12 * width) & (np.abs(y - boat_y) < 0.04 * height)
        frame[hull] = (0.45, 0.2, 0.1)
        frames[t] = frame
    from dfc.video import to_uint8

    return to_uint8(frames)


def _cli(argv: list[str], quiet: bool) -> tuple[int, str]:
    """Run a `dfc` subcommand here, as typed; its stdout is returned (and echoed unless quiet)."""
    from dfc.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    if not quiet:
        print(buffer.getvalue(), end="")
    return code, buffer.getvalue()


def _clear(out: Path) -> None:
    for name in ARTIFACTS:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Phases:
    """Announces each phase of the demo and times it, for the summary's last line."""

    def __init__(self, quiet: bool) -> None:
        self.quiet, self.times = quiet, {}
        self._current, self._since = None, time.monotonic()

    def start(self, name: str, message: str) -> None:
        self._stop()
        self._current, self._since = name, time.monotonic()
        if not self.quiet:
            print(f"== {message}", flush=True)

    def _stop(self) -> None:
        if self._current is not None:
            self.times[self._current] = self.times.get(self._current, 0.0) + time.monotonic() - self._since

    def report(self, started: float) -> str:
        self._stop()
        self._current = None
        parts = ", ".join(f"{name} {seconds:.0f}" for name, seconds in self.times.items())
        return f"{time.monotonic() - started:.0f} s in all ({parts})"


def run_demo(options: DemoOptions) -> DemoSummary:
    # ffmpeg is started (fork + exec at once) after JAX has threads; Python warns about fork, needlessly here
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    out = options.out
    existed = prepare_out(out, [options.weights, options.orbax], force=options.force)
    try:
        return _run(options)
    except BaseException:  # a failed or interrupted demo leaves nothing behind
        if existed:
            _clear(out)
            with contextlib.suppress(OSError):
                (out / MARKER).unlink()
        else:
            shutil.rmtree(out, ignore_errors=True)
        raise


def prepare_out(out: Path, inputs, *, force: bool) -> bool:
    """Make `--out` ready: a new folder, or one holding the demo's own marker (so that the demo runs
    twice), or, with `force`, any folder; never one that holds the demo's inputs. Returns whether the
    folder existed before."""
    from dfc.outputs import check_folder_target

    check_folder_target(out, inputs=inputs, flag="--out ")
    existed = out.exists()
    if existed and any(out.iterdir()) and not (out / MARKER).is_file() and not force:
        raise UserError(
            f"--out {out}: folder exists and was not made by dfc demo; choose a new folder or pass --force "
            "(the demo replaces its own files in it)"
        )
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    (out / MARKER).write_text(
        "made by dfc demo; `dfc demo --out` replaces its files here\n", encoding="utf-8"
    )
    return existed


def _run(options: DemoOptions) -> DemoSummary:
    from common.config import PRESETS
    from dfc.video import fit_to_model, write_video

    started = time.monotonic()
    out, quiet, summary = options.out, options.quiet, DemoSummary()
    phases = Phases(quiet)
    phases.start("clip", "making the test clip with ffmpeg")
    clip = demo_clip()
    input_path = write_video(out / "input.mp4", clip, CLIP_FPS)

    weights = options.weights
    checkpoint = Path(options.orbax) if options.orbax else None
    if weights is None and checkpoint is None:
        from dfc.demo_training import build_and_train

        cfg = PRESETS[options.preset]
        phases.start(
            "training",
            f"building the {options.preset} VAE in jax_ref and training it for {options.train_steps} steps",
        )
        fitted, _ = fit_to_model(clip, cfg.height, cfg.width)
        trained = build_and_train(
            cfg, fitted, out / "checkpoint", steps=options.train_steps, seed=options.seed,
            log=(lambda _: None) if quiet else print,
        )  # fmt: skip
        checkpoint = trained.checkpoint
        loss = (
            f", reconstruction MSE {trained.first_loss:.4f} -> {trained.last_loss:.4f}"
            if trained.steps
            else ""
        )
        summary.add(
            "checkpoint", f"{checkpoint} (Orbax, {trained.steps} Adam steps in {trained.seconds:.0f} s{loss})"
        )
    elif checkpoint is not None:
        summary.add("checkpoint", f"{checkpoint} (given)")

    if checkpoint is not None:
        converted = out / "weights" / "vae"
        converted.parent.mkdir(exist_ok=True)
        phases.start("convert", "dfc convert")
        code, _ = _cli(["convert", str(checkpoint), str(converted), "--model", "vae", "--quiet"], quiet)
        if code != 0:
            raise UserError(f"dfc convert {checkpoint} failed (exit {code}); see its output above")
        weights = str(converted)
        summary.add("converted", f"{converted} ({_size(converted):,} B safetensors + config.json)")
        phases.start("parity", "dfc parity (fp32, the converted weights against the checkpoint in jax_ref)")
        argv = [
            "parity",
            "--suite",
            "vae",
            "--orbax",
            str(checkpoint),
            "--weights",
            weights,
            "--precision",
            "fp32",
        ]
        # isolated: each layer judged on the reference's own inputs, so a verdict names the layer at fault
        argv += ["--mode", "isolated", "--report", str(out / "parity")]
        code, text = _cli(argv, quiet)
        verdict = next(
            (line for line in text.splitlines() if "PASS" in line or "FAIL" in line), f"exit {code}"
        )
        summary.parity_passed = code == 0
        summary.add("parity", verdict.removeprefix("dfc parity: "))
        summary.add("", f"report in {out / 'parity'}")
    else:
        summary.add("weights", f"{weights} (given; no Orbax checkpoint, so no conversion or parity check)")

    _compress_and_decompress(options, weights, input_path, clip, summary, phases)
    summary.add("time", phases.report(started))
    return summary


def _compress_and_decompress(
    options: DemoOptions, weights: str, input_path: Path, clip, summary, phases
) -> None:
    from dfc.codec import check_model_fits, compress_video, decode_clips
    from dfc.container import read_container, write_container
    from dfc.container_report import size_report
    from dfc.figures import side_by_side
    from dfc.models import load_model
    from dfc.video import restore_frames, write_video

    out = options.out
    phases.start("load", "loading the converted weights into torch_impl")
    loaded = load_model("vae", weights, "auto", "fp32")
    mode = "topk" if options.keep_rate is not None else "threshold"
    how = "the model's threshold" if mode == "threshold" else f"top-K, keep rate {options.keep_rate:g}"
    phases.start("compress", f"compressing {input_path.name} ({how})")
    source = str(Path(weights).absolute()) if Path(weights).exists() else weights
    cv = compress_video(
        loaded.model, input_path, weights_id=loaded.identity, mode=mode, keep_rate=options.keep_rate,
        clip_frames=min(DEMO_CLIP_FRAMES, loaded.model.config.max_temporal_len),
        extra={"weights_source": source},
    )  # fmt: skip
    cv.latent_coding = "zstd"  # as `dfc compress` writes by default
    compressed = write_container(out / "compressed.dfc", cv)
    report = size_report(cv, input_path, compressed)

    phases.start("decompress", "decompressing")
    read = read_container(compressed, expected_weights=loaded.identity)
    check_model_fits(loaded.model, read)
    # decompress_video's two steps, so the rate-distortion line below gets the model-size frames
    model_frames = decode_clips(loaded.model, read.clips)
    frames, fps = restore_frames(model_frames, read.crop), read.fps
    decoded = write_video(out / "decoded.mp4", frames, fps)
    write_video(out / "comparison.gif", side_by_side([clip, frames], ["original", "decoded"]), fps)

    file_bytes = compressed.stat().st_size
    raw = report["raw_bytes_original"]
    summary.add(
        "input",
        f"{input_path}: {len(clip)} frames {clip.shape[2]}x{clip.shape[1]} at {CLIP_FPS:g} fps, "
        f"{report['input_bytes']:,} B (H.264)",
    )
    positions = "; ".join(" ".join(map(str, c.positions())) for c in cv.clips)
    kept = " + ".join(f"{c.kept}/{c.num_frames}" for c in cv.clips)
    summary.add("kept", f"{kept} frames per clip, at {positions}")
    summary.add(
        "compressed", f"{compressed}: {file_bytes:,} B ({cv.latent_dtype} latents, {cv.latent_coding}-coded)"
    )
    summary.add(
        "ratios",
        f"in bytes: {raw / file_bytes:.1f}x vs raw uint8 frames ({raw:,} B), "
        f"{report['input_bytes'] / file_bytes:.2f}x vs the H.264 input",
    )
    summary.add(
        "decoded",
        f"{decoded}: {len(frames)} frames {frames.shape[2]}x{frames.shape[1]} at {fps:g} fps, "
        f"{_size(decoded):,} B",
    )
    summary.add("quality", _quality(clip, frames, cv))
    phases.start("rd", "rate and distortion against x264 (dfc evaluate --rd measures more)")
    summary.add("rd vs x264", _rate_distortion(clip, model_frames, cv, file_bytes))
    summary.add("side by side", str(out / "comparison.gif"))


def _rate_distortion(clip: np.ndarray, model_frames: np.ndarray, cv, file_bytes: int) -> str:
    """The .dfc file against x264 at a CRF sweep, on the frames the model saw (its size, uint8)."""
    from dfc.rd import RDPoint, baseline_points, quality
    from dfc.rd_report import demo_line
    from dfc.video import fit_to_model, to_uint8

    reference = to_uint8(fit_to_model(clip, cv.model.height, cv.model.width, cv.crop.mode)[0])
    pixels = reference.shape[0] * reference.shape[1] * reference.shape[2]
    scores = quality(reference, to_uint8(model_frames), psnr_only=True)  # the line says PSNR alone
    point = RDPoint("demo", "dfc", "file", file_bytes, 8 * file_bytes / pixels, **scores, frames=len(clip))
    baseline = baseline_points(
        reference, label="demo", fps=cv.fps, codec="x264", crfs=RD_CRFS, psnr_only=True
    )
    return demo_line(point, baseline) if baseline else "n/a: this ffmpeg has no libx264"


def _quality(clip: np.ndarray, frames: np.ndarray, cv) -> str:
    """MSE over the crop box (the bands outside it were never compressed), for kept and dropped frames."""
    from dfc.metrics import mse, psnr

    box = cv.crop
    original = clip[:, box.top : box.top + box.height, box.left : box.left + box.width]
    decoded = frames[:, box.top : box.top + box.height, box.left : box.left + box.width]
    kept = np.zeros(len(clip), bool)
    for c in cv.clips:
        kept[c.start + c.positions()] = True
    parts = [f"MSE {mse(original, decoded):.4f} (PSNR {psnr(original, decoded):.1f} dB)"]
    parts += [
        f"{name} frames {mse(original[m], decoded[m]):.4f}"
        for name, m in (("kept", kept), ("dropped", ~kept))
        if m.any()
    ]
    return "; ".join(parts) + f", against the input's {box.width}x{box.height} crop"
