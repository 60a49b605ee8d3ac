"""Issue 23, the CLI's last silent or misleading results: each one now a clear refusal or warning.

Every input is a real file written here and every command runs for real, through the function the
``btdm`` command runs (``commandline.run_btdm``, in this process).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from commandline import run_btdm as btdm

from btdm_engine.motion import load_bvh, make_motion, save_bvh
from btdm_engine.motion.bvh import BvhError
from btdm_engine.motion.clip import MotionClip, MotionClipError
from btdm_engine.motion.retarget import RetargetError


@pytest.fixture(scope="module")
def walk_bvh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Y-up, centimetre BVH of a short walk (what `btdm motion` writes, as mocap files are)."""
    clip = make_motion("walk", seconds=0.4, fps=30.0)
    return save_bvh(clip, tmp_path_factory.mktemp("bvh") / "good.bvh")


def _with_value(src: Path, dst: Path, frame: int, column: int, value: str) -> Path:
    """``src`` with one channel value of one frame replaced (columns count from the root's Xposition)."""
    lines = src.read_text().splitlines()
    first = lines.index("MOTION") + 3
    row = lines[first + frame].split()
    row[column] = value
    lines[first + frame] = " ".join(row)
    dst.write_text("\n".join(lines) + "\n")
    return dst


# ------------------------------------------------------------------ 1. an up axis the skeleton contradicts
def test_up_axis_that_contradicts_the_skeleton_is_refused(tmp_path, walk_bvh):
    out = tmp_path / "z.npz"
    r = btdm("motion", "import", str(walk_bvh), "--up", "Z", "--out", str(out))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert "good.bvh: --up Z contradicts the rest skeleton, which stands along +Y" in r.stderr
    assert "pass --up Y, or leave --up out" in r.stderr
    assert "warning" not in r.stderr and "assumed" not in r.stderr  # the old warning blamed the units
    assert not out.exists()
    # The right value, and the detected default, import it standing, at a person's height.
    for flags in (["--up", "Y"], []):
        r = btdm("motion", "import", str(walk_bvh), *flags, "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert "Y up" in r.stdout and "warning" not in r.stderr
    assert MotionClip.load(out).num_frames == 12


def test_up_axis_check_in_the_library(walk_bvh):
    with pytest.raises(RetargetError, match=r"--up Z contradicts .* \+Y .* pass --up Y"):
        load_bvh(walk_bvh, up_axis="Z", scale=0.01)  # a given scale does not bypass it
    assert load_bvh(walk_bvh, up_axis="Y").num_frames == 12


# ------------------------------------------------------------------ 2. absurd root motion
@pytest.mark.parametrize(("column", "value", "message"), [
    (0, "1e30", r"far\.bvh:\d+: frame 3, channel Xposition of 'pelvis' is 1e\+30: a position over"),
    (1, "-1e9", r"far\.bvh:\d+: frame 3, channel Yposition of 'pelvis' is -1e\+09: a position over"),
    (4, "1e12", r"far\.bvh:\d+: frame 3, channel Xrotation of 'pelvis' is 1e\+12 degrees: angles over"),
    (2, "nan", r"far\.bvh:\d+: frame 3, channel Zposition of 'pelvis' is nan \(not a finite number\)"),
    (8, "inf", r"far\.bvh:\d+: frame 3, channel Yrotation of 'left_hip' is inf \(not a finite number\)"),
])  # fmt: skip
def test_absurd_channel_values_are_refused_naming_file_channel_and_frame(tmp_path, walk_bvh, column, value, message):
    bad = _with_value(walk_bvh, tmp_path / "far.bvh", 3, column, value)
    with pytest.raises(BvhError, match=message):
        load_bvh(bad)
    r = btdm("motion", "import", str(bad), "--out", str(tmp_path / "far.npz"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("btdm motion import: error: far.bvh:") and "frame 3, channel" in r.stderr
    assert not (tmp_path / "far.npz").exists()


def test_far_root_in_metres_is_refused_and_a_jump_warned(tmp_path, walk_bvh):
    # 2e7 cm passes the file-unit bound but is 200 km once in metres.
    bad = _with_value(walk_bvh, tmp_path / "far.bvh", 5, 0, "2e7")
    with pytest.raises(RetargetError, match=r"far\.bvh: bone 'pelvis' at frame 5 is at \(2e\+05, .*not a motion"):
        load_bvh(bad)
    # 10 km for one frame: possible to import, but said out loud.
    jump = _with_value(walk_bvh, tmp_path / "jump.bvh", 5, 0, "1e6")
    r = btdm("motion", "import", str(jump), "--out", str(tmp_path / "jump.npz"))
    assert r.returncode == 0, r.stderr
    assert "warning: jump.bvh: the hips jump 1e+04 m between frames" in r.stderr


def test_frame_time_outside_the_fps_limit(tmp_path, walk_bvh):
    text = walk_bvh.read_text()
    (tmp_path / "slow.bvh").write_text(text.replace("Frame Time: 0.03333333", "Frame Time: 100"))
    with pytest.raises(BvhError, match=r"slow\.bvh:\d+: 'Frame Time: 100' is 0\.01 fps, outside the 0\.1\.\.1000 fps"):
        load_bvh(tmp_path / "slow.bvh")


def test_clip_with_absurd_translation_is_refused(tmp_path):
    clip = make_motion("walk", seconds=0.2, fps=30.0)
    clip.trans[2, 0] = 1e30
    path = clip.save(tmp_path / "far.npz")
    with pytest.raises(MotionClipError, match=r"far\.npz: field 'trans' holds 1e\+30 m at index \(2, 0\) \(frame 2\)"):
        MotionClip.load(path)
    clip.trans[2, 0] = 0.0
    assert MotionClip.load(clip.save(tmp_path / "ok.npz")).num_frames == 6


# ------------------------------------------------------------------ 3. absurd weights, saturated frames
MICRO_BTUNET = {
    "resolution": 16, "model_channels": 16, "channel_mult": [1, 2], "attention_resolutions": [8],
    "norm_groups": 8, "pose_encoder_channels": 8, "appearance_encoder_channels": 8,
}  # fmt: skip


def _model(folder: Path, factor: float) -> Path:
    """A micro BTU-Net model folder whose weights are a fresh network's times ``factor``."""
    import torch

    from btdm_engine.checkpoints import save_checkpoint
    from btdm_engine.diffusion.schedule import ScheduleConfig
    from btdm_engine.models import build_model

    torch.manual_seed(0)
    model = build_model("btunet", MICRO_BTUNET)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    save_checkpoint(folder / "btunet", model, "btunet", ScheduleConfig())
    return folder


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_motion("walk", seconds=0.1, fps=30.0, width=64, height=64).save(tmp_path_factory.mktemp("c") / "c.npz")


def _animate(model: Path, clip: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return btdm("animate", "--clip", str(clip), "--model", str(model), "--out", str(out), "--steps", "2",
                "--no-progress", "--device", "cpu", *extra)


def test_absurd_weights_are_refused_at_load_naming_the_checkpoint(tmp_path, short_clip):
    from btdm_engine.checkpoints import AbsurdWeightsError, load_checkpoint

    model = _model(tmp_path / "huge", 1e30)
    with pytest.raises(AbsurdWeightsError, match=r"huge/btunet/model\.safetensors: weights too large .*\(\d+ in all\)"):
        load_checkpoint(model / "btunet")
    out = tmp_path / "out"
    r = _animate(model, short_clip, out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "huge/btunet/model.safetensors: weights too large for a trained network" in r.stderr
    assert not out.exists()


def test_saturated_frames_are_refused_and_the_failed_run_leaves_nothing(tmp_path, short_clip):
    good, bad = _model(tmp_path / "good", 1.0), _model(tmp_path / "big", 1e3)  # x1000 loads, gives black
    out = tmp_path / "a" / "b" / "out"
    r = _animate(bad, short_clip, out)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{bad}: frame 0 came out saturated (all black) though its pose map shows a person" in r.stderr
    assert not (tmp_path / "a").exists()  # OUT and the parents this run made are gone again
    # An earlier complete run stays as it was, and no empty incomplete/ is left beside it.
    r = _animate(good, short_clip, out)
    assert r.returncode == 0, r.stderr
    before = {p.name: p.read_bytes() for p in (out / "frames").iterdir()}
    keep = out / "mine.txt"
    keep.write_text("the user's")
    r = _animate(bad, short_clip, out, "--overwrite")
    assert r.returncode == 2 and "saturated" in r.stderr
    assert {p.name: p.read_bytes() for p in (out / "frames").iterdir()} == before
    assert keep.read_text() == "the user's" and not (out / "incomplete").exists()


def test_frame_check_passes_real_frames_and_empty_pose_maps():
    from btdm_engine.commands.animate import SaturatedOutputError, check_frame

    person = np.zeros((16, 16, 3), np.uint8)
    person[4:12, 6:10, 0] = 3
    black = np.zeros((32, 32, 3), np.uint8)
    check_frame(black, np.zeros((16, 16, 3), np.uint8), 0, "m")  # nobody there: a plain frame may be uniform
    check_frame(np.full((32, 32, 3), 128, np.uint8), person, 0, "m")
    for frame, what in ((black, "all black"), (np.full((32, 32, 3), 255, np.uint8), "all white")):
        with pytest.raises(SaturatedOutputError, match=f"m: frame 7 came out saturated \\({what}\\)"):
            check_frame(frame, person, 7, "m")


# ------------------------------------------------------------------ 6. no raw errno messages, one fps limit
def test_a_file_in_the_way_of_an_output_is_named_with_what_to_do(tmp_path, short_clip):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    cases = [
        ("motion", "make", "walk", "--seconds", "0.1", "--out", str(blocker / "c.npz")),
        ("posemaps", str(short_clip), "--out", str(blocker / "maps")),
        ("animate", "--clip", str(short_clip), "--method", "texture", "--out", str(blocker)),
        ("animate", "--clip", str(short_clip), "--method", "texture", "--out", str(blocker / "x")),
    ]
    for args in cases:
        r = btdm(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Errno" not in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert f"{blocker}: is a file, not a folder" in r.stderr and "choose another path" in r.stderr, r.stderr
    assert blocker.read_text() == "not a folder"


def test_describe_os_error_names_the_path_and_the_fix(tmp_path):
    import errno
    import os

    from btdm_engine.fileio import OutputPathError, describe_os_error, make_folder

    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputPathError, match=r"cannot make the folder .*f/g/h: .*f: is a file, not a folder, so"):
        make_folder(tmp_path / "f" / "g" / "h")
    assert describe_os_error(FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(tmp_path))) == (
        f"{tmp_path}: already exists; move it away or choose another path")
    assert describe_os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/y")).startswith(
        "/x/y: no space left on the device")
    assert "Errno" not in describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/root/x"))


def test_one_fps_limit_for_every_command(tmp_path, walk_bvh, short_clip):
    from btdm_engine.limits import FPS_RANGE

    lo, hi = FPS_RANGE
    for fps in ("0", "0.01", "5000"):
        for args in (("motion", "make", "walk", "--fps", fps, "--out", str(tmp_path / "m.npz")),
                     ("motion", "import", str(walk_bvh), "--fps", fps, "--out", str(tmp_path / "i.npz")),
                     ("animate", "--clip", str(short_clip), "--method", "texture", "--fps", fps,
                      "--out", str(tmp_path / "a"))):
            r = btdm(*args)
            assert r.returncode == 2, r.stderr
            assert f"--fps: fps {fps} is outside {lo:g}..{hi:g}" in r.stderr, r.stderr
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------ 5. eval: empty foreground, incomplete sets
@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.toy_data import write_toy_dataset

    return write_toy_dataset(tmp_path_factory.mktemp("toy"), num_characters=3, num_frames=4, size=32)


def test_eval_with_an_empty_foreground_is_refused_naming_the_sequence(tmp_path, toy):
    import shutil

    import cv2

    seq = sorted((toy / "sequences").iterdir())[0].name
    iuv = tmp_path / "iuv"
    shutil.copytree(toy / "sequences", iuv)
    for png in (iuv / seq / "iuv").glob("*.png"):
        cv2.imwrite(str(png), np.zeros((32, 32, 3), np.uint8))  # nobody in any pose map
    report = tmp_path / "report.json"
    r = btdm("eval", "--pred", str(toy), "--gt", str(toy), "--iuv", str(iuv), "--out", str(report))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{iuv / seq / 'iuv'}: no foreground (I > 0) in any of the 4 pose maps of sequence {seq!r}" in r.stderr
    assert "nan" not in r.stdout and not report.exists()
    # The true pose maps score, with numbers.
    r = btdm("eval", "--pred", str(toy), "--gt", str(toy), "--iuv", str(toy), "--out", str(report))
    assert r.returncode == 0, r.stderr
    assert report.is_file()


def test_eval_of_an_incomplete_set_is_refused_unless_allowed(tmp_path, toy):
    import json
    import shutil

    data = tmp_path / "data"
    shutil.copytree(toy, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["info"] = {"complete": False, "pending": ["s9"]}
    (data / "manifest.json").write_text(json.dumps(manifest))
    report = tmp_path / "report.json"
    seq = sorted((data / "sequences").iterdir())[0]
    for gt in (data, seq, seq / "rgb"):  # the dataset root, one sequence, one sequence's frames
        r = btdm("eval", "--pred", str(gt), "--gt", str(gt), "--out", str(report))
        assert r.returncode == 2, r.stderr
        assert f"--pred {gt}: its dataset {data / 'manifest.json'} is marked incomplete (1 sequence(s) pending)" in r.stderr
        assert "--allow-incomplete" in r.stderr and not report.exists()
    r = btdm("eval", "--pred", str(data), "--gt", str(data), "--out", str(report), "--allow-incomplete")
    assert r.returncode == 0, r.stderr
    assert "warning: --pred" in r.stderr and "marked incomplete" in r.stderr and report.is_file()


# ------------------------------------------------------------------ 4. train: changed files, blank sequences
def _rewrite(data: Path, seq: str, rel: str, image: np.ndarray, keep_time: bool = False, fix_manifest: bool = False):
    """Write ``image`` over one file of a dataset copy; optionally keep its old time or update the manifest."""
    import json
    import os

    import cv2

    from training.dataset_format import sha256_file

    path = data / "sequences" / seq / rel
    old = path.stat()
    assert cv2.imwrite(str(path), image)
    if keep_time:
        os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    if fix_manifest:
        manifest = json.loads((data / "manifest.json").read_text())
        manifest["sequences"][seq]["checksums"][rel] = sha256_file(path)
        (data / "manifest.json").write_text(json.dumps(manifest))


def _train(data: Path, out: Path) -> subprocess.CompletedProcess:
    return btdm("train", "btunet", "--data", str(data), "--out", str(out), "--steps", "1", "--no-progress")


@pytest.fixture()
def data(tmp_path, toy) -> Path:
    import shutil

    shutil.copytree(toy, tmp_path / "data")  # copy2: the files keep their times
    return tmp_path / "data"


def test_train_refuses_a_file_changed_since_the_manifest(tmp_path, data):
    seq = sorted((data / "sequences").iterdir())[0].name
    other = np.full((32, 32, 3), 90, np.uint8)
    other[8:20, 10:14] = 200
    _rewrite(data, seq, "rgb/000001.png", other)  # changed after the set was built, not the middle frame
    r = _train(data, tmp_path / "run")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    frame = data / "sequences" / seq / "rgb" / "000001.png"
    assert f"{frame}: changed since the manifest was written: checksum mismatch" in r.stderr
    assert f"(sequence {seq!r})" in r.stderr and not (tmp_path / "run").exists()


def test_train_refuses_a_sampled_file_changed_even_with_its_old_time(tmp_path, data):
    seq = sorted((data / "sequences").iterdir())[1].name
    _rewrite(data, seq, "iuv/000002.png", np.zeros((32, 32, 3), np.uint8), keep_time=True)  # the middle frame
    r = _train(data, tmp_path / "run")
    assert r.returncode == 2, r.stderr
    assert f"{data / 'sequences' / seq / 'iuv' / '000002.png'}: checksum mismatch" in r.stderr


def test_train_refuses_an_all_black_sequence_and_warns_of_a_blank_frame(tmp_path, data):
    from training.dataset_format import DatasetManifest

    seqs = sorted(p.name for p in (data / "sequences").iterdir())
    _rewrite(data, seqs[0], "rgb/000003.png", np.zeros((32, 32, 3), np.uint8), fix_manifest=True)
    _rewrite(data, seqs[0], "rgb/000002.png", np.zeros((32, 32, 3), np.uint8), fix_manifest=True)
    notes = DatasetManifest.load(data).spot_check()
    assert notes == [f"{data / 'sequences' / seqs[0] / 'rgb'}: 2 of 4 frames are one uniform colour (a failed render?), "
                     f"e.g. 000002.png (sequence {seqs[0]!r})"]
    for i in range(4):  # a render that failed throughout; its checksums were taken from the failed files
        _rewrite(data, seqs[1], f"rgb/{i:06d}.png", np.zeros((32, 32, 3), np.uint8), fix_manifest=True)
    r = _train(data, tmp_path / "run")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (f"{data / 'sequences' / seqs[1] / 'rgb'}: every one of the 4 frames is one uniform colour (a failed "
            f"render?) (sequence {seqs[1]!r})") in r.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 7. pictures of the person, as the service takes them
def test_a_non_square_picture_without_plates_is_refused_as_the_service_does(tmp_path, short_clip):
    import cv2

    wide, square = tmp_path / "wide.jpg", tmp_path / "square.jpg"
    cv2.imwrite(str(wide), np.full((48, 64, 3), 120, np.uint8))
    cv2.imwrite(str(square), np.full((64, 64, 3), 120, np.uint8))
    base = ("animate", "--clip", str(short_clip), "--method", "texture", "--size", "64", "--no-progress")
    for flags, flag in ((["--appearance", str(wide), "--appearance-frame", "1"], "--appearance"),
                        (["--appearance", str(square), "--appearance-frame", "1", "--view", "2", str(wide)], "--view 2")):
        r = btdm(*base, *flags, "--out", str(tmp_path / "refused"))
        assert r.returncode == 2, r.stderr
        assert f"{flag}: expected a square image (the networks are square), got 64x48" in r.stderr, r.stderr
        assert "--plate" in r.stderr and not (tmp_path / "refused").exists()
    # a square JPEG is a picture like any other
    r = btdm(*base, "--appearance", str(square), "--appearance-frame", "1", "--view", "2", str(square),
             "--out", str(tmp_path / "ok"))
    assert r.returncode == 0, r.stderr
