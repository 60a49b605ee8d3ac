"""Render shaded views of the body model into one contact-sheet PNG, to look at it.

    PYOPENGL_PLATFORM=egl .venv/bin/python tools/look_body.py --out out/look_body.png
    .venv/bin/python tools/look_body.py --betas 2 0 0 0 0 0 0 0 0 0 --out out/tall.png

Rows: the rest T-pose (front, side, back, three-quarter); everyday poses (arms down, walking
stride, squat, elbows bent 90 degrees, forearm twisted 90 degrees); the skinning weights' dominant
joint as colours, and close-ups of the hand, foot and head.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import cv2
import numpy as np
import pyrender
import trimesh

from btdm_engine.body import BodyModel, load_body_model
from btdm_engine.body.skeleton import JOINT_NAMES, NUM_JOINTS

J = {n: i for i, n in enumerate(JOINT_NAMES)}
TILE = (360, 480)  # width, height of one view


def named_pose(name: str) -> np.ndarray:
    """A (24,3) axis-angle pose by name: tpose, arms_down, walk, squat, elbows90, twist90."""
    p = np.zeros((NUM_JOINTS, 3), np.float32)
    down = 1.2  # shoulder rotation about z that lowers the arms
    if name == "tpose":
        return p
    if name in ("arms_down", "walk", "elbows90"):
        p[J["left_shoulder"]] = (0.0, 0.0, -down)
        p[J["right_shoulder"]] = (0.0, 0.0, down)
    if name == "walk":
        p[J["left_hip"]] = (-0.5, 0.0, 0.0)
        p[J["left_knee"]] = (0.15, 0.0, 0.0)
        p[J["right_hip"]] = (0.35, 0.0, 0.0)
        p[J["right_knee"]] = (0.7, 0.0, 0.0)
        p[J["right_ankle"]] = (-0.2, 0.0, 0.0)
        p[J["left_shoulder"]] += (0.0, 0.45, 0.0)
        p[J["right_shoulder"]] += (0.0, 0.45, 0.0)
        p[J["left_elbow"]] = (0.0, -0.3, 0.0)
        p[J["right_elbow"]] = (0.0, 0.3, 0.0)
    elif name == "squat":
        for side in ("left", "right"):
            p[J[f"{side}_hip"]] = (-1.7, 0.0, 0.0)
            p[J[f"{side}_knee"]] = (2.1, 0.0, 0.0)
            p[J[f"{side}_ankle"]] = (-0.4, 0.0, 0.0)
        p[J["spine1"]] = (0.35, 0.0, 0.0)
        p[J["left_shoulder"]] = (0.0, -1.4, 0.0)
        p[J["right_shoulder"]] = (0.0, 1.4, 0.0)
    elif name == "elbows90":
        p[J["left_elbow"]] = (0.0, -np.pi / 2, 0.0)
        p[J["right_elbow"]] = (0.0, np.pi / 2, 0.0)
    elif name == "twist90":
        p[J["left_wrist"]] = (np.pi / 2, 0.0, 0.0)
        p[J["right_wrist"]] = (np.pi / 2, 0.0, 0.0)
        p[J["left_elbow"]] = (np.pi / 2, 0.0, 0.0)
    elif name != "arms_down":
        raise ValueError(f"unknown pose {name!r}: allowed tpose, arms_down, walk, squat, elbows90, twist90")
    return p


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    fwd = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(fwd, (0.0, 1.0, 0.0))
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, up, -fwd, eye
    return pose


def render_view(verts: np.ndarray, faces: np.ndarray, yaw_deg: float, elev_deg: float = 8.0,
                centre: np.ndarray | None = None, extent: float | None = None,
                colours: np.ndarray | None = None, renderer: pyrender.OffscreenRenderer | None = None) -> np.ndarray:
    """One smooth-shaded view (H,W,3) uint8 of a mesh, camera orbiting the vertical axis."""
    tm = trimesh.Trimesh(verts, faces, vertex_colors=colours, process=False)
    material = None if colours is not None else pyrender.MetallicRoughnessMaterial(
        baseColorFactor=(0.82, 0.74, 0.66, 1.0), metallicFactor=0.0, roughnessFactor=0.75)
    scene = pyrender.Scene(bg_color=(1.0, 1.0, 1.0, 1.0), ambient_light=(0.3, 0.3, 0.3))
    scene.add(pyrender.Mesh.from_trimesh(tm, smooth=True, material=material))
    lo, hi = verts.min(0), verts.max(0)
    centre = (lo + hi) / 2 if centre is None else np.asarray(centre, float)
    extent = float((hi - lo).max()) if extent is None else extent
    yaw, elev = np.deg2rad(yaw_deg), np.deg2rad(elev_deg)
    dist = 4.0 * extent
    eye = centre + dist * np.array([np.sin(yaw) * np.cos(elev), np.sin(elev), np.cos(yaw) * np.cos(elev)])
    pose = _look_at(eye, centre)
    aspect = TILE[0] / TILE[1]
    scene.add(pyrender.PerspectiveCamera(yfov=2 * np.arctan(0.55 * extent / dist), aspectRatio=aspect), pose=pose)
    # Key light from the camera's upper left, fill from the right.
    scene.add(pyrender.DirectionalLight(intensity=3.0), pose=_look_at(eye + (0.0, dist, 0.0) + pose[:3, 0] * -dist, centre))
    scene.add(pyrender.DirectionalLight(intensity=1.2), pose=_look_at(eye + pose[:3, 0] * dist, centre))
    own = renderer is None
    renderer = renderer or pyrender.OffscreenRenderer(*TILE)
    colour, _ = renderer.render(scene)
    if own:
        renderer.delete()
    return colour[..., :3].copy()


def _label(img: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(img, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (40, 40, 40), 1, cv2.LINE_AA)
    return img


def part_colours(model: BodyModel) -> np.ndarray:
    """(V,4) uint8 colour of each vertex's dominant skinning joint."""
    rng = np.random.default_rng(3)
    palette = rng.integers(40, 235, size=(NUM_JOINTS, 3))
    rgb = palette[np.argmax(model.weights, axis=1)]
    return np.concatenate([rgb, np.full((len(rgb), 1), 255)], axis=1).astype(np.uint8)


