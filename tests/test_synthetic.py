"""The synthetic ground-truth set: specs, garments, and the builder end to end (tiny preset).

Plain-data parts run without Blender. The build tests run real Blender shards in worker
processes: a crash of the whole build, a worker killed mid-shard, resumption, validation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from synthetic_data.presets import PRESETS, MotionSpec, Shard, get_preset, plan, split_characters
from synthetic_data.spec import (
    GARMENT_FAMILIES,
    GARMENT_PARAMS,
    CharacterSpec,
    GarmentSpec,
    SpecError,
    sample_character,
)

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ plain data
def test_character_spec_is_deterministic_by_seed() -> None:
    a, b = sample_character(41), sample_character(41)
    assert a == b and a.to_json() == b.to_json()
    others = [sample_character(s) for s in range(8)]
    assert len({c.to_json() for c in others}) == 8
    # Seeds vary what matters: body shape, skin, outfits and prints.
    assert len({c.betas for c in others}) == 8
    assert len({c.skin for c in others}) > 4
    assert len({tuple(g.kind for g in c.garments) for c in others}) > 2
    assert len({g.texture.pattern for c in others for g in c.garments}) > 2


def test_character_spec_json_round_trip_and_errors() -> None:
    spec = sample_character(5)
    doc = json.loads(spec.to_json())
    assert CharacterSpec.from_dict(doc) == spec
    bad = json.loads(spec.to_json())
    bad["garments"][0]["texture"]["pattern"] = "paisley"
    with pytest.raises(SpecError, match="texture.pattern.*paisley.*allowed: stripes, checks, dots, print"):
        CharacterSpec.from_dict(bad)
    bad = json.loads(spec.to_json())
    bad["hair"]["colour"] = [1.2, 0, 0]
    with pytest.raises(SpecError, match="hair.colour"):
        CharacterSpec.from_dict(bad)
    bad = json.loads(spec.to_json())
    bad["lighting"]["shadows"] = True
    with pytest.raises(SpecError, match="unknown field.*shadows"):
        CharacterSpec.from_dict(bad)


def test_every_garment_family_and_pattern_is_drawn() -> None:
    specs = [sample_character(s) for s in range(60)]
    kinds = {g.kind for c in specs for g in c.garments}
    assert kinds == set(GARMENT_FAMILIES)  # skirts/dresses, shirts/jackets, trousers/shorts
    assert {g.texture.pattern for c in specs for g in c.garments} == {"stripes", "checks", "dots", "print"}
    assert any(g.texture.logo is not None for c in specs for g in c.garments)
    assert {c.hair.style for c in specs} >= {"short", "long", "bun", "ponytail"}


def test_presets_split_by_character_and_share_motions() -> None:
    for preset in PRESETS.values():
        shards = plan(preset) if preset.name != "paper" else None
        split = split_characters(preset)
        assert sum(v == "test" for v in split.values()) == preset.test_characters
        if shards is None:
            continue
        by_char: dict[str, set[str]] = {}
        for s in shards:
            assert s.split == split[s.character.character_id]
            by_char.setdefault(s.character.character_id, set()).add(s.motion.name)
        assert all(m == {m.name for m in preset.motions} for m in by_char.values())
    paper = get_preset("paper")
    assert (paper.characters, paper.test_characters, paper.render.resolution) == (99, 19, 512)
    assert paper.frames == 32 * 30 and paper.fps == 30
    with pytest.raises(SpecError, match="allowed: tiny, mini, paper"):
        get_preset("huge")
    with pytest.raises(SpecError, match="bvh motion needs a path"):
        MotionSpec("salsa", source="bvh")


def test_logo_is_a_sharp_mark() -> None:
    from synthetic_data.textures import logo_image

    logo = next(g.texture.logo for s in range(20) for g in sample_character(s).garments if g.texture.logo)
    img = logo_image(logo, 64)
    assert img.shape == (64, 64, 4)
    alpha = img[..., 3]
    assert alpha[0, 0] == 0 and alpha[32, 32] > 0.99  # transparent around, solid in the middle
    inside = img[alpha > 0.99][:, :3]
    # Two colours (shape and glyph) with a strong contrast: high-frequency detail to track.
    lum = inside @ np.array([0.2126, 0.7152, 0.0722])
    assert lum.max() - lum.min() > 0.25


# ------------------------------------------------------------------------------ garments
@pytest.fixture(scope="module")
def body_rest():
    from btdm_engine.body import load_body_model
    from synthetic_data.garments import BodyRest

    body = load_body_model("mannequin")
    return body, BodyRest.from_body_model(body, np.asarray(sample_character(3).betas))


@pytest.mark.parametrize("kind", sorted(GARMENT_PARAMS))
def test_garments_fit_outside_the_body_and_are_held(body_rest, kind: str) -> None:
    from synthetic_data.garments import build_garment, inside_body

    _, rest = body_rest
    base = sample_character(3).garments[0]
    params = {k: 0.5 * (lo + hi) for k, (lo, hi) in GARMENT_PARAMS[kind].items()}
    mesh = build_garment(rest, GarmentSpec(kind, params, base.cloth, base.texture), spacing=0.04)
    assert not inside_body(rest, mesh.vertices).any()
    # One manifold piece: every edge borders one or two quads.
    f = mesh.faces
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 3]], f[:, [3, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert counts.max() <= 2
    assert np.unique(f).size == len(mesh.vertices)
    # Pinned where a real garment is held: the waistband (legwear, skirts) or the shoulders.
    held = mesh.vertices[mesh.pin == 1.0]
    assert len(held) >= 8
    lm = rest.landmarks()
    if GARMENT_FAMILIES[kind] == "top":
        assert held[:, 1].min() > lm["armpit"] and np.abs(held[:, 0]).max() < lm["shoulder_x"] + 0.01
    elif kind == "dress":
        assert held[:, 1].min() > lm["waist"]
    else:
        assert np.allclose(held[:, 1], lm["waist"], atol=0.01)
    assert np.allclose(mesh.skin_weights.sum(1), 1.0, atol=1e-6)
    # Cloth resolution follows the requested spacing.
    e = np.unique(edges, axis=0)
    assert 0.02 < np.median(np.linalg.norm(mesh.vertices[e[:, 0]] - mesh.vertices[e[:, 1]], axis=1)) < 0.06


def test_trousers_have_two_legs_and_a_jacket_is_open(body_rest) -> None:
    import networkx as nx

    from synthetic_data.garments import build_garment

    _, rest = body_rest
    base = sample_character(3).garments[0]

    def boundary_loops(kind: str, **params: float) -> list[np.ndarray]:
        p = {k: 0.5 * (lo + hi) for k, (lo, hi) in GARMENT_PARAMS[kind].items()} | params
        m = build_garment(rest, GarmentSpec(kind, p, base.cloth, base.texture), spacing=0.04)
        f = m.faces
        edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 3]], f[:, [3, 0]]]), axis=1)
        u, c = np.unique(edges, axis=0, return_counts=True)
        g = nx.Graph(u[c == 1].tolist())
        return [m.vertices[list(comp)] for comp in nx.connected_components(g)]

    loops = boundary_loops("trousers")
    assert len(loops) == 3  # waist and two cuffs
    cuffs = sorted(loops, key=lambda p: p[:, 1].mean())[:2]
    assert np.sign(cuffs[0][:, 0]).tolist().count(1) in (0, len(cuffs[0]))  # each cuff on one side
    assert cuffs[0][:, 0].mean() * cuffs[1][:, 0].mean() < 0
    shirt = boundary_loops("shirt")
    assert len(shirt) == 4  # neck, two cuffs, hem
    jacket = boundary_loops("jacket")
    assert len(jacket) == 3  # the front opening joins the neck and the hem
    front = max(jacket, key=len)
    assert front[:, 1].max() - front[:, 1].min() > 0.4


# ------------------------------------------------------------------------------ build end to end


def _cli(out: Path, *extra: str, workers: int = 1) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "synthetic_data.command", "build", "--preset", "tiny", "--out", str(out),
           "--workers", str(workers), "--no-progress", *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the build exited ({proc.returncode}) before {what}:\n{proc.stderr.read()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _started(staging: Path, seq: str) -> bool:
    """The shard's worker is running and has written some of its sequence (pose maps)."""
    return (staging / "pids" / f"{seq}.pid").exists() and any((staging / "sequences" / seq / "iuv").glob("*.png"))


