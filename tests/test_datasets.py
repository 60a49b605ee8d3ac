"""Dataset layout reader/validator, frame-pair and SR3 datasets, truthful flip, DensePose video loader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from btdm_engine.posemaps.encoding import iuv_to_tensor, read_iuv_png, write_iuv_png
from btdm_engine.posemaps.parts import MIRROR_PART
from training.dataset_format import (
    DatasetFormatError,
    DatasetManifest,
    SequenceRecord,
    validate_dataset,
    write_manifest,
)
from training.datasets import DatasetError, FramePairDataset, PairDatasetConfig, SR3FrameDataset
from training.toy_data import LEFT_ARM, RIGHT_ARM, write_toy_dataset
from training.video import (
    DETECTRON2_PART_SWAP,
    SYMMETRY_FILE,
    DensePoseSymmetry,
    DensePoseVideoSet,
    symmetry_from_detectron2,
    write_symmetry,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), num_characters=3, num_frames=5, size=48)


@pytest.fixture()
def toy_copy(toy_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(toy_root, tmp_path / "toy"))


# --------------------------------------------------------------------------------------------
# Layout


def test_toy_dataset_validates_with_checksums(toy_root: Path) -> None:
    manifest = validate_dataset(toy_root, verify_checksums=True)
    assert manifest.resolution == (48, 48) and manifest.fps == 30.0
    assert manifest.splits == {"train": ("c00_s00", "c01_s00"), "test": ("c02_s00",)}
    rec = manifest.sequences["c02_s00"]
    assert rec.character == "char02" and rec.num_frames == 5 and len(rec.checksums) == 5 * 2 + 2
    frames = manifest.sequence_frames("train")
    assert [f.id for f in frames] == ["c00_s00", "c01_s00"]
    assert frames[0].rgb[4].name == "000004.png" and frames[0].iuv_order == "btdm"


def _edit_manifest(root: Path, edit) -> None:
    path = root / "manifest.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_validator_names_the_file_field_and_sequence(toy_copy: Path) -> None:
    (toy_copy / "sequences/c01_s00/iuv/000003.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"c01_s00/iuv: 4 frames.*num_frames = 5.*'c01_s00'"):
        validate_dataset(toy_copy)


def test_validator_catches_a_changed_file_by_checksum(toy_copy: Path) -> None:
    target = toy_copy / "sequences/c00_s00/rgb/000002.png"
    img = cv2.imread(str(target), cv2.IMREAD_UNCHANGED)
    img[0, 0] = 255 - img[0, 0]
    cv2.imwrite(str(target), img)
    validate_dataset(toy_copy)  # structure is intact; only the checksum can tell
    with pytest.raises(DatasetFormatError, match=r"c00_s00/rgb/000002\.png: checksum mismatch"):
        validate_dataset(toy_copy, verify_checksums=True)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["splits"].update(test=["c02_s00", "c01_s00"], train=["c00_s00", "c01_s00"]), r"'c01_s00' is in both splits"),
        (lambda d: d["sequences"]["c02_s00"].update(character="char00"),
         r"character 'char00' appears in splits 'train' and 'test'"),
        (lambda d: d.update(colour="blue"), r"unknown field\(s\) colour"),
        (lambda d: d["splits"].update(train=["c00_s00"]), r"c01_s00 are in no split"),
        (lambda d: d.update(resolution=[48]), r"'resolution' must be \[height, width\]"),
        (lambda d: d["sequences"]["c00_s00"].update(num_frames=4),
         r"sequences\['c00_s00'\]: field 'checksums' must list exactly"),
        (lambda d: d["splits"].pop("test"), r"splits: missing test"),
        (lambda d: d.update(format_version=2), r"format_version 2 is not supported"),
    ],
)
def test_manifest_errors(toy_copy: Path, edit, message: str) -> None:
    _edit_manifest(toy_copy, edit)
    with pytest.raises(DatasetFormatError, match=message):
        DatasetManifest.load(toy_copy)


def test_validator_checks_frame_size_and_clip(toy_copy: Path) -> None:
    _edit_manifest(toy_copy, lambda d: d.update(resolution=[64, 48]))
    with pytest.raises(DatasetFormatError, match=r"000000\.png: 48x48 px.*64x48"):
        validate_dataset(toy_copy)
    _edit_manifest(toy_copy, lambda d: d.update(resolution=[48, 48]))
    (toy_copy / "sequences/c02_s00/clip.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetFormatError, match=r"c02_s00/clip\.npz: .*not a zip"):
        validate_dataset(toy_copy)


def test_write_manifest_refuses_an_invalid_dataset(toy_root: Path, tmp_path: Path) -> None:
    manifest = DatasetManifest.load(toy_root)
    records = list(manifest.sequences.values())
    clash = [
        SequenceRecord("x1", "char00", 5, records[0].checksums),
        SequenceRecord("x2", "char00", 5, records[1].checksums),
    ]
    with pytest.raises(DatasetFormatError, match="character 'char00'"):
        write_manifest(tmp_path, clash, {"train": ["x1"], "test": ["x2"]}, 48, 30.0)
    assert not (tmp_path / "manifest.json").exists()
    with pytest.raises(DatasetFormatError, match="rgb/ has 0 frames|missing"):
        SequenceRecord.from_folder(tmp_path, "nothing", "someone")


# --------------------------------------------------------------------------------------------
# Frame pairs


def _iuv_at(root: Path, seq: str, t: int, size: int) -> np.ndarray:
    iuv = read_iuv_png(root / f"sequences/{seq}/iuv/{t:06d}.png")
    return cv2.resize(iuv, (size, size), interpolation=cv2.INTER_NEAREST)


def test_pairs_are_consecutive_resized_and_composited(toy_root: Path) -> None:
    manifest = DatasetManifest.load(toy_root)
    ds = FramePairDataset(manifest.sequence_frames("train"), PairDatasetConfig(resolution=32, hflip_prob=0.0))
    assert len(ds) == 2 * 4  # two sequences of five frames: four (t-1, t) pairs each
    item = ds[5]
    assert int(item["t"]) == 2  # second sequence, pair (1, 2)
    for key in ("y", "y_prev", "pose", "pose_prev", "appearance"):
        assert item[key].shape == (3, 32, 32) and item[key].dtype == torch.float32
        assert item[key].min() >= -1 and item[key].max() <= 1
    torch.testing.assert_close(item["pose"], iuv_to_tensor(_iuv_at(toy_root, "c01_s00", 2, 32)))
    torch.testing.assert_close(item["pose_prev"], iuv_to_tensor(_iuv_at(toy_root, "c01_s00", 1, 32)))
    # Nearest resizing keeps labels exact: every I value is one of the parts drawn.
    labels = torch.round((item["pose"][0] + 1) / 2 * 24).unique().tolist()
    assert set(labels) <= {0, 2, 17, 18, 23, 24}
    # The transparent background is composited onto white (away from the silhouette border,
    # where area resizing legitimately mixes colours).
    near_body = torch.nn.functional.max_pool2d((item["pose"][0] > -1).float()[None], 3, 1, 1)[0] > 0
    assert (~near_body).sum() > 100 and torch.all(item["y"][:, ~near_body] == 1.0)
    assert bool(item["has_appearance"])
    # The appearance frame is another frame of the same sequence: same colours, different pose.
    assert not torch.equal(item["appearance"], item["y"]) and not torch.equal(item["appearance"], item["y_prev"])


def test_items_are_deterministic_per_seed_epoch_and_index(toy_root: Path) -> None:
    seqs = DatasetManifest.load(toy_root).sequence_frames("train")
    a = FramePairDataset(seqs, PairDatasetConfig(resolution=16, seed=3))
    b = FramePairDataset(seqs, PairDatasetConfig(resolution=16, seed=3, cache=True))
    for i in range(len(a)):
        for k in a[i]:
            assert torch.equal(a[i][k], b[i][k])
    draws = set()
    for epoch in range(6):
        a.set_epoch(epoch)
        draws.add(tuple(a[0]["appearance"].flatten()[:50].tolist()))
    assert len(draws) > 1  # epochs draw different appearance frames / flips


def test_flip_mirrors_images_and_swaps_left_right_labels(toy_root: Path) -> None:
    seqs = DatasetManifest.load(toy_root).sequence_frames("train")
    plain = FramePairDataset(seqs, PairDatasetConfig(resolution=48, hflip_prob=0.0, appearance="none"))[1]
    flipped = FramePairDataset(seqs, PairDatasetConfig(resolution=48, hflip_prob=1.0, appearance="none"))[1]
    torch.testing.assert_close(flipped["y"], plain["y"].flip(-1))
    labels = torch.round((plain["pose"][0] + 1) / 2 * 24).long()
    labels_f = torch.round((flipped["pose"][0] + 1) / 2 * 24).long()
    # Pixel (r, c) of the flipped map is pixel (r, W-1-c) of the original with its label mirrored.
    assert torch.equal(labels_f, torch.from_numpy(MIRROR_PART.copy())[labels.flip(-1)].long())
    mirrored = labels.flip(-1)
    assert torch.all(labels_f[mirrored == LEFT_ARM] == RIGHT_ARM) and torch.all(labels_f[mirrored == RIGHT_ARM] == LEFT_ARM)
    assert (mirrored == LEFT_ARM).any() and (mirrored == RIGHT_ARM).any()
    # The figure faces the camera, so its left arm is on the image's right. The mirrored figure
    # still faces the camera: a truthful flip keeps the LEFT label on the image's right (a bare
    # image flip would move it to the left, describing a body seen from behind).
    def mean_col(lab: torch.Tensor, part: int) -> float:
        return float(torch.nonzero(lab == part)[:, 1].float().mean())

    for lab in (labels, labels_f):
        assert mean_col(lab, LEFT_ARM) > mean_col(lab, 2) > mean_col(lab, RIGHT_ARM)
    bare = labels.flip(-1)
    assert mean_col(bare, LEFT_ARM) < mean_col(bare, 2)
    # Torso U is reversed (self-symmetric chart); twin parts keep their U.
    torso = mirrored == 2
    u, u_f = (plain["pose"][1].flip(-1) + 1) / 2, (flipped["pose"][1] + 1) / 2
    torch.testing.assert_close(u_f[torso], 1 - u[torso], atol=1 / 255 + 1e-6, rtol=0)
    assert not bool(flipped["has_appearance"]) and torch.all(flipped["appearance"] == 0)


def test_sr3_frames_pair_high_and_low_resolution(toy_root: Path) -> None:
    seqs = DatasetManifest.load(toy_root).sequence_frames("test")
    ds = SR3FrameDataset(seqs, resolution=48, low_resolution=16, hflip_prob=0.0)
    assert len(ds) == 5
    item = ds[3]
    assert item["hr"].shape == (3, 48, 48) and item["lr"].shape == (3, 16, 16)
    # lr is the area-resized frame (3x3 block means of the 48 px frame here).
    blocks = torch.nn.functional.avg_pool2d(item["hr"][None], 3)[0]
    torch.testing.assert_close(item["lr"], blocks, atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match="low_resolution"):
        SR3FrameDataset(seqs, resolution=16, low_resolution=16)


# --------------------------------------------------------------------------------------------
# DensePose-processed video


def _write_video(folder: Path, numbers: list[int], height: int = 40, width: int = 30) -> dict[int, np.ndarray]:
    (folder / "frames").mkdir(parents=True)
    (folder / "densepose").mkdir(parents=True)
    truth = {}
    for n in numbers:
        iuv = np.zeros((height, width, 3), np.uint8)
        iuv[10 : 30, 5 : 12] = (LEFT_ARM, 40, 200)
        iuv[10 : 30, 12 : 25] = (2, 100 + n, 90)
        rgb = np.full((height, width, 3), 30 + 10 * n, np.uint8)
        cv2.imwrite(str(folder / "frames" / f"{n:06d}.jpg"), rgb)
        write_iuv_png(folder / "densepose" / f"{n:06d}.png", iuv, order="densepose")  # as detectron2 writes it
        truth[n] = iuv
    return truth


def test_densepose_video_layout_reads_detectron2_order_and_splits_at_gaps(tmp_path: Path) -> None:
    truth = _write_video(tmp_path / "ubc" / "train" / "vid01", [0, 1, 2, 5, 6])
    _write_video(tmp_path / "ubc" / "test" / "vid02", [0, 1])
    videos = DensePoseVideoSet(tmp_path / "ubc")
    assert videos.splits == ("train", "test")
    runs = videos.sequence_frames("train")
    assert [(r.id, r.num_frames, r.character) for r in runs] == [("vid01@0", 3, "vid01"), ("vid01@5", 2, "vid01")]
    assert runs[1].iuv_order == "densepose"
    # Read in DensePose's channel order the labels come back as written.
    np.testing.assert_array_equal(read_iuv_png(runs[1].iuv[0], order=runs[1].iuv_order), truth[5])
    ds = FramePairDataset(runs, PairDatasetConfig(resolution=20, hflip_prob=0.0, appearance="none"))
    assert len(ds) == 2 + 1  # pairs never straddle the gap between frames 2 and 5
    item = ds[2]
    labels = torch.round((item["pose"][0] + 1) / 2 * 24).long()
    assert set(labels.unique().tolist()) == {0, 2, LEFT_ARM}
    # 40x30 frames are padded to 40x40 (5 px each side) before resizing to 20: padding is background.
    assert torch.all(labels[:, :2] == 0) and torch.all(labels[:, -2:] == 0)
    assert torch.all(item["y"][:, :, :2] == 1.0)  # padded with the white background


def test_densepose_video_errors_name_the_file(tmp_path: Path) -> None:
    _write_video(tmp_path / "one", [0, 1, 2])
    (tmp_path / "one" / "densepose" / "000001.png").unlink()
    with pytest.raises(DatasetFormatError, match=r"frame 000001\.jpg has no pose map"):
        DensePoseVideoSet(tmp_path / "one").sequence_frames("train")
    with pytest.raises(DatasetFormatError, match="no split 'test'"):
        DensePoseVideoSet(tmp_path / "one").sequence_frames("test")


# --------------------------------------------------------------------------------------------
# Flipping DensePose IUV: off without the set's symmetry table, through it with one


def _square_video(root: Path) -> dict[int, np.ndarray]:
    """A two-frame DensePose video whose frames are already square (no padding or resizing)."""
    truth = {}
    for n in (0, 1):
        folder = root / "train" / "vid"
        (folder / "frames").mkdir(parents=True, exist_ok=True)
        (folder / "densepose").mkdir(parents=True, exist_ok=True)
        iuv = np.zeros((16, 16, 3), np.uint8)
        iuv[2:14, 1:6] = (LEFT_ARM, 40 + n, 200)
        iuv[2:14, 6:12] = (2, 0, 90)
        iuv[2:14, 6:12, 1] = np.arange(6, dtype=np.uint8) * 30 + 10  # torso U varies along x
        cv2.imwrite(str(folder / "frames" / f"{n:06d}.png"), np.full((16, 16, 3), 100, np.uint8))
        write_iuv_png(folder / "densepose" / f"{n:06d}.png", iuv, order="densepose")
        truth[n] = iuv
    return truth


def _table(u_part2: list | None = None, **changes) -> dict:
    """detectron2's label swap; U reversed on part 2 (the front torso), everything else kept."""
    u = [None] * 24
    u[1] = u_part2 if u_part2 is not None else np.tile(1.0 - np.arange(256) / 255.0, (256, 1)).tolist()
    return {"format_version": 1, "labels": list(DETECTRON2_PART_SWAP), "u": u, "v": [None] * 24, **changes}


