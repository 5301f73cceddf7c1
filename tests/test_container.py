"""The `.dfc` file: what goes in comes out, and a damaged or foreign file is refused with one clear line."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfc import container, entropy
from dfc.container import (
    ClipLatents,
    CompressedVideo,
    ContainerError,
    KeepSettings,
    ModelInfo,
    decode_container,
    encode_container,
    read_container,
    write_container,
)
from dfc.container_report import quantization_effect, size_report
from dfc.errors import UserError
from dfc.latent_values import bf16_bits_to_float32, float32_to_bf16_bits, stored_values
from dfc.video import crop_box, split_clips

WEIGHTS = "sha256:0123456789abcdef"


def _random_gaps(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    kept = int(rng.integers(1, num_frames + 1))
    positions = np.sort(rng.choice(num_frames, kept, replace=False))
    return np.diff(positions, prepend=0).astype(np.int32)  # gaps[0] = first position


def _random_floats(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Arbitrary finite float32 bit patterns ("f32") or arbitrary finite bf16 values ("bf16")."""
    if kind == "bf16":
        values = bf16_bits_to_float32(rng.integers(0, 1 << 16, shape, dtype=np.uint16))
    else:
        values = rng.integers(0, 1 << 32, shape, dtype=np.uint32).view(np.float32)
    return np.where(np.isfinite(values), values, np.float32(1.5))


def make_video(
    seed: int = 0,
    *,
    num_frames: int = 70,
    clip_frames: int = 32,
    hw: int = 4,
    latent_dim: int = 3,
    latent_dtype: str = "bf16",
    values: str = "normal",
) -> CompressedVideo:
    rng = np.random.default_rng(seed)
    clips = []
    for start, stop in split_clips(num_frames, clip_frames, max_len=64):
        gaps = _random_gaps(rng, stop - start)
        shape = (len(gaps), hw, latent_dim)
        if values == "normal":
            latents = rng.standard_normal(shape).astype(np.float32)
        else:
            latents = _random_floats(rng, shape, values)
        clips.append(ClipLatents(start=start, num_frames=stop - start, latents=latents, gaps=gaps))
    return CompressedVideo(
        fps=29.97,
        num_frames=num_frames,
        crop=crop_box(97, 61, 32, 32, "crop"),
        model=ModelInfo(32, 32, hw, latent_dim, WEIGHTS, config={"patch_size": 16}),
        keep=KeepSettings("topk", k=4, seed=7),
        clips=clips,
        clip_frames=clip_frames,
        latent_dtype=latent_dtype,
        source_name="holiday.mp4",
    )


def _assert_same(a: CompressedVideo, b: CompressedVideo) -> None:
    assert dataclasses.replace(a, clips=[]) == dataclasses.replace(b, clips=[])
    assert len(a.clips) == len(b.clips)
    for x, y in zip(a.clips, b.clips):
        assert (x.start, x.num_frames) == (y.start, y.num_frames)
        np.testing.assert_array_equal(x.gaps, y.gaps)
        assert x.latents.tobytes() == y.latents.tobytes()  # bit for bit, signed zeros included


# ------------------------------------------------------------------------------------------- round trips

layouts = st.tuples(
    st.integers(1, 140), st.integers(1, 64), st.integers(1, 9), st.integers(1, 5), st.integers(0, 99)
)


@settings(max_examples=60, deadline=None)
@given(layout=layouts, kind=st.sampled_from(["f32", "bf16"]))
def test_what_is_written_is_read_back_bit_for_bit(layout, kind):
    num_frames, clip_frames, hw, latent_dim, seed = layout
    cv = make_video(seed, num_frames=num_frames, clip_frames=clip_frames, hw=hw, latent_dim=latent_dim)
    cv = dataclasses.replace(cv, latent_dtype=kind)
    for clip in cv.clips:
        clip.latents = _random_floats(np.random.default_rng(seed), clip.latents.shape, kind)
    _assert_same(cv, decode_container(encode_container(cv)))


