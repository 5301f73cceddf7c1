"""`common.atomic`, the one helper behind every output the tools write: all of it appears, or none."""

from __future__ import annotations

import pytest

from common.atomic import StagedOutput, atomic_output


def test_a_file_appears_only_when_the_write_finishes(tmp_path):
    out = tmp_path / "video.mp4"
    out.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("the encoder died")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]
    with atomic_output(out) as tmp:
        tmp.write_text("new")
        assert out.read_text() == "old"  # not yet
    assert out.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]


@pytest.mark.parametrize("before", ["file", "folder"])
def test_a_folder_output_replaces_what_was_there_in_one_rename(tmp_path, before):
    out = tmp_path / "weights"
    if before == "file":
        out.write_text("a file")
    else:
        out.mkdir()
        (out / "stale.safetensors").write_text("stale")
    with StagedOutput(out, is_dir=True) as staged:
        (staged.tmp / "model.safetensors").write_text("new")
        staged.commit()
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["weights"]


def test_an_output_that_appeared_meanwhile_is_kept_unless_replacing_is_allowed(tmp_path):
    out = tmp_path / "model.safetensors"
    staged = StagedOutput(out, replace=False)
    staged.tmp.write_text("ours")
    out.write_text("someone else's")
    with pytest.raises(FileExistsError):
        staged.commit()
    staged.discard()
    assert out.read_text() == "someone else's" and [p.name for p in tmp_path.iterdir()] == [out.name]