def test_densepose_flip_defaults_off_and_an_explicit_flip_needs_a_table(tmp_path: Path) -> None:
    truth = _square_video(tmp_path / "set")
    runs = DensePoseVideoSet(tmp_path / "set").sequence_frames("train")
    assert runs[0].flip_table is None
    ds = FramePairDataset(runs, PairDatasetConfig(resolution=16, appearance="none"))  # hflip_prob unset
    assert ds.hflip_prob == 0.0
    for epoch in range(4):  # no epoch flips a DensePose map without a table
        ds.set_epoch(epoch)
        torch.testing.assert_close(ds[0]["pose"], iuv_to_tensor(truth[1]))
    with pytest.raises(DatasetError, match=r"hflip_prob 0.5: sequence 'vid' holds detectron2 DensePose IUV.*"
                                           r"densepose_symmetry\.json.*--hflip 0"):
        FramePairDataset(runs, PairDatasetConfig(resolution=16, hflip_prob=0.5, appearance="none"))
    assert FramePairDataset(runs, PairDatasetConfig(resolution=16, hflip_prob=0.0, appearance="none")).hflip_prob == 0.0
    # SR3 flips RGB only, which is always truthful
    assert SR3FrameDataset(runs, resolution=16, low_resolution=8).hflip_prob == 0.5


