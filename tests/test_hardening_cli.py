"""Issue 23, the CLI's last silent or misleading results: each one now a clear refusal or warning.

Every input is a real file written here and every command runs for real, as a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from btdm_engine.motion import load_bvh, make_motion, save_bvh
from btdm_engine.motion.bvh import BvhError
from btdm_engine.motion.clip import MotionClip, MotionClipError
from btdm_engine.motion.retarget import RetargetError

ROOT = Path(__file__).resolve().parent.parent


def btdm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "btdm_engine.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)  # fmt: skip


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
