"""Several characters in one shot: which plate lies over which, frame by frame. No bpy here.

Each character's plate is a PNG sequence of its own, transparent outside the person. Where two
people overlap in the picture, the one nearer the camera must cover the other, and who is nearer
can change during a shot (one walks past the other). The add-on measures, for every frame, each
character's distance from the camera (:func:`body_depths`: the mean of its bones' heads, along the
camera's view axis) and cuts the shot into **segments** of frames in which the order stays the same
(:func:`depth_segments`); the display stacks the plates segment by segment, farthest first
(``display.place_layers``: sequencer channels, camera background images). A swap that lasts fewer than
:data:`MIN_SEGMENT_FRAMES` frames is merged into the segment before it (two people side by side at
nearly the same distance do not overlap, and need no strips of their own for a frame or two).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_SEGMENT_FRAMES", "body_depths", "depth_segments"]

MIN_SEGMENT_FRAMES = 3


def body_depths(arrays: dict) -> tuple[float, ...]:
    """Per frame, the character's distance from the camera along its view axis (scene units): the mean of its
    bones' heads in camera space. ``arrays`` is a sampled armature with the shot camera (``sample_armature``)."""
    heads = np.asarray(arrays["frames"])[:, :, :3, 3]  # (T, J, 3), world
    w2c = np.asarray(arrays["cam_world_to_cam"])  # (T, 4, 4), OpenCV: z ahead
    centre = heads.mean(axis=1)  # (T, 3)
    z = np.einsum("tj,tj->t", w2c[:, 2, :3], centre) + w2c[:, 2, 3]
    return tuple(float(v) for v in z)


def depth_segments(depths, first: int, min_frames: int = MIN_SEGMENT_FRAMES) -> list[tuple[int, int, tuple[int, ...]]]:
    """``[(start, end, order)]``: scene frames ``start .. end-1`` (the shot starts at ``first``) in which the
    characters' stacking ``order`` (indices into ``depths``, farthest first) stays the same; they cover the
    shot without gaps. ``depths`` holds one sequence per character, one distance per frame (all as long)."""
    table = np.asarray(depths, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] == 0:
        raise ValueError("depths: one sequence of distances per character, at least one frame")
    count, frames = table.shape
    if count == 1:
        return [(first, first + frames, (0,))]
    # farthest first; equal distances keep the characters' own order (stable)
    orders = [tuple(int(i) for i in np.argsort(-table[:, t], kind="stable")) for t in range(frames)]
    runs: list[list] = []
    for t, order in enumerate(orders):
        if runs and runs[-1][2] == order:
            runs[-1][1] = t + 1
        else:
            runs.append([t, t + 1, order])
    merged: list[list] = []
    for run in runs:
        if merged and (run[1] - run[0] < min_frames or merged[-1][2] == run[2]):
            merged[-1][1] = run[1]  # a short swap: the order before it goes on
        else:
            merged.append(run)
    if len(merged) > 1 and merged[0][1] - merged[0][0] < min_frames:  # a short first run joins the next
        merged[1][0] = merged[0][0]
        merged.pop(0)
    return [(first + a, first + b, order) for a, b, order in merged]
