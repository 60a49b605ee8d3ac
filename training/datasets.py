"""Training datasets: consecutive-frame pairs for the BTU-Net, single frames for SR3.

Both read :class:`~training.dataset_format.SequenceFrames` (from a dataset manifest or a
DensePose video set) and produce network tensors:

* RGB frames: read as float [0, 1] (RGBA composited onto ``background``), fitted to a square
  (``fit="pad"`` pads with the background colour, ``"crop"`` takes the centre square), resized
  with area interpolation when shrinking (bicubic when enlarging) and mapped to [-1, 1].
* Pose maps: read in their file's channel order, fitted the same way (padding is background,
  I = 0), resized with NEAREST only (labels never blend), converted with
  :func:`btdm_engine.posemaps.encoding.iuv_to_tensor`.
* Texture-transfer prior (``warp``, for networks with ``warp_channels``): the appearance frame c
  and its pose map g(c) make a UV texture (:func:`btdm_engine.posemaps.texture.build_texture`) at
  ``warp_resolution``, every target pose map looks it up at that resolution, and the result (w_t
  and its confidence, area-resized to the network's size) is appended to the item's pose
  channels. A share ``warp_drop`` of items gets the blank texture instead, as a photo without an
  IUV map gives at inference, so the network also works from c alone.
* Horizontal flip (probability ``hflip_prob``) flips every image of an item together and flips
  the pose maps truthfully, so a flipped pose map is the render of the mirrored body: this
  project's atlas with :func:`btdm_engine.posemaps.parts.flip_iuv` (it swaps left/right part labels
  and mirrors U on the torso charts), detectron2 DensePose IUV through the video set's symmetry
  table (:class:`training.video.DensePoseSymmetry`). DensePose IUV without a table cannot be
  flipped truthfully: ``hflip_prob=None`` (the default) then means no flip, and an explicit
  probability above 0 is refused. Elsewhere ``None`` means 0.5; SR3 flips RGB only, so always can.

Randomness is explicit: item ``i`` of epoch ``e`` draws from ``numpy.random.default_rng((seed, e,
i))``, so an item is the same whatever the worker or rank that loads it; call ``set_epoch`` once
per pass (as with ``DistributedSampler``), or key items by ``(epoch, index)`` as the trainer's
sampler does (which reaches workers that live across epochs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset

from btdm_engine.constants import FIT_MODES
from btdm_engine.dataconfig import check_bool, check_choice, check_int, check_number, check_numbers
from btdm_engine.errors import BtdmError
from btdm_engine.imageio import WHITE, read_rgb, resize_labels, resize_rgb
from btdm_engine.posemaps.encoding import iuv_to_tensor, read_iuv_png
from btdm_engine.posemaps.parts import flip_iuv
from btdm_engine.posemaps.texture import UVTexture, build_texture, warp_maps
from training.dataset_format import IUV_ORDER, SequenceFrames


class DatasetError(BtdmError, ValueError):
    """A training dataset that cannot give items: bad settings, no pairs, a frame range outside a sequence."""


APPEARANCE_MODES = ("other_frame", "none")
# The size the texture-transfer prior reads frames at for a network smaller than it (a 32 px BTU-Net
# sees the area average of a 128 px lookup, as the Animator gives it from its output-size pose maps).
WARP_RESOLUTION = 128
# The flip probability where a truthful flip exists and none was asked for.
DEFAULT_HFLIP_PROB = 0.5


@dataclass(frozen=True)
class PairDatasetConfig:
    """How frame pairs are made.

    resolution: network resolution (square).
    appearance: ``"other_frame"``: c is another frame of the same sequence (single-image
        animation training); ``"none"``: no c (person-specific and unconditional training; the
        item's ``appearance`` is zeros and ``has_appearance`` False).
    hflip_prob: probability of the truthful horizontal flip; None: 0.5 where every sequence can
        be flipped truthfully, else 0 (module docstring).
    background: RGB in [0, 1] that RGBA frames are composited onto (and padding colour).
    fit: ``"pad"`` or ``"crop"`` for non-square frames.
    cache: keep resized frames in memory (per DataLoader worker; the trainer's workers live for the
        whole run) after their first read.
    seed: base of the per-item random draws.
    warp: append the texture-transfer prior's 4 channels to the pose maps (module docstring).
    warp_resolution: the size c, g(c) and the target pose maps are read at for the prior.
    warp_drop: share of items whose prior is the blank texture (no g(c)).
    """

    resolution: int
    appearance: str = "other_frame"
    hflip_prob: float | None = None
    background: tuple[float, float, float] = WHITE
    fit: str = "pad"
    cache: bool = False
    seed: int = 0
    warp: bool = False
    warp_resolution: int = WARP_RESOLUTION
    warp_drop: float = 0.1

    def __post_init__(self) -> None:
        check_int(self.resolution, "dataset resolution", DatasetError, lo=8)
        check_bool(self.warp, "warp", DatasetError)
        check_int(self.warp_resolution, "warp_resolution", DatasetError, lo=self.resolution)
        check_number(self.warp_drop, "warp_drop", DatasetError, lo=0.0, hi=1.0)
        check_choice(self.appearance, "appearance mode", APPEARANCE_MODES, DatasetError)
        check_choice(self.fit, "fit", FIT_MODES, DatasetError)
        if self.hflip_prob is not None:
            check_number(self.hflip_prob, "hflip_prob", DatasetError, lo=0.0, hi=1.0)
        check_numbers(self.background, "background", DatasetError, length=3, lo=0.0, hi=1.0)
        check_bool(self.cache, "cache", DatasetError)
        check_int(self.seed, "seed", DatasetError, lo=0)


def pose_flip(seq: SequenceFrames) -> Callable[[np.ndarray], np.ndarray] | None:
    """The truthful horizontal flip of a sequence's pose maps, or None when it has none."""
    if seq.iuv_order == IUV_ORDER:
        return flip_iuv  # this project's atlas: right charts are the left ones mirrored
    return seq.flip_table.flip if seq.flip_table is not None else None


def resolve_hflip_prob(sequences: Sequence[SequenceFrames], hflip_prob: float | None) -> float:
    """The flip probability to use: ``None`` becomes 0.5 where every sequence flips truthfully, else 0;
    a probability above 0 for pose maps that cannot be flipped truthfully is refused."""
    cannot = [s for s in sequences if pose_flip(s) is None]
    if hflip_prob is None:
        return 0.0 if cannot else DEFAULT_HFLIP_PROB
    if hflip_prob > 0 and cannot:
        raise DatasetError(
            f"hflip_prob {hflip_prob}: sequence {cannot[0].id!r} holds detectron2 DensePose IUV, whose left and right "
            "charts are not mirror copies, so its pose maps cannot be flipped without a symmetry table; put one in "
            "the video set as densepose_symmetry.json (training.video) or leave the flip off (hflip_prob 0, "
            "btdm train --hflip 0)"
        )
    return hflip_prob


def _fit_square(img: np.ndarray, fit: str, fill: np.ndarray | float) -> np.ndarray:
    h, w = img.shape[:2]
    if h == w:
        return img
    if fit == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return img[top : top + s, left : left + s]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    out = np.empty((s, s, img.shape[2]), dtype=img.dtype)
    out[...] = fill
    out[top : top + h, left : left + w] = img
    return out


class FrameReader:
    """Reads frames and pose maps of sequences at one square resolution, with an optional cache."""

    def __init__(self, background: tuple[float, float, float], fit: str, cache: bool) -> None:
        self.background = np.asarray(background, dtype=np.float32)
        self.fit = fit
        self.cache = cache
        self._memo: dict[tuple, np.ndarray] = {}

    def rgb(self, seq: SequenceFrames, index: int, resolution: int) -> np.ndarray:
        """Frame ``index`` as float32 (R, R, 3) in [0, 1]."""
        key = ("rgb", seq.id, index, resolution)
        if key in self._memo:
            return self._memo[key]
        img = _fit_square(read_rgb(seq.rgb[index], tuple(self.background)), self.fit, self.background)
        img = resize_rgb(img, (resolution, resolution)).astype(np.float32)
        if self.cache:
            self._memo[key] = img
        return img

    def iuv(self, seq: SequenceFrames, index: int, resolution: int) -> np.ndarray:
        """Pose map ``index`` as uint8 (R, R, 3) (I, U*255, V*255), resized NEAREST."""
        key = ("iuv", seq.id, index, resolution)
        if key in self._memo:
            return self._memo[key]
        iuv = _fit_square(read_iuv_png(seq.iuv[index], order=seq.iuv_order), self.fit, 0)
        iuv = resize_labels(iuv, (resolution, resolution))
        if self.cache:
            self._memo[key] = iuv
        return iuv


def rgb_to_tensor(img: np.ndarray) -> torch.Tensor:
    """float (..., H, W, 3) in [0, 1] -> float32 (..., 3, H, W) in [-1, 1]."""
    return rearrange(torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)), "... h w c -> ... c h w") * 2 - 1


