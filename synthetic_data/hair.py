"""Hair and face marks around the body's head (numpy), rigidly attached through skinning weights.

Hair is a shell offset from the scalp: the body's own head faces above a hairline that is high at
the forehead and low at the nape (the style sets both), pushed out along the vertex normals by
the style's thickness. Long hair adds a curtain down the upper back (ring sampling as for
garments), a bun a sphere on the crown, a ponytail a tapered drop from the back of the head. The
eyes and mouth are small dark ellipsoids on the face, so a model can tell front from back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from btdm_engine.body.skeleton import JOINT_NAMES, NUM_JOINTS
from synthetic_data.garments import BodyRest, _transfer_weights
from synthetic_data.spec import HairSpec

__all__ = ["HeadMesh", "build_face_marks", "build_hair"]

J = {name: i for i, name in enumerate(JOINT_NAMES)}

# style -> (hairline height at the forehead, at the nape, as fractions chin..crown; thickness m)
_STYLES: dict[str, tuple[float, float, float]] = {
    "buzz": (0.80, 0.42, 0.004),
    "short": (0.78, 0.35, 0.014),
    "bob": (0.80, 0.12, 0.018),
    "long": (0.80, 0.10, 0.016),
    "bun": (0.78, 0.30, 0.012),
    "ponytail": (0.80, 0.30, 0.010),
}


@dataclass(frozen=True)
class HeadMesh:
    """A rigid-ish mesh: vertices (N,3), faces (F,3), skinning weights (N,24)."""

    vertices: np.ndarray
    faces: np.ndarray
    skin_weights: np.ndarray


def _head_frame(body: BodyRest) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    owner = body.weights.argmax(1)
    head = owner == J["head"]
    v = body.vertices[head]
    chin, crown = float(v[:, 1].min()), float(v[:, 1].max())
    centre = np.array([0.0, 0.5 * (chin + crown), float(np.median(v[:, 2]))])
    radius = float(0.5 * np.ptp(v[:, 2]))
    return head, centre, chin, crown, radius


def _sphere(centre: np.ndarray, radii: np.ndarray, rows: int = 8, cols: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A UV sphere (triangles) with ``rows`` latitude bands."""
    th = np.linspace(0, np.pi, rows + 1)[1:-1]
    ph = 2 * np.pi * np.arange(cols) / cols
    ring = np.stack([np.sin(th)[:, None] * np.cos(ph), np.cos(th)[:, None] * np.ones_like(ph),
                     np.sin(th)[:, None] * np.sin(ph)], axis=-1).reshape(-1, 3)
    verts = np.concatenate([[[0, 1, 0]], ring, [[0, -1, 0]]]) * radii + centre
    faces = []
    for c in range(cols):
        c1 = (c + 1) % cols
        faces.append([0, 1 + c1, 1 + c])
        for r in range(rows - 2):
            a, b = 1 + r * cols, 1 + (r + 1) * cols
            faces += [[a + c, a + c1, b + c1], [a + c, b + c1, b + c]]
        last = 1 + (rows - 2) * cols
        faces.append([last + c, last + c1, len(verts) - 1])
    return verts, np.array(faces, dtype=np.int64)


def _merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    verts, faces, n = [], [], 0
    for v, f in parts:
        verts.append(v)
        faces.append(f + n)
        n += len(v)
    return np.concatenate(verts), np.concatenate(faces)