def test_a_file_round_trip_on_disk(tmp_path):
    cv = make_video(1, values="bf16")  # values bf16 can hold, so the round trip is exact
    path = write_container(tmp_path / "clip.dfc", cv)
    _assert_same(cv, read_container(path, expected_weights=WEIGHTS))
    assert [p.name for p in tmp_path.iterdir()] == ["clip.dfc"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, (1 << 32) - 1), min_size=1, max_size=64))
def test_bf16_packing_rounds_to_nearest_even_like_torch(bit_patterns):
    torch = pytest.importorskip("torch")
    values = np.array(bit_patterns, np.uint32).view(np.float32)
    ours = float32_to_bf16_bits(values)
    theirs = torch.from_numpy(values.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(values)
    np.testing.assert_array_equal(ours[~nan], theirs[~nan])
    assert np.isnan(bf16_bits_to_float32(ours[nan])).all()


def test_bf16_ties_go_to_even():
    # 1 + 2**-8 sits exactly between two bf16 values (1 and 1 + 2**-7): the even one, 1, wins.
    assert bf16_bits_to_float32(float32_to_bf16_bits(np.float32([1 + 2**-8, 1 + 3 * 2**-8]))).tolist() == [
        1.0,
        1 + 2**-6,
    ]


def test_eight_bit_latents_cost_half_a_step_at_most_and_say_so():
    cv = make_video(2, hw=16, latent_dim=8, latent_dtype="u8")
    effect = quantization_effect(cv, "u8")
    back = decode_container(encode_container(cv))
    worst = 0.0
    for original, restored in zip(cv.clips, back.clips):
        step = (original.latents.max(axis=(0, 1)) - original.latents.min(axis=(0, 1))) / 255
        error = np.abs(restored.latents - original.latents)
        assert (error <= step / 2 + 1e-6).all()
        np.testing.assert_array_equal(restored.latents, stored_values(original.latents, "u8"))
        worst = max(worst, float(error.max()))
    assert effect["max_abs_error"] == pytest.approx(worst)
    assert 30 < effect["snr_db"] < 60
    assert effect["latent_bytes"] * 2 == effect["latent_bytes_bf16"]
    bf16_size = len(encode_container(dataclasses.replace(cv, latent_dtype="bf16")))
    assert len(encode_container(cv)) < bf16_size
    assert quantization_effect(cv, "f32")["max_abs_error"] == 0.0


def test_the_official_safetensors_library_reads_the_file():
    torch = pytest.importorskip("torch")
    from safetensors.torch import load

    cv = make_video(3)
    data = encode_container(cv)
    tensors = load(data)
    latents = tensors["clip.00000.latents"]
    assert latents.dtype == torch.bfloat16 and tensors["clip.00000.gaps"].dtype == torch.int32
    for index, clip in enumerate(decode_container(data).clips):
        np.testing.assert_array_equal(tensors[f"clip.{index:05d}.latents"].float().numpy(), clip.latents)


def test_the_official_safetensors_library_reads_the_metadata(tmp_path):
    from safetensors import safe_open

    path = write_container(tmp_path / "v.dfc", make_video(3))
    with safe_open(path, "np") as f:
        metadata = f.metadata()
    assert (metadata["format"], metadata["format_version"]) == ("dfc-video", "1")
    assert json.loads(metadata["dfc"])["video"] == {"num_frames": 70, "fps": 29.97, "width": 97, "height": 61}


# ------------------------------------------------------------------------------------------ damaged files


ENCODED = encode_container(make_video(4))


def _decoded_through(data: bytes, **kwargs) -> CompressedVideo:
    """Read, then decode every clip as `dfc decompress` does: some damage only shows there."""
    cv = decode_container(data, **kwargs)
    for clip in cv.clips:
        assert clip.latents.shape == clip.latents_shape
    return cv


def _refused(data: bytes, **kwargs) -> str:
    with pytest.raises(ContainerError) as caught:
        _decoded_through(data, **kwargs)
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    return message


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(ENCODED) - 1))
def test_a_truncated_file_is_refused(length):
    _refused(ENCODED[:length])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(ENCODED) - 1), st.integers(1, 255)), min_size=1, max_size=4))