def _epoch_and_index(key: int | tuple[int, int], epoch: int) -> tuple[int, int]:
    """A dataset key: an index (drawn as in ``epoch``, the last ``set_epoch``) or ``(epoch, index)``.

    The trainer's sampler sends ``(epoch, index)``: DataLoader workers that live across epochs
    (``persistent_workers``, so a frame cache lasts) hold their own copy of the dataset, which a
    ``set_epoch`` in the main process never reaches.
    """
    if isinstance(key, tuple):
        epoch, index = key
        return int(epoch), int(index)
    return epoch, int(key)


def _flip_rgb(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[:, ::-1])


def item_warp(
    reader: FrameReader, seq: SequenceFrames, flip_pose: Callable[[np.ndarray], np.ndarray] | None,
    appearance: int | None, targets: Sequence[int], size: int, warp_resolution: int, flip: bool,
) -> torch.Tensor:
    """The texture-transfer prior of ``targets`` (n, 4, size, size) from frame ``appearance`` of ``seq``
    (None: the blank texture), every image read at ``warp_resolution`` and flipped with the item."""
    poses = [reader.iuv(seq, t, warp_resolution) for t in targets]
    if flip:
        assert flip_pose is not None
        poses = [flip_pose(p) for p in poses]
    if appearance is None:
        texture = UVTexture.blank(reader.background)
    else:
        c = reader.rgb(seq, appearance, warp_resolution)
        g = reader.iuv(seq, appearance, warp_resolution)
        if flip:
            assert flip_pose is not None
            c, g = _flip_rgb(c), flip_pose(g)
        texture = build_texture([(c, g)]) if (g[..., 0] > 0).any() else UVTexture.blank(reader.background)
    return warp_maps(texture, np.stack(poses), size)


