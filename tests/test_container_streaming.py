"""A `.dfc` may rightly describe far more video than its size (issue 12): reading one keeps each clip's
description only and decodes a clip's latents when they are asked for, so memory does not grow with the
number of clips; writing spools clip by clip and writes the same bytes as before."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from cli_helpers import dfc, measured_child, one_line_error, save_weights
from hostile_files import reseal, tiny_video
from test_container import make_video

from common import safetensors_header as framing
from dfc.container import (
    ClipLatents,
    ClipSpool,
    CompressedVideo,
    ContainerError,
    KeepSettings,
    ModelInfo,
    decode_container,
    encode_container,
    read_container,
    write_container,
)
from dfc.video import Crop

# the published latent size: a 64-frame clip keeping every frame decodes to 64 x 256 x 96 float32 = 6.3 MB
HW, CHANNELS, CLIP = 256, 96, 64
CLIP_BYTES = CLIP * HW * CHANNELS * 4


def _long_video(clips: int) -> CompressedVideo:
    """`clips` clips of near-constant latents (zstd makes each a few kB), every frame kept. One array
    serves every clip, so the writer's input is small too."""
    latents = np.broadcast_to(np.linspace(-1, 1, CHANNELS, dtype=np.float32), (CLIP, HW, CHANNELS)).copy()
    gaps = np.array([0] + [1] * (CLIP - 1), np.int32)
    crop = Crop("stretch", 320, 240, 0, 0, 320, 240, 256, 256)
    return CompressedVideo(
        fps=25.0,
        num_frames=clips * CLIP,
        crop=crop,
        model=ModelInfo(256, 256, HW, CHANNELS, "sha256:0123456789abcdef"),
        keep=KeepSettings(),
        clips=[ClipLatents(i * CLIP, CLIP, latents, gaps) for i in range(clips)],
        clip_frames=CLIP,
        latent_coding="zstd",
    )


@pytest.fixture(scope="module")
def long_files(tmp_path_factory):
    """A .dfc of 8 clips and one of 80 (503 MB of decoded latents), both written by the real writer."""
    root = tmp_path_factory.mktemp("long")
    return {clips: write_container(root / f"{clips}.dfc", _long_video(clips)) for clips in (8, 80)}


_READ_ALL = """
import numpy as np
from dfc.container import read_container
base = hwm()
cv = read_container({path!r})
total = 0.0
for clip in cv.clips:  # as the decoder walks them
    total += float(clip.latents[-1, -1, -1])
print(json.dumps({{"grew": hwm() - base, "clips": len(cv.clips), "total": total}}))
"""


def test_reading_a_long_file_holds_one_clip_at_a_time(long_files):
    """80 clips whose latents take 503 MB decoded: read and walked in a process that may not allocate
    even 400 MB; its peak is that of the 8-clip file within a few MB."""
    assert CLIP_BYTES * 80 >= 500 * 10**6 and long_files[80].stat().st_size < 2 * 10**6
    answers = {
        clips: measured_child(_READ_ALL.format(path=str(path)), limit=400 * 2**20)
        for clips, path in long_files.items()
    }
    assert [answers[n]["clips"] for n in (8, 80)] == [8, 80]
    assert answers[80]["total"] == pytest.approx(80.0)  # every clip decoded, the last value is 1.0
    assert answers[80]["grew"] < 10 * CLIP_BYTES, answers  # about a clip, far below 503 MB
    assert abs(answers[80]["grew"] - answers[8]["grew"]) < 4 * 2**20, answers


def test_decompress_of_a_long_file_made_for_other_weights_reads_it_in_bounded_memory(long_files, tmp_path):
    """The command line: `dfc decompress` reads the whole 80-clip file (every check) before it meets
    the weights; that costs what one clip costs, then one line says which weights are wrong."""
    weights = save_weights(tmp_path / "vae", "vae-tiny")
    out = tmp_path / "back.mp4"
    argv = ["decompress", str(long_files[80]), str(out), "--weights", str(weights), "--quiet"]
    body = f"""
import contextlib, io
import torch  # the imports first: what they take is not the reading's
from dfc.cli import main
import dfc.commands.decompress, dfc.container, dfc.models, dfc.decoding, dfc.video_sink
base = hwm()
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = main({argv!r})
print(json.dumps({{"code": code, "grew": hwm() - base, "stderr": err.getvalue()}}))
"""
    answer = measured_child(body, limit=3 * 2**30)
    lines = answer["stderr"].strip().splitlines()
    assert answer["code"] != 0 and len(lines) == 1, answer
    assert lines[0].startswith("dfc decompress: error: ") and "sha256:0123456789abcdef" in lines[0]
    assert answer["grew"] < 10 * CLIP_BYTES, answer
    assert not out.exists()


# ------------------------------------------------------------------------ damage found when decoding


def _with_nan_in_clip(data: bytes, index: int) -> bytes:
    """Plain bf16 latents with a NaN in clip `index`, checksum recomputed: only decoding can tell."""
    header, start = framing.parse(data)
    begin, _ = header[f"clip.{index:05d}.latents"]["data_offsets"]
    changed = bytearray(data)
    changed[start + begin : start + begin + 2] = np.uint16(0x7FC0).tobytes()
    return reseal(bytes(changed))