def test_any_changed_byte_is_refused(changes):
    data = bytearray(ENCODED)
    for position, flip in changes:
        data[position] ^= flip
    if bytes(data) != ENCODED:  # two changes can undo each other
        _refused(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1400), st.integers(0, 255)), min_size=1, max_size=3))
def test_damage_the_checksum_would_miss_is_still_refused_cleanly(changes):
    # Without the checksum, changed bytes reach the parser and every check behind it.
    data = bytearray(ENCODED)
    for position, value in changes:
        data[min(position, len(data) - 1)] = value
    with mock.patch.object(container, "_check_digest", lambda *args: None):
        try:
            _decoded_through(bytes(data))
        except ContainerError as err:
            assert "\n" not in str(err)


def test_the_messages_say_what_is_wrong():
    assert "truncated" in _refused(ENCODED[:-1])
    assert "too short" in _refused(b"dfc")
    flipped = bytearray(ENCODED)
    flipped[-1] ^= 1
    assert "checksum mismatch" in _refused(bytes(flipped))
    assert "not a .dfc file" in _refused(b"\x00" * 64)


def test_a_weights_file_is_not_a_video(tmp_path):
    from safetensors.numpy import save

    message = _refused(save({"encoder.weight": np.zeros((2, 2), np.float32)}))
    assert "not a .dfc video" in message


# A writer of this format from docs/FORMAT.md alone: used to make files that are well formed and correctly
# checksummed but say something wrong, so the checks behind the checksum are tested too.


def _split(data: bytes) -> tuple[dict, bytes]:
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def _join(header: dict, payload: bytes) -> bytes:
    header["__metadata__"]["dfc.sha256"] = "0" * 64
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    unsigned = struct.pack("<Q", len(text)) + text + payload
    digest = hashlib.sha256(unsigned).hexdigest()
    return unsigned.replace(b'"dfc.sha256":"' + b"0" * 64, b'"dfc.sha256":"' + digest.encode(), 1)


def _with_document(change, data: bytes = ENCODED) -> bytes:
    header, payload = _split(data)
    document = json.loads(header["__metadata__"]["dfc"])
    change(document)
    header["__metadata__"]["dfc"] = json.dumps(document, separators=(",", ":"))
    return _join(header, payload)


def test_the_test_writer_matches_the_real_one():
    assert _with_document(lambda doc: None) == ENCODED


def test_other_versions_are_refused_with_the_reason():
    header, payload = _split(ENCODED)
    header["__metadata__"]["format_version"] = "3"
    assert "newer dfc" in _refused(_join(header, payload))
    header["__metadata__"]["format_version"] = "2"  # version 2 is for entropy-coded latents
    assert "latent coding 'none'" in _refused(_join(header, payload))
    header["__metadata__"]["format_version"] = "9" * 5000
    assert "not a version" in _refused(_join(header, payload))
    header["__metadata__"]["format_version"] = "0"
    assert "format version 0" in _refused(_join(header, payload))
    header["__metadata__"]["format"] = "something-else"
    assert "not a .dfc video" in _refused(_join(header, payload))


def _set(path: tuple, value):
    def change(document):
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "symptom"),
    [
        (_set(("clips", 0, "kept"), 99), "gaps"),
        (_set(("clips", 1, "start"), 33), "clip 1 covers frames 33"),
        (_set(("video", "num_frames"), 71), "clips cover 70 frames"),
        (_set(("clips", 2, "num_frames"), 1), "past the clip"),
        (_set(("model", "latent_dim"), 4), "latents are"),
        (_set(("video", "fps"), -3), "fps"),
        (_set(("latent_dtype",), "f16"), "latent dtype"),
        (_set(("keep", "mode"), "random"), "keep mode"),
        (_set(("fit", "left"), 90), "crop"),
        (_set(("model", "weights"), 5), "weights"),
        (lambda doc: doc["clips"].pop(), "tensors do not match"),
    ],
)
def test_a_well_formed_file_that_says_something_wrong_is_refused(change, symptom):
    assert symptom in _refused(_with_document(change))