class FramePairDataset(Dataset):
    """Consecutive pairs (t-1, t) of every sequence, with pose maps and an appearance image.

    Item ``i`` is a dict of tensors:

    * ``y``, ``y_prev``: frames y_t, y_{t-1} (3, R, R) in [-1, 1];
    * ``pose``, ``pose_prev``: their pose maps (3, R, R) (IUV tensor form);
    * ``appearance``: c (3, R, R), a frame of the same sequence other than t-1 and t (any frame
      when the sequence has only two), or zeros with ``appearance="none"``;
    * ``has_appearance``: bool scalar; ``index``: the item index; ``t``: the frame number t.
    """

    def __init__(self, sequences: Sequence[SequenceFrames], config: PairDatasetConfig) -> None:
        self.sequences = list(sequences)
        self.config = config
        self.reader = FrameReader(config.background, config.fit, config.cache)
        self._pairs = [(s, t) for s, seq in enumerate(self.sequences) for t in range(1, seq.num_frames)]
        if not self.sequences:
            raise DatasetError("FramePairDataset: no sequences (the split or the --character filter is empty)")
        if not self._pairs:
            raise DatasetError("FramePairDataset: every sequence has a single frame; training pairs need two or more")
        self.hflip_prob = resolve_hflip_prob(self.sequences, config.hflip_prob)
        self._flips = [pose_flip(seq) for seq in self.sequences]
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of pass ``epoch`` for plain integer keys."""
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """Item ``index``, or ``(epoch, index)``: the epoch's random draws (flip, appearance frame)."""
        epoch, index = _epoch_and_index(key, self._epoch)
        if not 0 <= index < len(self._pairs):
            raise IndexError(f"pair index {index} out of range (0..{len(self._pairs) - 1})")
        cfg = self.config
        rng = np.random.default_rng((cfg.seed, epoch, index))
        s, t = self._pairs[index]
        seq = self.sequences[s]
        r = cfg.resolution
        flip = bool(rng.random() < self.hflip_prob)
        images = [self.reader.rgb(seq, t, r), self.reader.rgb(seq, t - 1, r)]
        poses = [self.reader.iuv(seq, t, r), self.reader.iuv(seq, t - 1, r)]
        has_c = cfg.appearance == "other_frame"
        shown = None
        if has_c:
            others = [i for i in range(seq.num_frames) if i not in (t - 1, t)] or list(range(seq.num_frames))
            shown = int(others[rng.integers(len(others))])
            images.append(self.reader.rgb(seq, shown, r))
        if flip:
            images = [_flip_rgb(im) for im in images]
            poses = [self._flips[s](p) for p in poses]
        appearance = rgb_to_tensor(images[2]) if has_c else torch.zeros(3, r, r)
        pose, pose_prev = iuv_to_tensor(poses[0]), iuv_to_tensor(poses[1])
        if cfg.warp:
            blank = shown is None or bool(rng.random() < cfg.warp_drop)
            warp = item_warp(self.reader, seq, self._flips[s], None if blank else shown, (t, t - 1), r,
                             cfg.warp_resolution, flip)
            pose, pose_prev = torch.cat([pose, warp[0]]), torch.cat([pose_prev, warp[1]])
        return {
            "y": rgb_to_tensor(images[0]),
            "y_prev": rgb_to_tensor(images[1]),
            "pose": pose,
            "pose_prev": pose_prev,
            "appearance": appearance,
            "has_appearance": torch.tensor(has_c),
            "index": torch.tensor(index),
            "t": torch.tensor(t),
        }


