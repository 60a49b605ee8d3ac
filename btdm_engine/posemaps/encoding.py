"""IUV pose maps on disk (PNG) and as network tensors, per docs/architecture.md.

Array form: uint8 ``(H, W, 3)`` with channels ``(I, round(255*U), round(255*V))``, I in 0..24,
0 the background with U = V = 0.

Two PNG layouts exist:

* ``"btdm"`` (ours): the file's RGB channels are I, U, V.
* ``"densepose"``: detectron2 writes the (I, U, V) array with ``cv2.imwrite``, which takes the
  array as BGR, so the file's red channel holds V, green U and blue I.

Tensor form: float32 ``(..., 3, H, W)`` with channels (I/24, U, V) mapped to [-1, 1] by
``2x - 1``; the background is (-1, -1, -1).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch
from einops import rearrange

from btdm_engine.constants import IUV_ORDERS as PNG_ORDERS
from btdm_engine.errors import BtdmError
from btdm_engine.fileio import atomic_write_bytes
from btdm_engine.imageio import ImageReadError, read_image
from btdm_engine.posemaps.parts import NUM_PARTS


class IUVFormatError(BtdmError, ValueError):
    """An IUV array or file breaks the contract; the message names the file or field."""


def validate_iuv(iuv: np.ndarray, where: str = "iuv") -> np.ndarray:
    """Check an IUV array against the contract and return it.

    Args:
        iuv: array to check, uint8 ``(..., H, W, 3)``.
        where: name used in the error message (a file path or field name).

    Raises:
        IUVFormatError: wrong dtype or shape, a part index above 24, or a background pixel
            with non-zero U or V.
    """
    if not isinstance(iuv, np.ndarray):
        raise IUVFormatError(f"{where}: expected a numpy array, got {type(iuv).__name__}")
    if iuv.dtype != np.uint8:
        raise IUVFormatError(f"{where}: expected dtype uint8, got {iuv.dtype}")
    if iuv.ndim < 3 or iuv.shape[-1] != 3:
        raise IUVFormatError(f"{where}: expected shape (..., H, W, 3), got {tuple(iuv.shape)}")
    labels = iuv[..., 0]
    top = int(labels.max(initial=0))
    if top > NUM_PARTS:
        raise IUVFormatError(f"{where}: part index I={top} > {NUM_PARTS}")
    stray = int(np.count_nonzero((labels == 0)[..., None] & (iuv[..., 1:] != 0)))
    if stray:
        raise IUVFormatError(f"{where}: {stray} background (I=0) values have non-zero U or V")
    return iuv


def _check_order(order: str) -> None:
    if order not in PNG_ORDERS:
        raise IUVFormatError(f"unknown IUV PNG order {order!r}; allowed: {', '.join(PNG_ORDERS)}")


def encode_iuv_png(iuv: np.ndarray, order: str = "btdm") -> bytes:
    """PNG bytes of one IUV map in the given channel layout."""
    _check_order(order)
    validate_iuv(iuv)
    if iuv.ndim != 3:
        raise IUVFormatError(f"iuv: expected one (H, W, 3) map, got {tuple(iuv.shape)}")
    # cv2 writes its array as BGR: our files want red = I, DensePose's want blue = I.
    pixels = iuv[..., ::-1] if order == "btdm" else iuv
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(pixels))
    if not ok:
        raise IUVFormatError("iuv: OpenCV could not encode the PNG")
    return buf.tobytes()


def write_iuv_png(path: str | os.PathLike[str], iuv: np.ndarray, order: str = "btdm") -> Path:
    """Write one IUV map as a PNG, atomically.

    Args:
        path: destination file.
        iuv: uint8 ``(H, W, 3)`` array (I, U*255, V*255).
        order: ``"btdm"`` (file RGB = I, U, V; the project's own files) or ``"densepose"``.
    """
    try:
        data = encode_iuv_png(iuv, order)
    except IUVFormatError as exc:
        raise IUVFormatError(f"{path}: {exc}") from None
    return atomic_write_bytes(path, data)


def read_iuv_png(path: str | os.PathLike[str], order: str = "btdm") -> np.ndarray:
    """Read an IUV PNG into the array form.

    Args:
        path: PNG file.
        order: ``"btdm"`` for our files (RGB = I, U, V) or ``"densepose"`` for files written by
            detectron2's DensePose through ``cv2.imwrite`` (RGB = V, U, I).

    Returns:
        uint8 ``(H, W, 3)`` with channels (I, U*255, V*255).

    Raises:
        FileNotFoundError: no such file.
        IUVFormatError: not a readable 8-bit 3-channel image, or values outside the contract;
            the message names the file.
    """
    _check_order(order)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such IUV file")
    try:
        pixels = read_image(path, formats=("png",))  # IUV labels survive only lossless PNG
    except ImageReadError as exc:
        raise IUVFormatError(str(exc)) from None
    if pixels.dtype != np.uint8:
        raise IUVFormatError(f"{path}: expected 8-bit channels, got {pixels.dtype}")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels != 3:
        raise IUVFormatError(f"{path}: expected 3 channels (I, U, V), got {channels}")
    # cv2 hands back BGR: for our files that is (V, U, I), for DensePose's it is (I, U, V).
    iuv = np.ascontiguousarray(pixels[..., ::-1] if order == "btdm" else pixels)
    validate_iuv(iuv, where=f"{path} (order={order})")
    return iuv


def iuv_to_tensor(iuv: np.ndarray | torch.Tensor) -> torch.Tensor:
    """IUV maps to the network's tensor form.

    Args:
        iuv: uint8 ``(..., H, W, 3)`` numpy array or torch tensor.

    Returns:
        float32 ``(..., 3, H, W)``: (I/24, U, V) mapped to [-1, 1]; background is -1.
    """
    if isinstance(iuv, torch.Tensor):
        if iuv.dtype != torch.uint8:
            raise IUVFormatError(f"iuv: expected dtype uint8, got {iuv.dtype}")
        if iuv.ndim < 3 or iuv.shape[-1] != 3:
            raise IUVFormatError(f"iuv: expected shape (..., H, W, 3), got {tuple(iuv.shape)}")
        if int(iuv[..., 0].max()) > NUM_PARTS:
            raise IUVFormatError(f"iuv: part index I={int(iuv[..., 0].max())} > {NUM_PARTS}")
        x = iuv.to(torch.float32)
    else:
        validate_iuv(iuv)
        x = torch.from_numpy(np.ascontiguousarray(iuv)).to(torch.float32)
    scale = torch.tensor([NUM_PARTS, 255.0, 255.0], dtype=torch.float32, device=x.device)
    x = rearrange(x / scale, "... h w c -> ... c h w")
    return x * 2.0 - 1.0


def tensor_to_iuv(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`iuv_to_tensor`: round to the nearest part and 8-bit U, V.

    Args:
        tensor: float ``(..., 3, H, W)`` in [-1, 1] (values outside are clamped).

    Returns:
        uint8 ``(..., H, W, 3)``; pixels whose I rounds to 0 are background with U = V = 0.
    """
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise IUVFormatError("tensor: expected a floating-point torch tensor")
    if tensor.ndim < 3 or tensor.shape[-3] != 3:
        raise IUVFormatError(f"tensor: expected shape (..., 3, H, W), got {tuple(tensor.shape)}")
    x = rearrange(tensor.detach().to("cpu", torch.float32), "... c h w -> ... h w c")
    x = ((x + 1.0) / 2.0).clamp(0.0, 1.0)
    scale = torch.tensor([NUM_PARTS, 255.0, 255.0], dtype=torch.float32)
    out = torch.round(x * scale).to(torch.uint8).numpy()
    out[..., 1:][out[..., 0] == 0] = 0
    return out


def iuv_to_parts_onehot(iuv: np.ndarray) -> np.ndarray:
    """One-hot part masks of IUV maps.

    Args:
        iuv: uint8 ``(..., H, W, 3)``.

    Returns:
        float32 ``(..., 25, H, W)``; channel 0 is the background, channel i part i.
    """
    validate_iuv(iuv)
    onehot = np.eye(NUM_PARTS + 1, dtype=np.float32)[iuv[..., 0]]
    return rearrange(onehot, "... h w k -> ... k h w")
