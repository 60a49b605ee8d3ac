"""DensePose's 24 body parts, their left/right mirror map and a truthful horizontal flip.

Part indices follow DensePose (Güler et al. 2018), as documented in docs/architecture.md;
"left" is the person's left. Index 0 is the background.

The atlas builds every right part's chart as the mirror image of its left twin's chart, and the
two torso charts as self-symmetric charts whose U is an odd function of x (U -> 1 - U under a
mirror). That is what lets :func:`flip_iuv` mirror an IUV image exactly: it swaps the labels of
twin parts, keeps their U, V, and only reverses U on the torso.
"""

from __future__ import annotations

import numpy as np

from btdm_engine.errors import UsageError

NUM_PARTS = 24

# Index i is part i; 0 is the background.
PART_NAMES: tuple[str, ...] = (
    "background",
    "torso_back",
    "torso_front",
    "right_hand",
    "left_hand",
    "left_foot",
    "right_foot",
    "right_thigh_back",
    "left_thigh_back",
    "right_thigh_front",
    "left_thigh_front",
    "right_calf_back",
    "left_calf_back",
    "right_calf_front",
    "left_calf_front",
    "left_upper_arm_inside",
    "right_upper_arm_inside",
    "left_upper_arm_outside",
    "right_upper_arm_outside",
    "left_forearm_inside",
    "right_forearm_inside",
    "left_forearm_outside",
    "right_forearm_outside",
    "head_right",
    "head_left",
)

# Left <-> right twin of every part; background and the two torso halves map to themselves.
MIRROR_PART: np.ndarray = np.array(
    [0, 1, 2, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15, 18, 17, 20, 19, 22, 21, 24, 23],
    dtype=np.uint8,
)
MIRROR_PART.setflags(write=False)

# Parts that are their own mirror image: their chart's U runs across the body's plane of
# symmetry, so a mirror reverses it.
SELF_SYMMETRIC_PARTS: tuple[int, ...] = (1, 2)

LEFT_PARTS: tuple[int, ...] = tuple(
    i for i, n in enumerate(PART_NAMES) if n.startswith("left_") or n == "head_left"
)
RIGHT_PARTS: tuple[int, ...] = tuple(int(MIRROR_PART[i]) for i in LEFT_PARTS)

# Lookup: True where U must be reversed by a mirror.
_REVERSE_U = np.zeros(NUM_PARTS + 1, dtype=bool)
_REVERSE_U[list(SELF_SYMMETRIC_PARTS)] = True


def part_index(name: str) -> int:
    """Index (1..24) of a part by its name in :data:`PART_NAMES`."""
    if name not in PART_NAMES[1:]:
        raise UsageError(f"unknown part {name!r}; allowed: {', '.join(PART_NAMES[1:])}")
    return PART_NAMES.index(name)


def flip_iuv(iuv: np.ndarray) -> np.ndarray:
    """Mirror IUV maps horizontally and keep them truthful.

    The image is flipped left-right, each part label becomes its mirror twin (the person's
    left hand becomes a right hand) and U is reversed on the self-symmetric torso charts, so
    the result equals a render of the mirrored body. Used for flip augmentation.

    Args:
        iuv: uint8 ``(..., H, W, 3)`` array with channels (I, U*255, V*255).

    Returns:
        A new uint8 array of the same shape.
    """
    iuv = np.asarray(iuv)
    if iuv.dtype != np.uint8 or iuv.ndim < 3 or iuv.shape[-1] != 3:
        raise ValueError(
            f"flip_iuv: expected uint8 (..., H, W, 3), got {iuv.dtype} {tuple(iuv.shape)}"
        )
    if int(iuv[..., 0].max(initial=0)) > NUM_PARTS:
        raise ValueError(f"flip_iuv: part index {int(iuv[..., 0].max())} > {NUM_PARTS}")
    out = np.ascontiguousarray(iuv[..., ::-1, :])
    labels = out[..., 0]
    reverse = _REVERSE_U[labels]
    out[..., 1] = np.where(reverse, 255 - out[..., 1], out[..., 1])
    out[..., 0] = MIRROR_PART[labels]
    return out