def contact_sheet(model: BodyModel, betas: np.ndarray) -> np.ndarray:
    renderer = pyrender.OffscreenRenderer(*TILE)
    trans = np.zeros((1, 3), np.float32)

    def pose_verts(name: str) -> np.ndarray:
        v, _ = model.forward(named_pose(name)[None], betas, trans)
        return v[0]

    rest = pose_verts("tpose")
    f = model.faces
    rows = [[
        _label(render_view(rest, f, 0, renderer=renderer), "T-pose front"),
        _label(render_view(rest, f, 90, renderer=renderer), "T-pose left side"),
        _label(render_view(rest, f, 180, renderer=renderer), "T-pose back"),
        _label(render_view(rest, f, 35, 25, renderer=renderer), "T-pose 3/4 above"),
    ]]
    body_extent = 1.9
    row = []
    for name, yaw in (("arms_down", 20), ("walk", 70), ("squat", 50), ("elbows90", 40)):
        v = pose_verts(name)
        centre = (v.min(0) + v.max(0)) / 2
        row.append(_label(render_view(v, f, yaw, centre=centre, extent=body_extent, renderer=renderer), name))
    rows.append(row)
    colours = part_colours(model)
    twist = pose_verts("twist90")
    j = model.rest_joints(betas)
    rows.append([
        _label(render_view(rest, f, 0, colours=colours, renderer=renderer), "dominant joint"),
        _label(render_view(rest, f, 180, colours=colours, renderer=renderer), "dominant joint, back"),
        _label(render_view(twist, f, 10, 30, centre=j[J["left_wrist"]], extent=0.35, renderer=renderer),
               "L wrist+elbow twist 90"),
        _label(render_view(rest, f, 20, 65, centre=j[J["left_wrist"]] + (0.07, 0, 0), extent=0.3, renderer=renderer),
               "left hand from above"),
    ])
    rows.append([
        _label(render_view(rest, f, 60, 20, centre=j[J["left_ankle"]] + (0, -0.03, 0.05), extent=0.35, renderer=renderer),
               "left foot"),
        _label(render_view(rest, f, 0, 0, centre=j[J["head"]] + (0, 0.08, 0), extent=0.4, renderer=renderer), "head front"),
        _label(render_view(rest, f, 90, 0, centre=j[J["head"]] + (0, 0.08, 0), extent=0.4, renderer=renderer), "head side"),
        _label(render_view(rest, f, 0, 0, centre=(0, -0.45, 0), extent=0.5, colours=colours, renderer=renderer),
               "hips, dominant joint"),
    ])
    renderer.delete()
    return np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)


def shape_sheet(model: BodyModel) -> np.ndarray:
    """Front views of each shape direction at beta = -2 and +2, with the mean body between."""
    renderer = pyrender.OffscreenRenderer(*TILE)
    pose = np.zeros((1, NUM_JOINTS, 3), np.float32)
    pose[0, J["left_shoulder"]] = (0.0, 0.0, -1.2)
    pose[0, J["right_shoulder"]] = (0.0, 0.0, 1.2)
    trans = np.zeros((1, 3), np.float32)
    names = model_shape_names(model)
    rows = []
    for k in range(10):
        row = []
        for value in (-2.0, 0.0, 2.0):
            betas = np.zeros(10, np.float32)
            betas[k] = value
            v, _ = model.forward(pose, betas, trans)
            yaw = 0 if k not in (5, 9) else 90  # belly and chest depth show from the side
            tile = render_view(v[0], model.faces, yaw, 0, centre=(0.0, -0.3, 0.0), extent=1.95, renderer=renderer)
            row.append(_label(tile, f"beta{k} {names[k]} {value:+.0f}"))
        rows.append(np.concatenate(row, axis=1))
    renderer.delete()
    # Two columns of five rows keep the sheet roughly square.
    return np.concatenate([np.concatenate(rows[:5], axis=0), np.concatenate(rows[5:], axis=0)], axis=1)


def model_shape_names(model: BodyModel) -> list[str]:
    from btdm_engine.body.mannequin import SHAPE_NAMES

    return list(SHAPE_NAMES) if model.name == "mannequin" else [f"pc{k}" for k in range(10)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mannequin", help="'mannequin' or an SMPL-layout .pkl")
    parser.add_argument("--betas", type=float, nargs="*", default=[], help="shape coefficients")
    parser.add_argument("--out", type=Path, default=Path("out/look_body.png"))
    parser.add_argument("--shapes", action="store_true", help="render the shape directions instead")
    args = parser.parse_args(argv)
    model = load_body_model(args.model)
    betas = np.zeros(10, np.float32)
    betas[: len(args.betas)] = args.betas
    sheet = shape_sheet(model) if args.shapes else contact_sheet(model, betas)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {args.out}")
    print(args.out)


if __name__ == "__main__":
    main()