def test_bad_gaps_behind_a_valid_checksum_are_refused():
    header, payload = _split(ENCODED)
    begin, _ = header["clip.00000.gaps"]["data_offsets"]
    payload = bytearray(payload)
    payload[begin : begin + 4] = struct.pack("<i", -1)
    assert "gaps must be >= 0" in _refused(_join(header, bytes(payload)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _leaf_paths(node, prefix=()):
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    paths = [prefix] if prefix else []
    for key, child in items:
        paths += _leaf_paths(child, (*prefix, key))
    return paths


DOCUMENT_PATHS = _leaf_paths(json.loads(_split(ENCODED)[0]["__metadata__"]["dfc"]))


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from(DOCUMENT_PATHS), value=json_values)
def test_any_value_in_the_description_either_reads_or_is_refused_cleanly(path, value):
    data = _with_document(_set(path, value))
    try:
        _decoded_through(data)
    except ContainerError as err:
        assert "\n" not in str(err)


TENSOR_INDEX_PATHS = [p for p in _leaf_paths(_split(ENCODED)[0]) if p[0] != "__metadata__"]


@settings(max_examples=200, deadline=None)
@given(path=st.sampled_from(TENSOR_INDEX_PATHS), value=json_values)
def test_any_value_in_the_tensor_index_either_reads_or_is_refused_cleanly(path, value):
    header, payload = _split(ENCODED)
    _set(path, value)(header)
    try:
        _decoded_through(_join(header, payload))
    except ContainerError as err:
        assert "\n" not in str(err)


# --------------------------------------------------------------------------------------------- weights


def test_a_file_made_with_other_weights_is_refused_naming_both(tmp_path):
    path = write_container(tmp_path / "v.dfc", make_video(5))
    with pytest.raises(ContainerError) as caught:
        read_container(path, expected_weights="sha256:fedcba9876543210")
    assert WEIGHTS in str(caught.value) and "sha256:fedcba9876543210" in str(caught.value)
    assert read_container(path, expected_weights=WEIGHTS).model.weights == WEIGHTS


def test_the_weights_identity_stored_in_a_file_is_a_short_sha256_of_the_bytes(tmp_path):
    from torch_impl.loading import file_identity

    (tmp_path / "w.safetensors").write_bytes(b"weights")
    expected = "sha256:" + hashlib.sha256(b"weights").hexdigest()[:16]
    assert file_identity([tmp_path / "w.safetensors"]) == expected


# -------------------------------------------------------------------------------------- writing failures


def test_writing_where_it_cannot_leaves_nothing_behind(tmp_path):
    message = str(
        pytest.raises(ContainerError, write_container, tmp_path / "missing" / "v.dfc", make_video()).value
    )
    assert "does not exist" in message
    (tmp_path / "a_file").write_text("x")
    pytest.raises(ContainerError, write_container, tmp_path / "a_file" / "v.dfc", make_video())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = write_container(tmp_path / "v.dfc", make_video(6))
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(ContainerError, match="No space left"):
        write_container(path, make_video(7))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["v.dfc"]


def test_an_invalid_video_is_refused_before_anything_is_written(tmp_path):
    cv = make_video(8)
    cv.clips[0].gaps = cv.clips[0].gaps.astype(np.int64)
    with pytest.raises(ContainerError, match="int32"):
        write_container(tmp_path / "v.dfc", cv)
    cv = make_video(8)
    cv.clips[1].latents[0, 0, 0] = np.nan
    with pytest.raises(ContainerError, match="NaN"):
        write_container(tmp_path / "v.dfc", cv)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ sizes


def test_the_size_report_counts_bytes_and_says_so(tmp_path):
    cv = make_video(9, num_frames=70, hw=256, latent_dim=96)  # published latent size, small model frame
    cv = dataclasses.replace(cv, model=dataclasses.replace(cv.model, height=256, width=256))
    cv = dataclasses.replace(cv, crop=crop_box(97, 61, 256, 256, "crop"))
    (tmp_path / "in.mp4").write_bytes(b"x" * 12345)
    path = write_container(tmp_path / "v.dfc", cv)
    report = size_report(cv, input_path=tmp_path / "in.mp4")
    assert report["container_bytes"] == path.stat().st_size
    assert report["latent_bytes"] == cv.kept_frames * 256 * 96 * 2
    assert (
        report["raw_bytes_original"] == 70 * 97 * 61 * 3 and report["raw_bytes_model"] == 70 * 256 * 256 * 3
    )
    assert report["input_bytes"] == 12345
    assert report["ratio_vs_input"] == pytest.approx(12345 / path.stat().st_size)
    assert report["kept_per_clip"] == [c.kept for c in cv.clips] and report["frames_per_clip"] == [32, 32, 6]
    assert report["temporal_ratio"] == pytest.approx(70 / cv.kept_frames)
    assert report["per_kept_frame_byte_ratio"] == 4.0 and report["per_kept_frame_value_ratio"] == 8.0
    assert "bytes" in report["note"] and "bf16" in report["note"] and "49,152 B" in report["note"]
    assert size_report(dataclasses.replace(cv, latent_dtype="u8"))["per_kept_frame_byte_ratio"] == 8.0


def test_packing_is_a_negligible_part_of_a_compress():
    # A 64-frame video at the published size keeping 6 of every 32 frames (MODEL_SPEC section 4).
    rng = np.random.default_rng(0)
    clips = []
    for start in (0, 32):
        gaps = np.array([0, 5, 5, 5, 5, 5], np.int32)
        clips.append(ClipLatents(start, 32, rng.standard_normal((6, 256, 96)).astype(np.float32), gaps))
    cv = dataclasses.replace(make_video(), num_frames=64, clips=clips, clip_frames=32)
    cv = dataclasses.replace(cv, model=ModelInfo(32, 32, 256, 96, WEIGHTS))
    started = time.perf_counter()
    for _ in range(5):
        decode_container(encode_container(cv))
    per_round_trip = (time.perf_counter() - started) / 5
    assert per_round_trip < 0.1  # a compress of 64 frames at 256x256 takes many seconds on CPU


# ------------------------------------------------------------------------- entropy-coded latents (v2)

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("kind", ["bf16", "u8"])
def test_a_version_1_file_written_before_entropy_coding_still_reads(kind):
    # tests/data/format_v1_*.dfc were written by the version-1 writer (dfc 0.1.0) from these make_video calls
    data = (DATA / f"format_v1_{kind}.dfc").read_bytes()
    assert _split(data)[0]["__metadata__"]["format_version"] == "1"
    seed, values = (11, "bf16") if kind == "bf16" else (12, "normal")
    layout = {"num_frames": 10, "clip_frames": 6, "hw": 2, "latent_dim": 3}
    expected = make_video(seed, **layout, latent_dtype=kind, values=values)
    read = decode_container(data)
    for clip in expected.clips:
        clip.latents = stored_values(clip.latents, kind)
    _assert_same(expected, read)
    assert read.latent_coding == "none"
    if kind == "bf16":  # plain latents are still written as version 1, byte for byte
        assert encode_container(read) == data


@settings(max_examples=40, deadline=None)
@given(layout=layouts, kind=st.sampled_from(["f32", "bf16", "u8"]))
def test_entropy_coded_latents_read_back_bit_for_bit_as_version_2(layout, kind):
    num_frames, clip_frames, hw, latent_dim, seed = layout
    cv = make_video(seed, num_frames=num_frames, clip_frames=clip_frames, hw=hw, latent_dim=latent_dim)
    cv = dataclasses.replace(cv, latent_dtype=kind, latent_coding="zstd")
    for clip in cv.clips:  # any bf16 value; 8-bit codes need a finite range, so normal values there
        if kind != "u8":
            clip.latents = _random_floats(np.random.default_rng(seed), clip.latents.shape, "bf16")
    data = encode_container(cv)
    header, _ = _split(data)
    assert header["__metadata__"]["format_version"] == "2"
    assert "clip.00000.latents.zstd" in header and "clip.00000.latents" not in header
    coded = decode_container(data)
    plain = decode_container(encode_container(dataclasses.replace(cv, latent_coding="none")))
    _assert_same(dataclasses.replace(coded, latent_coding="none"), plain)  # lossless: what plain gives
    if kind != "u8":
        _assert_same(cv, coded)


def test_entropy_coding_makes_smooth_latents_smaller():
    rng = np.random.default_rng(0)
    cv = make_video(13, hw=64, latent_dim=8)
    for clip in cv.clips:  # latents with the spread of a trained VAE's: a few bits of entropy per value
        clip.latents = (rng.standard_normal(clip.latents.shape) * 0.5).astype(np.float32)
    for kind in ("bf16", "u8", "f32"):
        plain = encode_container(dataclasses.replace(cv, latent_dtype=kind))
        coded = encode_container(dataclasses.replace(cv, latent_dtype=kind, latent_coding="zstd"))
        assert len(coded) < len(plain), kind


def _coded_file_with(blob) -> bytes:
    """A well-formed, correctly checksummed version-2 file whose coded latents are `blob` (or `blob(raw)`)."""
    cv = dataclasses.replace(make_video(14), latent_coding="zstd")
    real = entropy.encode
    coder = (lambda stored, coding: blob(real(stored))) if callable(blob) else lambda *_: blob
    with mock.patch.object(entropy, "encode", coder):
        return encode_container(cv)


def test_a_hostile_declared_size_is_refused_before_anything_is_allocated():
    import zstandard

    # a zstd frame header declaring 1 TB of decoded latents, then one RLE block
    bomb = b"\x28\xb5\x2f\xfd\xe0" + struct.pack("<Q", 1 << 40) + b"\x03\x00\x02\x00"
    assert zstandard.frame_content_size(bomb) == 1 << 40
    message = _refused(_coded_file_with(bomb))
    assert "declare 1,099,511,627,776 B decoded, their shape needs" in message
    sizeless = zstandard.ZstdCompressor(write_content_size=False).compress(b"x")
    assert "no size" in _refused(_coded_file_with(sizeless))
    assert "not a zstd frame" in _refused(_coded_file_with(b"not zstd at all"))
    trailing = _coded_file_with(lambda good: good + b"junk")
    assert "not exactly one whole zstd frame" in _refused(trailing)


def test_latents_larger_than_the_limit_are_refused_by_their_shape_alone():
    data = encode_container(dataclasses.replace(make_video(15), latent_coding="zstd"))
    with mock.patch.object(entropy, "MAX_DECODED_BYTES", 16):
        assert "more than the limit of 16 B per clip" in _refused(data)


def test_the_coder_package_is_imported_only_for_coded_files(tmp_path):
    import subprocess
    import sys

    here = Path(__file__).resolve().parent
    code = (
        f"import sys, dataclasses; sys.path[:0] = [{str(here)!r}, {str(here.parent)!r}]\n"
        "from test_container import make_video\n"
        "from dfc.container import decode_container, encode_container\n"
        "decode_container(encode_container(make_video(1)))\n"
        "assert 'zstandard' not in sys.modules\n"
        "decode_container(encode_container(dataclasses.replace(make_video(1), latent_coding='zstd')))\n"
        "assert 'zstandard' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