def build_hair(body: BodyRest, hair: HairSpec) -> HeadMesh:
    """The hair of ``hair.style`` for this body (see the module docstring)."""
    front, back, thickness = _STYLES[hair.style]
    thickness *= hair.volume
    head, centre, chin, crown, radius = _head_frame(body)
    owner = body.weights.argmax(1)
    scalp_region = head | (owner == J["neck"])
    v = body.vertices
    t = (v[:, 1] - chin) / (crown - chin)
    facing = np.clip((v[:, 2] - centre[2]) / max(radius, 1e-6), -1.0, 1.0)
    line = back + (front - back) * 0.5 * (facing + 1.0)
    covered = scalp_region & (t >= line)
    faces = body.faces[covered[body.faces].all(axis=1)]
    used = np.unique(faces)
    remap = -np.ones(len(v), dtype=np.int64)
    remap[used] = np.arange(len(used))
    # Thicker on the crown, thinning towards the hairline.
    lift = thickness * (0.4 + 0.6 * np.clip((t[used] - line[used]) / 0.15, 0.0, 1.0))
    parts = [(v[used] + body.normals[used] * (lift[:, None] + 0.002), remap[faces])]
    if hair.style == "bun":
        c = np.array([0.0, crown - 0.02, centre[2] - 0.75 * radius])
        parts.append(_sphere(c, np.full(3, 0.045 * hair.volume)))
    elif hair.style == "ponytail":
        c = np.array([0.0, chin + 0.55 * (crown - chin) - 0.07, centre[2] - radius - 0.02])
        parts.append(_sphere(c, np.array([0.03, 0.09, 0.03]) * hair.volume))
    elif hair.style == "long":
        parts.append(_curtain(body, centre, radius, chin, crown, thickness))
    verts, faces = _merge(parts)
    return HeadMesh(verts, faces, _transfer_weights(body, verts))


def _curtain(body: BodyRest, centre: np.ndarray, radius: float, chin: float, crown: float,
             thickness: float) -> tuple[np.ndarray, np.ndarray]:
    """Long hair down the back: rows of points behind the head and upper back, offset outwards."""
    v = body.vertices
    owner = body.weights.argmax(1)
    keep = np.isin(owner, [J["head"], J["neck"], J["spine3"], J["left_collar"], J["right_collar"], J["spine2"]])
    keep &= np.abs(v[:, 0]) < 0.17
    top = chin + 0.45 * (crown - chin)
    bottom = float(body.joints[J["spine3"], 1]) - 0.02
    ys = np.linspace(top, bottom, 7)
    ang = np.linspace(-1.2, 1.2, 9)  # around the back: 0 = straight back
    rows = []
    for y in ys:
        sel = keep & (np.abs(v[:, 1] - y) < 0.025)
        p = v[sel]
        c = np.array([0.0, y, float(np.median(p[:, 2]))])
        row = []
        for a in ang:
            d = np.array([np.sin(a), 0.0, -np.cos(a)])
            proj = (p - c) @ d
            row.append(c + d * (max(float(proj.max()), 0.02) + thickness + 0.01))
        rows.append(row)
    verts = np.array(rows).reshape(-1, 3)
    n = len(ang)
    faces = []
    for r in range(len(ys) - 1):
        for k in range(n - 1):
            a, b = r * n + k, (r + 1) * n + k
            faces += [[a, a + 1, b + 1], [a, b + 1, b]]
    return verts, np.array(faces, dtype=np.int64)


def build_face_marks(body: BodyRest) -> HeadMesh:
    """Two eyes and a mouth: small flat ellipsoids on the front of the head."""
    head, _centre, chin, crown, _radius = _head_frame(body)
    v = body.vertices
    parts = []
    for x, t, radii in ((0.032, 0.56, (0.011, 0.008, 0.004)), (-0.032, 0.56, (0.011, 0.008, 0.004)),
                        (0.0, 0.3, (0.018, 0.005, 0.004))):
        y = chin + t * (crown - chin)
        near = head & (np.abs(v[:, 0] - x) < 0.012) & (np.abs(v[:, 1] - y) < 0.012)
        if not np.any(near):
            near = head
        i = np.flatnonzero(near)[np.argmax(v[near, 2])]
        parts.append(_sphere(v[i] + np.array([0.0, 0.0, 0.001]), np.array(radii), rows=6, cols=10))
    verts, faces = _merge(parts)
    w = np.zeros((len(verts), NUM_JOINTS))
    w[:, J["head"]] = 1.0
    return HeadMesh(verts, faces, w)