def test_densepose_flip_goes_through_the_sets_symmetry_table(tmp_path: Path) -> None:
    truth = _square_video(tmp_path / "set")
    (tmp_path / "set" / SYMMETRY_FILE).write_text(json.dumps(_table()))
    runs = DensePoseVideoSet(tmp_path / "set").sequence_frames("train")
    assert isinstance(runs[0].flip_table, DensePoseSymmetry)
    assert FramePairDataset(runs, PairDatasetConfig(resolution=16, appearance="none")).hflip_prob == 0.5  # back on
    flipped = FramePairDataset(runs, PairDatasetConfig(resolution=16, hflip_prob=1.0, appearance="none"))[0]
    mirrored = truth[1][:, ::-1]
    expected = mirrored.copy()
    expected[..., 0] = np.asarray(DETECTRON2_PART_SWAP, np.uint8)[mirrored[..., 0]]  # left arm 15 -> right arm 16
    torso = mirrored[..., 0] == 2
    expected[..., 1][torso] = 255 - mirrored[..., 1][torso]  # the table's U remap on part 2
    assert (expected[..., 0] == RIGHT_ARM).any() and not (expected[..., 0] == LEFT_ARM).any()
    torch.testing.assert_close(flipped["pose"], iuv_to_tensor(expected))
    # U of the other parts and every V pass through unchanged (null tables)
    np.testing.assert_array_equal(runs[0].flip_table.flip(truth[1])[..., 2], mirrored[..., 2])


