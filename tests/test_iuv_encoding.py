"""IUV array <-> PNG (both channel orders) <-> tensor, validation errors, and flip_iuv."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from btdm_engine.posemaps.encoding import (
    IUVFormatError,
    iuv_to_parts_onehot,
    iuv_to_tensor,
    read_iuv_png,
    tensor_to_iuv,
    write_iuv_png,
)
from btdm_engine.posemaps.parts import MIRROR_PART, PART_NAMES, flip_iuv


def random_iuv(rng: np.random.Generator, shape: tuple[int, ...] = (24, 32)) -> np.ndarray:
    """A valid IUV map: random parts (some background), random U, V, zero U, V on background."""
    iuv = np.zeros(shape + (3,), dtype=np.uint8)
    iuv[..., 0] = rng.integers(0, 25, size=shape)
    iuv[..., 1:] = rng.integers(0, 256, size=shape + (2,))
    iuv[..., 1:][iuv[..., 0] == 0] = 0
    return iuv


def test_png_round_trip_btdm_order_and_file_layout(tmp_path: Path) -> None:
    iuv = random_iuv(np.random.default_rng(0))
    path = write_iuv_png(tmp_path / "a" / "000000.png", iuv)
    assert np.array_equal(read_iuv_png(path), iuv)
    # Our files are RGB = (I, U, V): OpenCV reads BGR, so its last channel is I.
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(bgr[..., 2], iuv[..., 0])
    assert np.array_equal(bgr[..., 0], iuv[..., 2])
    # Atomic write leaves no temporary files behind, and overwriting works.
    write_iuv_png(path, iuv[::-1].copy())
    assert np.array_equal(read_iuv_png(path), iuv[::-1])
    assert sorted(p.name for p in path.parent.iterdir()) == ["000000.png"]


def test_png_round_trip_densepose_order(tmp_path: Path) -> None:
    iuv = random_iuv(np.random.default_rng(1))
    # detectron2's DensePose writes its (I, U, V) array straight through cv2.imwrite.
    path = tmp_path / "densepose.png"
    assert cv2.imwrite(str(path), iuv)
    assert np.array_equal(read_iuv_png(path, order="densepose"), iuv)
    # Our writer can produce that layout too: blue = I, green = U, red = V.
    ours = write_iuv_png(tmp_path / "ours_dp.png", iuv, order="densepose")
    assert np.array_equal(cv2.imread(str(ours), cv2.IMREAD_UNCHANGED), iuv)
    with pytest.raises(IUVFormatError):
        # Read in the wrong order, V lands in I: values above 24 are rejected.
        read_iuv_png(path, order="btdm")


def test_unknown_order_lists_allowed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="btdm, densepose"):
        read_iuv_png(tmp_path / "x.png", order="rgb")


@pytest.mark.parametrize(
    "content, message",
    [
        ("gray", "expected 3 channels"),
        ("rgba", "expected 3 channels"),
        ("uint16", "8-bit"),
        ("i_too_big", "I=25"),
        ("stray_uv", "background"),
        ("not_png", "not a readable image"),
        ("empty", "not a readable image"),
    ],
)
def test_bad_png_errors_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / f"bad_{content}.png"
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    if content == "gray":
        cv2.imwrite(str(path), img[..., 0])
    elif content == "rgba":
        cv2.imwrite(str(path), np.zeros((8, 8, 4), dtype=np.uint8))
    elif content == "uint16":
        cv2.imwrite(str(path), img.astype(np.uint16))
    elif content == "i_too_big":
        img[2, 3] = (0, 0, 25)  # BGR: red = I = 25
        cv2.imwrite(str(path), img)
    elif content == "stray_uv":
        img[1, 1] = (7, 9, 0)  # I = 0 but U, V non-zero
        cv2.imwrite(str(path), img)
    elif content == "not_png":
        path.write_text("hello")
    elif content == "empty":
        path.write_bytes(b"")
    with pytest.raises(IUVFormatError, match=message) as info:
        read_iuv_png(path)
    assert path.name in str(info.value)


def test_missing_file_and_bad_array_on_write(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_iuv_png(tmp_path / "nope.png")
    bad = np.zeros((4, 4, 3), dtype=np.uint8)
    bad[0, 0, 0] = 30
    with pytest.raises(IUVFormatError, match="out.png.*I=30"):
        write_iuv_png(tmp_path / "out.png", bad)
    with pytest.raises(IUVFormatError, match="uint8"):
        write_iuv_png(tmp_path / "out.png", bad.astype(np.float32))
    assert not (tmp_path / "out.png").exists()


def test_tensor_round_trip_and_range() -> None:
    iuv = random_iuv(np.random.default_rng(2), shape=(2, 5, 16, 12))
    x = iuv_to_tensor(iuv)
    assert x.shape == (2, 5, 3, 16, 12) and x.dtype == torch.float32
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    background = torch.from_numpy(iuv[..., 0] == 0)
    assert torch.all(x[:, :, :, :, :].movedim(2, -1)[background] == -1.0)
    # A part-24 pixel with U = V = 255 is (1, 1, 1).
    one = np.array([[[24, 255, 255]]], dtype=np.uint8)
    assert torch.equal(iuv_to_tensor(one), torch.ones(3, 1, 1))
    assert np.array_equal(tensor_to_iuv(x), iuv)
    assert np.array_equal(tensor_to_iuv(iuv_to_tensor(torch.from_numpy(iuv))), iuv)
    # Small perturbations (a network's output) still decode to the nearest part and 8-bit UV.
    # Bounded noise of +-0.003 moves U by at most 0.4 of a level and I by 0.04 of a part.
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 0.006 - 0.003
    noisy = x + noise
    decoded = tensor_to_iuv(noisy)
    assert np.array_equal(decoded[..., 0], iuv[..., 0])
    fg = iuv[..., 0] > 0
    assert np.abs(decoded[..., 1:].astype(int) - iuv[..., 1:].astype(int))[fg].max() <= 1


def test_tensor_validation() -> None:
    with pytest.raises(IUVFormatError, match="I=25"):
        iuv_to_tensor(np.full((2, 2, 3), 25, dtype=np.uint8))
    with pytest.raises(IUVFormatError, match=r"\(\.\.\., 3, H, W\)"):
        tensor_to_iuv(torch.zeros(2, 4, 4))


def test_parts_onehot() -> None:
    iuv = random_iuv(np.random.default_rng(3))
    onehot = iuv_to_parts_onehot(iuv)
    assert onehot.shape == (25,) + iuv.shape[:2]
    assert np.array_equal(onehot.sum(axis=0), np.ones(iuv.shape[:2], dtype=np.float32))
    assert np.array_equal(onehot.argmax(axis=0), iuv[..., 0])


def test_mirror_part_table() -> None:
    assert MIRROR_PART.shape == (25,)
    assert np.array_equal(MIRROR_PART[MIRROR_PART], np.arange(25))
    for p, name in enumerate(PART_NAMES):
        twin = PART_NAMES[MIRROR_PART[p]]
        swapped = name.replace("left", "@").replace("right", "left").replace("@", "right")
        assert twin == swapped, (name, twin)


def test_flip_iuv() -> None:
    rng = np.random.default_rng(4)
    iuv = random_iuv(rng, shape=(3, 10, 14))
    flipped = flip_iuv(iuv)
    assert np.array_equal(flip_iuv(flipped), iuv)
    # Pixel (y, x) moves to (y, W-1-x) with its label mirrored.
    assert np.array_equal(flipped[..., 0], MIRROR_PART[iuv[..., ::-1, 0]])
    mirrored_src = iuv[..., ::-1, :]
    torso = np.isin(mirrored_src[..., 0], (1, 2))
    assert np.array_equal(flipped[..., 1][torso], 255 - mirrored_src[..., 1][torso])
    assert np.array_equal(flipped[..., 1][~torso], mirrored_src[..., 1][~torso])
    assert np.array_equal(flipped[..., 2], mirrored_src[..., 2])
    # A person's left hand (4) on the image right becomes a right hand (3) on the image left.
    one = np.zeros((1, 4, 3), dtype=np.uint8)
    one[0, 3] = (4, 10, 20)
    assert flip_iuv(one)[0, 0].tolist() == [3, 10, 20]
    with pytest.raises(ValueError, match="uint8"):
        flip_iuv(iuv.astype(np.int32))