class SR3FrameDataset(Dataset):
    """Single frames for SR3: ``hr`` (3, H, H) and ``lr`` (3, h, h), both in [-1, 1].

    ``lr`` is made from the same source frame with the same area resize that makes the BTU-Net's
    training frames, so SR3 learns to lift exactly what the BTU-Net learns to produce. With
    ``warp`` an item also holds ``warp`` (4, H, H): the texture-transfer prior of the frame from
    another frame of its sequence (the blank texture for a share ``warp_drop``), at H.
    """

    def __init__(
        self,
        sequences: Sequence[SequenceFrames],
        resolution: int,
        low_resolution: int,
        hflip_prob: float | None = None,
        background: tuple[float, float, float] = WHITE,
        fit: str = "pad",
        cache: bool = False,
        seed: int = 0,
        warp: bool = False,
        warp_drop: float = 0.1,
    ) -> None:
        PairDatasetConfig(resolution, "none", hflip_prob, background, fit, cache, seed, warp, resolution,
                          warp_drop)  # validates
        asked_hflip = hflip_prob
        hflip_prob = DEFAULT_HFLIP_PROB if hflip_prob is None else hflip_prob  # RGB alone always flips truthfully
        if not 8 <= low_resolution < resolution:
            raise DatasetError(f"low_resolution must be in [8, resolution), got {low_resolution} for resolution {resolution}")
        self.sequences = list(sequences)
        self.resolution, self.low_resolution = resolution, low_resolution
        self.hflip_prob, self.seed = hflip_prob, seed
        self.warp, self.warp_drop = warp, warp_drop
        if warp:  # the prior flips with the frame, so the pose maps must flip truthfully
            self.hflip_prob = resolve_hflip_prob(self.sequences, asked_hflip)
        self._flips = [pose_flip(seq) for seq in self.sequences]
        self.reader = FrameReader(background, fit, cache)
        self._frames = [(s, t) for s, seq in enumerate(self.sequences) for t in range(seq.num_frames)]
        if not self._frames:
            raise DatasetError("SR3FrameDataset: no frames")
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of pass ``epoch`` for plain integer keys."""
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """Item ``index``, or ``(epoch, index)``: the epoch's random draws (flip)."""
        epoch, index = _epoch_and_index(key, self._epoch)
        if not 0 <= index < len(self._frames):
            raise IndexError(f"frame index {index} out of range (0..{len(self._frames) - 1})")
        rng = np.random.default_rng((self.seed, epoch, index))
        s, t = self._frames[index]
        seq = self.sequences[s]
        hr = self.reader.rgb(seq, t, self.resolution)
        lr = self.reader.rgb(seq, t, self.low_resolution)
        flip = bool(rng.random() < self.hflip_prob)
        if flip:
            hr, lr = _flip_rgb(hr), _flip_rgb(lr)
        item = {"hr": rgb_to_tensor(hr), "lr": rgb_to_tensor(lr), "index": torch.tensor(index)}
        if self.warp:
            others = [i for i in range(seq.num_frames) if i != t] or [t]
            shown = int(others[rng.integers(len(others))])
            blank = bool(rng.random() < self.warp_drop)
            item["warp"] = item_warp(self.reader, seq, self._flips[s], None if blank else shown, (t,),
                                     self.resolution, self.resolution, flip)[0]
        return item