@pytest.mark.parametrize(
    "doc, message",
    [
        (_table(extra=1), r"unknown field\(s\) extra"),
        (_table(format_version=2), "format_version 2 is not supported"),
        (_table(labels=list(range(24))), r"field 'labels' must be 25 part labels"),
        (_table(labels=[0, 1, 2, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15, 18, 17, 20, 19, 22, 21, 24, 22]),
         r"field 'labels': part 23 becomes 24 but 24 becomes 22"),
        (_table(u_part2=[[0.5] * 256] * 255), r"field 'u'\[1\] \(part 2\) must be null or 256 rows of 256 numbers"),
        (_table(u_part2=[[1.5] * 256] * 256), r"field 'u'\[1\] \(part 2\)"),
        (_table(v=[None] * 23), r"field 'v' must be a list of 24 tables"),
    ],
)
def test_symmetry_table_errors_name_the_file_and_field(tmp_path: Path, doc: dict, message: str) -> None:
    _square_video(tmp_path / "set")
    (tmp_path / "set" / SYMMETRY_FILE).write_text(json.dumps(doc))
    with pytest.raises(DatasetFormatError, match=rf"densepose_symmetry\.json: {message}"):
        DensePoseVideoSet(tmp_path / "set")


def test_symmetry_table_from_detectron2_mat_round_trips(tmp_path: Path) -> None:
    import scipy.io

    rng = np.random.default_rng(0)
    cells = {key: np.empty((1, 24), dtype=object) for key in ("U_transforms", "V_transforms")}
    for cell in cells.values():
        for k in range(24):
            cell[0, k] = rng.integers(0, 256, (256, 256)) / 255.0
    scipy.io.savemat(tmp_path / "UV_symmetry_transforms.mat", cells)
    table = symmetry_from_detectron2(tmp_path / "UV_symmetry_transforms.mat")
    write_symmetry(table, tmp_path / SYMMETRY_FILE)
    again = DensePoseSymmetry.load(tmp_path / SYMMETRY_FILE)
    for name in ("labels", "u", "v"):
        np.testing.assert_array_equal(getattr(again, name), getattr(table, name))
    # detectron2's rule: part I at codes (U, V) takes part swap[I] and U = U_transforms[I-1][V, U]
    iuv = np.array([[[3, 17, 200], [0, 0, 0]]], np.uint8)
    out = table.flip(iuv)
    assert tuple(out[0, 1]) == (4, round(255 * cells["U_transforms"][0, 2][200, 17]),
                                round(255 * cells["V_transforms"][0, 2][200, 17]))
    assert tuple(out[0, 0]) == (0, 0, 0)