def test_a_clip_damaged_behind_a_valid_checksum_is_one_error_when_decoding_reaches_it(tmp_path):
    path = tmp_path / "nan.dfc"
    path.write_bytes(_with_nan_in_clip(encode_container(tiny_video("sha256:x", clips=4)), 2))
    cv = read_container(path)  # its description is fine
    cv.clips[1].latents  # noqa: B018  (clips before it decode)
    with pytest.raises(ContainerError) as caught:
        cv.clips[2].latents  # noqa: B018
    message = str(caught.value)
    assert (
        message
        == f"{path}: damaged or not a .dfc file: clip 2 (frames 16..23): latents contain NaN or infinity"
    )


def test_decompress_stops_at_a_damaged_clip_with_one_line_and_no_output(tmp_path):
    from torch_impl import weights_identity

    weights = save_weights(tmp_path / "vae", "vae-tiny")
    source = tmp_path / "nan.dfc"
    video = tiny_video(weights_identity(weights), clips=6)
    source.write_bytes(_with_nan_in_clip(encode_container(video), 5))
    out = tmp_path / "out" / "back.mp4"
    out.parent.mkdir()
    result = dfc("decompress", source, out, "--weights", weights, "--batch", "2", "--quiet")
    line = one_line_error(result, "decompress")
    assert "clip 5 (frames 40..47): latents contain NaN" in line
    assert list(out.parent.iterdir()) == []  # nothing half-written, no temporary left


# ----------------------------------------------------------------------------------------------- writing

# SHA-256 of the files the whole-file encoder (before clips were spooled) wrote for
# make_video(21, num_frames=75, clip_frames=16, hw=6, latent_dim=5) in each dtype and coding
BEFORE_STREAMING = {
    ("bf16", "none"): "74b463d693902512cfb67b056538ac1ef7fc74c247227b456b84a3a6bce43ec1",
    ("bf16", "zstd"): "1dfc9f086df7663d13422379b37e4d5f7bc19cdafaeadd93cb4b9babba54ed90",
    ("u8", "none"): "f60bda2444cad43c8ed05a2801f34fa08958bec14839051077654acfeffe1a6e",
    ("u8", "zstd"): "9061f7d994f1ab5fef0e4c71f85fa79bbc1a62fea2914340f3c8bf530305c75b",
    ("f32", "none"): "9b3726110c4771ceb737d081cc8a94d3edbb4a3599b99cead4de46b06d6f1401",
    ("f32", "zstd"): "30c6ccd27428fd8565d0ee6706c743aed7b1e6247040b8a07224d004118a60a6",
}


@pytest.mark.parametrize("kind, coding", list(BEFORE_STREAMING))
def test_the_spooling_writer_writes_the_bytes_the_whole_file_writer_wrote(tmp_path, kind, coding):
    cv = make_video(21, num_frames=75, clip_frames=16, hw=6, latent_dim=5)
    cv = dataclasses.replace(cv, latent_dtype=kind, latent_coding=coding)
    path = write_container(tmp_path / "v.dfc", cv)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == BEFORE_STREAMING[kind, coding]
    assert hashlib.sha256(encode_container(cv)).hexdigest() == BEFORE_STREAMING[kind, coding]
    assert [p.name for p in tmp_path.iterdir()] == ["v.dfc"]  # the spool left nothing behind


def test_clips_spooled_as_they_are_made_are_written_from_the_spool(tmp_path):
    """What `dfc compress` does: each clip goes to the spool as it is encoded and is dropped; the
    file is the one the in-memory writer makes, and the spooled clips read back as stored."""
    cv = dataclasses.replace(
        make_video(22, num_frames=75, clip_frames=16), latent_dtype="u8", latent_coding="zstd"
    )
    with ClipSpool("u8", "zstd", tmp_path) as spool:
        spooled = dataclasses.replace(cv, clips=[spool.add(clip) for clip in cv.clips])
        assert all(clip.stored is not None for clip in spooled.clips)  # no latents held in memory
        written = write_container(tmp_path / "spooled.dfc", spooled, spool)
        for clip, back in zip(spooled.clips, decode_container(written.read_bytes()).clips):
            np.testing.assert_array_equal(clip.latents, back.latents)
    assert written.read_bytes() == encode_container(cv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spooled.dfc"]


def test_compress_spools_each_clip_as_it_is_encoded_and_writes_the_same_file(tmp_path):
    """`dfc compress`'s route (`compress_stream` into a spool): every clip it hands back is stored, not
    held; the file and the quantization report equal those of the in-memory route."""
    import torch
    from videos import make_test_video

    from common.config import PRESETS
    from dfc.container_report import quantization_effect
    from dfc.streaming import compress_stream
    from torch_impl import VideoVAE

    torch.manual_seed(0)
    vae = VideoVAE(PRESETS["vae-tiny"]).eval()
    video = make_test_video(tmp_path / "v.mp4", 40, 40, 30)
    settings = {"weights_id": "sha256:x", "clip_frames": 8, "latent_dtype": "u8", "latent_coding": "zstd"}
    in_memory = compress_stream(vae, video, **settings)
    with ClipSpool("u8", "zstd", tmp_path) as spool:
        streamed = compress_stream(vae, video, spool=spool, quantization=True, **settings)
        assert len(streamed.cv.clips) == 5 and all(clip.stored is not None for clip in streamed.cv.clips)
        spooled = write_container(tmp_path / "spooled.dfc", streamed.cv, spool)
    assert spooled.read_bytes() == encode_container(in_memory.cv)
    assert streamed.quantization == quantization_effect(in_memory.cv, "u8")