def load_sequence(
    seq: SequenceFrames,
    resolution: int,
    start: int = 0,
    length: int | None = None,
    background: tuple[float, float, float] = WHITE,
    fit: str = "pad",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames and pose maps ``start .. start+length-1`` of a sequence: ((T,3,R,R) in [-1,1], (T,3,R,R))."""
    stop = seq.num_frames if length is None else start + length
    if not 0 <= start < stop <= seq.num_frames:
        raise DatasetError(f"sequence {seq.id!r} has {seq.num_frames} frames; cannot take {start}..{stop - 1}")
    reader = FrameReader(background, fit, cache=False)
    frames = np.stack([reader.rgb(seq, i, resolution) for i in range(start, stop)])
    poses = np.stack([reader.iuv(seq, i, resolution) for i in range(start, stop)])
    return rgb_to_tensor(frames), iuv_to_tensor(poses)


def sequence_warp(
    seq: SequenceFrames, appearance: int | None, length: int, resolution: int,
    background: tuple[float, float, float] = WHITE, fit: str = "pad",
) -> torch.Tensor:
    """The texture-transfer prior of frames 0..length-1 from frame ``appearance`` (None: blank), at
    ``resolution`` (T, 4, R, R), looked up at :data:`WARP_RESOLUTION` or ``resolution`` if larger
    (what the networks' training items hold)."""
    reader = FrameReader(background, fit, cache=False)
    source = max(resolution, WARP_RESOLUTION)
    return item_warp(reader, seq, None, appearance, range(length), resolution, source, flip=False)


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """(..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3) RGB."""
    x = rearrange(images.detach().float().cpu().clamp(-1, 1), "... c h w -> ... h w c")
    return np.round((x.numpy() + 1) * 127.5).astype(np.uint8)


__all__ = [
    "APPEARANCE_MODES",
    "DEFAULT_HFLIP_PROB",
    "FIT_MODES",
    "FramePairDataset",
    "FrameReader",
    "PairDatasetConfig",
    "SR3FrameDataset",
    "item_warp",
    "load_sequence",
    "pose_flip",
    "resolve_hflip_prob",
    "rgb_to_tensor",
    "sequence_warp",
    "tensor_to_uint8",
]
