"""Atomic writes (btdm_engine.fileio): a failed write leaves the previous result and no temporary
file; a finished one has the permissions an ordinary ``open(path, "w")`` or ``mkdir`` would give."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest

from btdm_engine.fileio import atomic_dir, atomic_path, atomic_write_bytes, atomic_write_text, write_json_atomic


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_files_get_ordinary_permissions(tmp_path: Path) -> None:
    expected = 0o666 & ~_umask()  # 0o644 under the usual umask 022; mkstemp alone gives 0o600
    assert _mode(atomic_write_bytes(tmp_path / "a.bin", b"x")) == expected
    assert _mode(atomic_write_text(tmp_path / "sub" / "b.txt", "é")) == expected
    assert _mode(write_json_atomic(tmp_path / "c.json", {"k": [1, 2]})) == expected
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "é"
    assert (tmp_path / "c.json").read_text() == '{\n  "k": [\n    1,\n    2\n  ]\n}\n'
    with atomic_path(tmp_path / "d.npy", suffix=".npy.tmp", fsync=True) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.arange(3))
    assert _mode(tmp_path / "d.npy") == expected
    assert _hidden(tmp_path) == []


def test_a_failed_file_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    atomic_write_bytes(path, b"old")
    # json.dump writes as it goes and fails at the value it cannot encode: a real error half-way through.
    with pytest.raises(TypeError, match="not JSON serializable"), atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump({"fine": list(range(1000)), "bad": object()}, fh)
    assert path.read_bytes() == b"old" and _hidden(tmp_path) == []

    with pytest.raises(ValueError, match="JSON compliant"):  # NaN is refused before anything is written
        write_json_atomic(path, {"loss": float("nan")})
    assert path.read_bytes() == b"old" and _hidden(tmp_path) == []


def test_the_mannequin_cache_writer_is_atomic(tmp_path: Path) -> None:
    from btdm_engine.body.mannequin import write_model_file

    path = tmp_path / "cache" / "mannequin.pkl"
    write_model_file({"v_template": np.zeros((4, 3))}, path)
    assert _mode(path) == 0o666 & ~_umask()
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        write_model_file({"v_template": np.ones((1 << 16, 3)), "f": lambda: 0}, path)
    with open(path, "rb") as fh:
        np.testing.assert_array_equal(pickle.load(fh)["v_template"], np.zeros((4, 3)))
    assert sorted(p.name for p in path.parent.iterdir()) == ["mannequin.pkl"]


def test_a_failed_video_keeps_the_old_one_and_leaves_no_temp(tmp_path: Path) -> None:
    from btdm_engine.errors import UsageError
    from btdm_engine.posemaps.preview import write_mp4

    path = tmp_path / "preview.mp4"
    frames = [np.full((16, 16, 3), 40 * i, np.uint8) for i in range(3)]
    write_mp4(iter(frames), path, fps=8)
    old = path.read_bytes()
    assert _mode(path) == 0o666 & ~_umask()
    # ffmpeg is already encoding when the third frame turns out to be the wrong size.
    with pytest.raises(UsageError, match="frame 2 is 8x8"):
        write_mp4(iter([*frames[:2], np.zeros((8, 8, 3), np.uint8)]), path, fps=8)
    assert path.read_bytes() == old and _hidden(tmp_path) == []


def test_atomic_dir_publishes_a_whole_folder_with_ordinary_permissions(tmp_path: Path) -> None:
    target = tmp_path / "parent" / "model"
    with atomic_dir(target, fsync=True) as stage:
        assert stage.parent == target.parent and stage.name.startswith(".model.") and not target.exists()
        (stage / "sub").mkdir()
        (stage / "sub" / "weights.bin").write_bytes(b"w")
        write_json_atomic(stage / "config.json", {"a": 1})
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == ["config.json", "sub", "sub/weights.bin"]
    assert _mode(target) == 0o777 & ~_umask()  # mkdtemp alone gives 0o700
    assert _mode(target / "config.json") == 0o666 & ~_umask()
    assert _hidden(target.parent) == []


def test_a_failed_folder_write_keeps_the_old_folder_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "snap"
    with atomic_dir(target) as stage:
        (stage / "a.txt").write_text("old")
    with pytest.raises(ZeroDivisionError), atomic_dir(target, replace=True) as stage:
        (stage / "a.txt").write_text("new, half")
        (stage / "b.txt").write_text(str(1 / 0))
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"] and (target / "a.txt").read_text() == "old"
    assert _hidden(tmp_path) == []

    with atomic_dir(target, replace=True) as stage:  # replacing: the old folder is gone, nothing left aside
        (stage / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"] and _hidden(tmp_path) == []


def test_atomic_dir_never_replaces_what_it_was_not_asked_to(tmp_path: Path) -> None:
    mine = tmp_path / "user_folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"), atomic_dir(mine) as stage:
        (stage / "x").write_text("x")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and _hidden(tmp_path) == []

    # A link or a file at the target is refused even with replace: nothing behind it is deleted.
    link = tmp_path / "link"
    link.symlink_to(mine, target_is_directory=True)
    plain = tmp_path / "plain"
    plain.write_text("a file")
    for target in (link, plain):
        with pytest.raises(FileExistsError, match="not a folder"), atomic_dir(target, replace=True) as stage:
            (stage / "x").write_text("x")
    assert link.is_symlink() and (mine / "notes.txt").read_text() == "mine" and plain.read_text() == "a file"
    assert _hidden(tmp_path) == []


def test_one_write_json_atomic_with_path_first(tmp_path: Path) -> None:
    import importlib

    evaluate = importlib.import_module("btdm_engine.metrics.evaluate")  # the package exports a function of that name
    assert evaluate.write_json_atomic is write_json_atomic  # one helper, in fileio
    evaluate.write_report({"metrics": {"psnr": float("inf"), "lpips": float("nan")}}, tmp_path / "r" / "report.json")
    assert json.loads((tmp_path / "r" / "report.json").read_text()) == {"metrics": {"psnr": "inf", "lpips": None}}


def test_the_addons_writers_are_atomic_with_ordinary_permissions(tmp_path: Path) -> None:
    # The add-on cannot import btdm_engine (no torch inside Blender): its one safe-write path is
    # btdm_bridge.files.atomic_write_bytes (blender_addon.pngio's), which the skeleton writer goes through too.
    from blender_addon.armature import save_skeleton_npz
    from blender_addon.pngio import atomic_write_bytes as addon_write

    expected = 0o666 & ~_umask()
    addon_write(str(tmp_path / "plate.png"), b"png")
    path = Path(save_skeleton_npz(tmp_path / "shot" / "skeleton.npz", {"fps": np.float64(24.0), "x": np.arange(4)}))
    assert _mode(tmp_path / "plate.png") == expected and _mode(path) == expected
    with np.load(path, allow_pickle=False) as z:
        assert float(z["fps"]) == 24.0 and z["x"].tolist() == [0, 1, 2, 3]

    class Unsaveable:
        def __array__(self, *args, **kwargs):
            raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        save_skeleton_npz(path, {"x": Unsaveable()})
    with np.load(path, allow_pickle=False) as z:
        assert z["x"].tolist() == [0, 1, 2, 3]  # the old file stays whole
    assert _hidden(tmp_path) == [] and _hidden(tmp_path / "shot") == []