@pytest.fixture(scope="module")
def tiny_build(tmp_path_factory) -> SimpleNamespace:
    """The tiny dataset, built as a user on a bad day builds it, once for this module (each Blender shard
    costs seconds): the whole build is killed (driver and worker) mid-shard; the rerun, two workers, loses
    one worker to SIGKILL mid-shard and exits saying so; a third run completes the set. What each run
    left is recorded here for the tests that check it."""
    pytest.importorskip("bpy")
    from synthetic_data.build import build_dataset

    out = tmp_path_factory.mktemp("synth") / "tiny"
    first, second = (s.sequence_id for s in plan(get_preset("tiny")))
    staging = out / ".staging"
    proc = _cli(out, workers=1)
    _wait_for(lambda: _started(staging, first), proc, "the first shard started")
    os.killpg(proc.pid, signal.SIGKILL)  # a crash: the whole build, worker included
    proc.wait()
    # Nothing half-written looks finished: no sequence folder, no manifest; the partial folder
    # is only in the staging area, without meta.json.
    assert not (out / "manifest.json").exists()
    assert not any((out / "sequences").iterdir())
    assert (staging / "sequences" / first / "iuv").is_dir()
    assert not (staging / "sequences" / first / "meta.json").exists()
    # The rerun resumes the first shard and starts the second, whose worker is then killed.
    victim, survivor = second, first
    proc = _cli(out, workers=2)
    _wait_for(lambda: _started(staging, victim), proc, "the victim shard started")
    pid = int((staging / "pids" / f"{victim}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    manifest = json.loads((out / "manifest.json").read_text())
    kept = {p: p.stat().st_mtime_ns for p in (out / "sequences" / survivor).rglob("*")}
    report = build_dataset(get_preset("tiny"), out, workers=1, progress=False)
    assert not staging.exists()
    return SimpleNamespace(out=out, victim=victim, survivor=survivor, pid=pid, returncode=proc.returncode,
                           stderr=stderr, manifest=manifest, kept=kept, report=report)


@pytest.fixture(scope="module")
def tiny_dataset(tiny_build: SimpleNamespace) -> Path:
    """The complete tiny dataset that :func:`tiny_build` ends with; shared: read-only."""
    return tiny_build.out


@pytest.mark.blender
@pytest.mark.slow
def test_tiny_dataset_is_valid_and_complete(tiny_dataset: Path) -> None:
    import cv2

    from btdm_engine.motion import MotionClip
    from btdm_engine.posemaps import read_iuv_png
    from training.dataset_format import validate_dataset

    manifest = validate_dataset(tiny_dataset, verify_checksums=True)
    preset = get_preset("tiny")
    assert manifest.info["complete"] is True and manifest.info["pending"] == []
    assert manifest.resolution == (64, 64) and manifest.fps == preset.fps
    train = {manifest.sequences[s].character for s in manifest.splits["train"]}
    test = {manifest.sequences[s].character for s in manifest.splits["test"]}
    assert train and test and not train & test
    clips = {}
    for seq_id, rec in manifest.sequences.items():
        folder = manifest.sequence_dir(seq_id)
        meta = json.loads((folder / "meta.json").read_text())
        # meta.json rebuilds the sequence: the job is the exact shard the plan makes.
        shard = Shard.from_job(meta["job"])
        assert shard == next(s for s in plan(preset) if s.sequence_id == seq_id)
        assert shard.character == sample_character(shard.character.seed, shard.character.character_id)
        assert meta["versions"]["blender"].startswith("5.0")
        clip = MotionClip.load(folder / "clip.npz")
        clips[seq_id] = clip
        assert np.allclose(clip.betas, shard.character.betas, atol=1e-6)
        for t in range(rec.num_frames):
            rgba = cv2.imread(str(folder / "rgb" / f"{t:06d}.png"), cv2.IMREAD_UNCHANGED)
            assert rgba.shape == (64, 64, 4)
            person = rgba[..., 3] > 127
            body = read_iuv_png(folder / "iuv" / f"{t:06d}.png")[..., 0] > 0
            # The rendered (clothed) person covers the pose map's body: same camera, same pose.
            assert (person & body).sum() / body.sum() > 0.9
            assert person.sum() < 0.6 * person.size
    # Every character performs exactly the same motion (joint rotations), as the paper's set.
    poses = [c.poses for c in clips.values()]
    assert all(np.array_equal(poses[0], p) for p in poses[1:])


@pytest.mark.blender
@pytest.mark.slow
def test_validation_catches_a_missing_or_corrupt_frame(tiny_dataset: Path, tmp_path: Path) -> None:
    from training.dataset_format import DatasetFormatError, validate_dataset

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset, copy)
    seq = sorted((copy / "sequences").iterdir())[0]
    frame = seq / "rgb" / "000003.png"
    data = bytearray(frame.read_bytes())
    data[len(data) // 2] ^= 0xFF
    frame.write_bytes(bytes(data))
    with pytest.raises(DatasetFormatError, match=r"000003\.png: checksum mismatch"):
        validate_dataset(copy, verify_checksums=True)
    (seq / "iuv" / "000002.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"iuv.*5 frames, the manifest says num_frames = 6"):
        validate_dataset(copy)


@pytest.mark.blender
@pytest.mark.slow
def test_worker_death_is_reported_and_rerun_completes(tiny_build: SimpleNamespace) -> None:
    from training.dataset_format import validate_dataset

    b = tiny_build
    assert b.returncode == 1
    assert f"{b.victim}: worker process {b.pid} was killed by signal SIGKILL" in b.stderr
    assert "rerun the same command" in b.stderr
    assert list(b.manifest["sequences"]) == [b.survivor]  # the other shard (resumed) finished and was kept
    assert b.manifest["info"]["pending"] == [b.victim] and b.manifest["info"]["complete"] is False
    assert b.report.built == [b.victim] and b.report.skipped == [b.survivor]
    assert {p: p.stat().st_mtime_ns for p in (b.out / "sequences" / b.survivor).rglob("*")} == b.kept
    assert validate_dataset(b.out, verify_checksums=True).info["complete"] is True


def test_build_refuses_unknown_sequence_and_other_recipe(tmp_path: Path) -> None:
    from synthetic_data.build import build_dataset

    with pytest.raises(SpecError, match="unknown sequence id"):
        build_dataset(get_preset("tiny"), tmp_path / "x", only=["nobody-walk"], progress=False)
    # A folder built with one recipe is not silently extended with another.
    from training.dataset_format import write_manifest

    out = tmp_path / "y"
    seq = out / "sequences" / "s0"
    (seq / "rgb").mkdir(parents=True)
    (seq / "iuv").mkdir()
    import cv2

    cv2.imwrite(str(seq / "rgb" / "000000.png"), np.zeros((64, 64, 4), np.uint8))
    cv2.imwrite(str(seq / "iuv" / "000000.png"), np.zeros((64, 64, 3), np.uint8))
    clip = plan_clip_free_record(seq)
    from synthetic_data.shard import SYNTH_VERSION

    info = {"preset": get_preset("mini").to_dict(), "synth_version": SYNTH_VERSION}
    write_manifest(out, [clip], {"train": ["s0"], "test": []}, 64, 30.0, info)
    with pytest.raises(SpecError, match="different recipe"):
        build_dataset(get_preset("tiny"), out, progress=False)
    # Nor is one built by another version of this code (the same spec would render differently).
    write_manifest(out, [clip], {"train": ["s0"], "test": []}, 64, 30.0, {**info, "synth_version": SYNTH_VERSION - 1})
    with pytest.raises(SpecError, match=f"built by synthetic_data version {SYNTH_VERSION - 1}"):
        build_dataset(get_preset("mini"), out, progress=False)


def plan_clip_free_record(seq: Path):
    """A minimal valid one-frame sequence record (a real MotionClip, no Blender)."""
    from btdm_engine.motion import make_motion
    from training.dataset_format import SequenceRecord

    make_motion("walk", seconds=1 / 30, fps=30.0, width=64, height=64).save(seq / "clip.npz")
    (seq / "meta.json").write_text("{}")
    return SequenceRecord.from_folder(seq.parent.parent, seq.name, "someone")


@pytest.mark.blender
@pytest.mark.slow
def test_ray_build_matches_local_build(tiny_dataset: Path, tmp_path: Path) -> None:
    """Shards as Ray tasks on a local 2-CPU cluster give the same dataset as local workers."""
    pytest.importorskip("ray")
    from synthetic_data.build import build_dataset
    from training.dataset_format import validate_dataset

    out = tmp_path / "ray"
    report = build_dataset(get_preset("tiny"), out, workers=2, ray_address="local", progress=False)
    assert len(report.built) == 2
    ray_manifest = validate_dataset(out, verify_checksums=True)
    local_manifest = validate_dataset(tiny_dataset)
    for seq_id, rec in ray_manifest.sequences.items():
        local = local_manifest.sequences[seq_id].checksums
        # Byte-identical frames, pose maps and clips: same spec and seeds, same cloth and renders
        # (only meta.json differs: it records the timings).
        differ = [k for k in rec.checksums if rec.checksums[k] != local[k]]
        assert differ == ["meta.json"]


_CLIP_BYTES = """
import hashlib
from btdm_engine.body import load_body_model
from synthetic_data.presets import get_preset, plan
from synthetic_data.shard import make_clip
preset = get_preset("wide")
digest = hashlib.sha256()
for shard in plan(preset)[:3]:
    clip = make_clip(shard.motion, shard.character, preset, load_body_model("mannequin"))
    for field in (clip.poses, clip.trans, clip.K, clip.world_to_cam):
        digest.update(field.tobytes())
print(digest.hexdigest())
"""


def test_a_clip_is_byte_identical_whatever_the_thread_count() -> None:
    """A dataset's clip.npz must not depend on the process that made it (a local worker, a Ray task):
    the camera and root translation come from fixed-order float64 arithmetic (framing_camera,
    body.exact), not from torch's or BLAS's threaded sums."""
    digests = set()
    for threads in ("1", "3"):  # one, and more than this machine's cores
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        r = subprocess.run([sys.executable, "-c", _CLIP_BYTES], capture_output=True, text=True, timeout=300, env=env,
                           cwd=Path(__file__).resolve().parents[1])
        assert r.returncode == 0, r.stderr
        digests.add(r.stdout.split()[-1])
    assert len(digests) == 1


class _Float32Noise:
    """A body whose float32 forward pass is off by a few units in the last place, at random: what
    another thread count or BLAS kernel gives (exact positions, body.exact, are left alone)."""

    def __init__(self, body, seed: int) -> None:
        self._body, self._rng = body, np.random.default_rng(seed)

    def __getattr__(self, name: str):
        return getattr(self._body, name)

    def forward(self, poses, betas, trans):
        verts, joints = self._body.forward(poses, betas, trans)
        ulps = self._rng.integers(-4, 5, size=verts.shape)
        towards = np.where(ulps > 0, np.inf, -np.inf).astype(np.float32)
        noisy = verts.copy()
        for _ in range(4):  # nudge each coordinate by up to 4 ulps, either way
            noisy = np.where(ulps != 0, np.nextafter(noisy, towards), noisy)
            ulps = ulps - np.sign(ulps)
        assert noisy.dtype == np.float32 and (noisy != verts).mean() > 0.8
        return noisy, joints


def test_clip_camera_ignores_the_last_bits_of_float32_vertices() -> None:
    """Catches the bug class on any machine: the camera stored in clip.npz must not move when the
    posed vertices' float32 bits do (they depend on the CPU and the thread count)."""
    from btdm_engine.body import load_body_model
    from synthetic_data.shard import make_clip

    preset = get_preset("tiny")
    body = load_body_model(preset.body_model)
    for shard in plan(preset):
        clean = make_clip(shard.motion, shard.character, preset, body)
        noisy = make_clip(shard.motion, shard.character, preset, _Float32Noise(body, seed=7))
        for field in ("K", "world_to_cam", "poses", "trans", "betas"):
            assert getattr(clean, field).tobytes() == getattr(noisy, field).tobytes(), field


def test_bvh_motion_drives_the_same_pipeline(tmp_path: Path) -> None:
    """A BVH import is a motion like any other: cut to the preset's frames, the character's body
    and camera; the joint rotations are the file's."""
    from btdm_engine.body import load_body_model
    from btdm_engine.motion import make_motion, save_bvh
    from synthetic_data.shard import make_clip

    source = make_motion("wave", seconds=0.5, fps=30.0, seed=1)
    path = save_bvh(source, tmp_path / "wave.bvh")
    preset = get_preset("tiny").with_overrides(motions=(MotionSpec("wave-bvh", source="bvh", path=str(path)),))
    shard = plan(preset)[0]
    clip = make_clip(shard.motion, shard.character, preset, load_body_model("mannequin"))
    assert clip.num_frames == preset.frames and (clip.width, clip.height) == (64, 64)
    assert np.allclose(clip.betas, shard.character.betas, atol=1e-6)
    from scipy.spatial.transform import Rotation

    a = Rotation.from_rotvec(clip.poses[:, 1:].reshape(-1, 3))
    b = Rotation.from_rotvec(source.poses[: preset.frames, 1:].reshape(-1, 3))
    # Within the BVH round trip's precision (text Euler angles, the importer's resampling).
    assert np.degrees((a.inv() * b).magnitude()).max() < 3.0
    assert np.degrees(b.magnitude()).max() > 20.0  # and the motion is not trivial


def test_cli_presets_spec_and_errors(capsys) -> None:
    import argparse

    from synthetic_data import command as synth

    assert synth.main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "paper  99 characters (80 train / 19 test)" in out and "512 px" in out
    assert synth.main(["spec", "--seed", "12"]) == 0
    assert CharacterSpec.from_json(capsys.readouterr().out) == sample_character(12)
    assert synth.main(["build", "--preset", "nope", "--out", "/tmp/never-built"]) == 2
    assert "unknown preset 'nope'; allowed: tiny, mini, paper" in capsys.readouterr().err
    # The `btdm` dispatcher hook: register() adds `synth` with its subcommands.
    parser = argparse.ArgumentParser(prog="btdm")
    synth.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["synth", "build", "--preset", "mini", "--out", "x", "--workers", "3"])
    assert (args.preset, args.workers, args.func.__name__) == ("mini", 3, "_build")
