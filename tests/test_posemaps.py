"""IUV atlas, renderer, UV_Processed reader, previews and the `btdm posemaps` command.

Everything runs for real: the mannequin body, pyrender on EGL, OpenCV, ffmpeg.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import scipy.io

from btdm_engine.motion.camera import intrinsics, look_at
from btdm_engine.posemaps.atlas import Atlas, AtlasError, build_atlas
from btdm_engine.posemaps.densepose_uv import load_atlas, read_uv_processed
from btdm_engine.posemaps.encoding import read_iuv_png
from btdm_engine.posemaps.parts import MIRROR_PART, PART_NAMES, flip_iuv, part_index
from btdm_engine.posemaps.preview import PART_PALETTE, colorize_iuv, contact_sheet, write_mp4
from btdm_engine.posemaps.renderer import IUVRenderer

SIZE = 192


@pytest.fixture(scope="module")
def atlas(body) -> Atlas:
    return build_atlas(body)


@pytest.fixture(scope="module")
def renderer(body, atlas):
    with IUVRenderer(body, SIZE, SIZE, atlas=atlas) as r:
        yield r


@pytest.fixture(scope="module")
def rest(body) -> np.ndarray:
    verts, _ = body.forward(np.zeros((1, 24, 3), np.float32), np.zeros(10, np.float32),
                            np.zeros((1, 3), np.float32))
    return verts[0]


@pytest.fixture(scope="module")
def walk_clip():
    from btdm_engine.motion.library import make_motion

    return make_motion("walk", seconds=1.0, fps=30.0, seed=0, width=SIZE, height=SIZE)


def camera_facing(vertices: np.ndarray, side: str, size: int = SIZE, fov: float = 40.0):
    """K and world_to_cam of a camera 3.2 m from the body's centre on the given side."""
    centre = 0.5 * (vertices.min(axis=0) + vertices.max(axis=0))
    centre[0] = 0.0  # keep the camera on the plane of symmetry
    offset = {"front": (0, 0, 3.2), "back": (0, 0, -3.2), "high": (0, 1.4, 2.9)}[side]
    return intrinsics(size, size, fov), look_at(centre + np.array(offset), centre)


# ------------------------------------------------------------------------------------ atlas


def test_atlas_is_a_split_copy_of_the_body_mesh(body, atlas) -> None:
    atlas.validate(body.num_vertices)
    # Same triangles as the body, in the same order and winding.
    assert np.array_equal(atlas.vertex_index[atlas.faces], body.faces)
    assert np.array_equal(np.unique(atlas.vertex_index), np.arange(body.num_vertices))
    # One split vertex per (body vertex, part) pair.
    pairs = atlas.vertex_index * 32 + atlas.part
    assert len(np.unique(pairs)) == atlas.num_vertices
    counts = np.bincount(atlas.face_part, minlength=25)
    assert np.all(counts[1:] > 50), dict(zip(PART_NAMES, counts.tolist()))


def test_atlas_parts_are_where_they_belong(body, atlas) -> None:
    v = body.v_template[atlas.vertex_index]
    j = body.rest_joints()

    def mean(name: str) -> np.ndarray:
        return v[atlas.part == part_index(name)].mean(axis=0)

    # The person's left is +x (SMPL); heads, hands, feet, limbs on the right side.
    for name in PART_NAMES[1:]:
        if name.startswith("left_") or name == "head_left":
            assert mean(name)[0] > 0.02, name
        if name.startswith("right_") or name == "head_right":
            assert mean(name)[0] < -0.02, name
    assert mean("torso_front")[2] > mean("torso_back")[2] + 0.05
    for seg in ("thigh", "calf"):
        assert mean(f"left_{seg}_front")[2] > mean(f"left_{seg}_back")[2] + 0.03
    for seg in ("upper_arm", "forearm"):
        assert mean(f"left_{seg}_inside")[2] > mean(f"left_{seg}_outside")[2] + 0.02
    # Vertical order: head over torso over thighs over calves over feet.
    heights = [mean(n)[1] for n in ("head_left", "torso_front", "left_thigh_front",
                                    "left_calf_front", "left_foot")]
    assert heights == sorted(heights, reverse=True)
    # The hand hangs off the forearm, beyond the wrist.
    assert mean("left_hand")[0] > j[20, 0] > mean("left_forearm_inside")[0]


def test_atlas_is_mirror_symmetric(body, atlas) -> None:
    mirror = body.mirror_vertex_index
    lookup = {(int(b), int(p)): i for i, (b, p) in enumerate(zip(atlas.vertex_index, atlas.part))}
    twin = np.array([lookup[(int(mirror[b]), int(MIRROR_PART[p]))]
                     for b, p in zip(atlas.vertex_index, atlas.part)])
    uv, twin_uv = atlas.uv.copy(), atlas.uv[twin].copy()
    torso = np.isin(atlas.part, (1, 2))
    twin_uv[torso, 0] = 1.0 - twin_uv[torso, 0]
    assert np.abs(uv - twin_uv).max() < 1e-5


def test_charts_are_continuous_inside_each_part(atlas) -> None:
    # Along every mesh edge inside a part, (U, V) moves by at most one edge's share of the
    # chart (a forearm's half circumference spans ~5 edges, so ~0.25); a wrap-around seam
    # inside a part would jump by ~1.
    edges = np.concatenate([atlas.faces[:, [0, 1]], atlas.faces[:, [1, 2]],
                            atlas.faces[:, [2, 0]]])
    jump = np.abs(atlas.uv[edges[:, 0]] - atlas.uv[edges[:, 1]]).max(axis=1)
    assert jump.max() < 0.4, float(jump.max())
    # Each chart is spread over [0, 1] in both U and V.
    for p in range(1, 25):
        uv = atlas.uv[atlas.part == p]
        assert uv.min() < 0.02 and uv.max() > 0.98, PART_NAMES[p]


def test_atlas_needs_a_mirror_map(body) -> None:
    class NoMirror:
        name = "smpl"
        v_template, faces, weights = body.v_template, body.faces, body.weights
        J_regressor, mirror_vertex_index = body.J_regressor, None

    with pytest.raises(AtlasError, match="mirror_vertex_index.*UV_Processed"):
        build_atlas(NoMirror())


# --------------------------------------------------------------------------------- renderer


def test_render_values_and_parts_seen_from_front_and_back(renderer, rest) -> None:
    front = renderer.render(rest, *camera_facing(rest, "front"))
    back = renderer.render(rest, *camera_facing(rest, "back"))
    for iuv in (front, back):
        assert iuv.shape == (SIZE, SIZE, 3) and iuv.dtype == np.uint8
        labels = iuv[..., 0]
        assert labels.max() <= 24 and 0.04 < np.mean(labels > 0) < 0.5
        assert not iuv[labels == 0].any()  # background is exactly 0
        assert (iuv[..., 1:][labels > 0] > 0).any(axis=0).all()

    def seen(iuv: np.ndarray, min_pixels: int = 3) -> set[str]:
        counts = np.bincount(iuv[..., 0].ravel(), minlength=25)
        return {PART_NAMES[p] for p in range(1, 25) if counts[p] >= min_pixels}

    front_parts = {n for n in PART_NAMES[1:] if "back" not in n and "outside" not in n}
    back_parts = {n for n in PART_NAMES[1:] if "front" not in n and "inside" not in n}
    assert front_parts <= seen(front), front_parts - seen(front)
    assert back_parts <= seen(back), back_parts - seen(back)
    assert "torso_back" not in seen(front, 20) and "torso_front" not in seen(back, 20)

    def column(iuv: np.ndarray, name: str) -> float:
        return float(np.nonzero(iuv[..., 0] == part_index(name))[1].mean())

    centre = (SIZE - 1) / 2
    # Facing the camera, the person's left hand is on the image right; from behind, left.
    assert column(front, "left_hand") > centre > column(front, "right_hand")
    assert column(back, "left_hand") < centre < column(back, "right_hand")
    rows = np.nonzero(front[..., 0] == part_index("head_left"))[0].mean()
    assert rows < np.nonzero(front[..., 0] == part_index("left_foot"))[0].mean()


def test_part_index_is_constant_per_face(body, atlas, renderer, rest) -> None:
    # Render a one-part atlas: only that label (never a blend with its neighbours) appears.
    K, w2c = camera_facing(rest, "high")
    full = renderer.render(rest, K, w2c)
    for name in ("torso_front", "left_forearm_inside", "head_right"):
        p = part_index(name)
        keep = atlas.face_part == p
        used, faces = np.unique(atlas.faces[keep], return_inverse=True)
        single = Atlas(atlas.vertex_index[used], faces.reshape(-1, 3).astype(np.int64),
                       atlas.part[used], atlas.uv[used])
        with IUVRenderer(body, SIZE, SIZE, atlas=single) as r:
            iuv = r.render(rest, K, w2c)
        assert set(np.unique(iuv[..., 0]).tolist()) == {0, p}
        # Where the full body shows this part, the single part shows the same U, V.
        both = (full[..., 0] == p) & (iuv[..., 0] == p)
        assert both.sum() > 30
        assert np.array_equal(full[both], iuv[both])


def test_renderer_reads_back_exact_values_and_is_pixel_exact() -> None:
    """A flat quad of two parts with U = x, V = y: no gamma, no blending, OpenCV pixel centres."""

    class Quad:
        v_template = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32)
        faces = np.array([[0, 1, 2], [0, 2, 3]])

    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 0], [1, 1], [0, 1]], np.float32)
    quad_atlas = Atlas(np.array([0, 1, 2, 0, 2, 3]), np.arange(6).reshape(2, 3),
                       np.array([3, 3, 3, 9, 9, 9], np.uint8), uv)
    W, H = 64, 48
    K = np.array([[40.0, 3.0, 30.3], [0.0, 44.0, 22.6], [0.0, 0.0, 1.0]])  # with skew
    w2c = np.eye(4)
    w2c[:3, :3] = np.diag([1.0, -1.0, -1.0])  # camera on +z looking at the quad, y down
    w2c[2, 3] = 2.5
    with IUVRenderer(Quad(), W, H, atlas=quad_atlas) as r:
        iuv = r.render(Quad.v_template * 0.8, K, w2c)
    # Expected values at each pixel centre: invert the projection onto the plane z = 0.
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    pix = np.stack([xs, ys, np.ones_like(xs)], axis=-1) @ np.linalg.inv(K).T * 2.5
    x, y = pix[..., 0] / 0.8, -pix[..., 1] / 0.8  # quad coordinates in [-1, 1]
    u, v = (x + 1) / 2, (y + 1) / 2
    inside = (np.abs(x) < 1 - 0.04) & (np.abs(y) < 1 - 0.04)
    outside = (np.abs(x) > 1 + 0.04) | (np.abs(y) > 1 + 0.04)
    assert set(np.unique(iuv[..., 0]).tolist()) == {0, 3, 9}  # no blended labels
    assert not iuv[outside].any()
    lower = inside & (y < x - 0.05)  # first triangle: below the diagonal
    upper = inside & (y > x + 0.05)
    assert np.all(iuv[..., 0][lower] == 3) and np.all(iuv[..., 0][upper] == 9)
    # Perspective-correct U, V; read back unchanged (a gamma curve would be off by up to 55).
    for channel, expected in ((1, u), (2, v)):
        err = np.abs(iuv[..., channel][inside].astype(int) - np.round(255 * expected[inside]))
        assert err.max() <= 1


def test_projected_points_land_on_the_pixel_opencv_predicts() -> None:
    """Tiny squares (0.8 px) centred on projected points light exactly round(u, v)."""
    rng = np.random.default_rng(0)
    W, H = 80, 60
    K = np.array([[70.0, 0.0, 39.2], [0.0, 70.0, 30.7], [0.0, 0.0, 1.0]])
    w2c = look_at(np.array([0.3, 1.0, 3.0]), np.array([0.0, 0.8, 0.0]))
    targets = np.stack([rng.uniform(5, W - 6, 12), rng.uniform(5, H - 6, 12)], axis=1)
    # Keep away from half-pixel ties so that the expected pixel is unambiguous.
    frac = targets - np.floor(targets)
    targets = np.where(np.abs(frac - 0.5) < 0.15, targets + 0.3, targets)
    depth = rng.uniform(2.0, 4.0, 12)
    cam_to_world = np.linalg.inv(w2c)
    verts, faces = [], []
    for (tu, tv), z in zip(targets, depth):
        corners = [(tu + du * 0.4, tv + dv * 0.4)
                   for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
        base = len(verts)
        for cu, cv in corners:
            ray = np.linalg.inv(K) @ np.array([cu, cv, 1.0]) * z
            verts.append((cam_to_world @ np.append(ray, 1.0))[:3])
        # Counter-clockwise as the camera sees it: front-facing.
        faces += [[base, base + 3, base + 2], [base, base + 2, base + 1]]

    class Dots:
        v_template = np.array(verts, np.float32)

    n = len(verts)
    dots_atlas = Atlas(np.arange(n), np.array(faces, np.int64), np.full(n, 5, np.uint8),
                       np.full((n, 2), 0.5, np.float32))
    with IUVRenderer(Dots(), W, H, atlas=dots_atlas) as r:
        iuv = r.render(Dots.v_template, K, w2c)
    lit = {tuple(p) for p in np.argwhere(iuv[..., 0] == 5)[:, ::-1].tolist()}
    expected = {(int(round(u)), int(round(v))) for u, v in targets}
    assert lit == expected


def test_silhouette_matches_rasterised_projection(body, renderer, walk_clip) -> None:
    t = 7
    verts, _ = body.forward(walk_clip.poses[t : t + 1], walk_clip.betas, walk_clip.trans[t : t + 1])
    K, w2c = walk_clip.K[t], walk_clip.world_to_cam[t]
    iuv = renderer.render(verts[0], K, w2c)
    cam = verts[0] @ w2c[:3, :3].T + w2c[:3, 3]
    pix = cam @ np.asarray(K, np.float64).T
    pix = pix[:, :2] / pix[:, 2:3]
    # cv2 fills every pixel an edge touches (about half a pixel of dilation), so rasterise on a
    # 9x finer grid whose pixel 9k+4 has its centre on our pixel k's centre, and sample there.
    fine, shift = 9, 8
    mask = np.zeros((SIZE * fine, SIZE * fine), np.uint8)
    tris = np.round((pix[body.faces] * fine + fine // 2) * (1 << shift)).astype(np.int32)
    for tri in tris:
        cv2.fillConvexPoly(mask, tri, 1, lineType=cv2.LINE_8, shift=shift)
    mask = mask[fine // 2 :: fine, fine // 2 :: fine]
    ours = iuv[..., 0] > 0
    theirs = mask > 0
    iou = (ours & theirs).sum() / (ours | theirs).sum()
    assert iou > 0.98, iou


def test_mirrored_body_renders_as_flipped_iuv(body, renderer, walk_clip) -> None:
    # An asymmetric walking pose, filmed by a camera on the plane of symmetry.
    t = 10
    verts, _ = body.forward(walk_clip.poses[t : t + 1], walk_clip.betas, walk_clip.trans[t : t + 1])
    verts = verts[0] - np.array([verts[0, :, 0].mean(), 0.0, 0.0], np.float32)
    mirrored = verts[body.mirror_vertex_index] * np.array([-1.0, 1.0, 1.0], np.float32)
    checked = 0
    for side in ("front", "high"):
        K, w2c = camera_facing(verts, side)
        expected = flip_iuv(renderer.render(verts, K, w2c))
        got = renderer.render(mirrored, K, w2c)
        fg = (expected[..., 0] > 0) | (got[..., 0] > 0)
        same_i = expected[..., 0][fg] == got[..., 0][fg]
        assert same_i.mean() >= 0.99, same_i.mean()
        both = fg & (expected[..., 0] == got[..., 0])
        duv = np.abs(expected[both][:, 1:].astype(int) - got[both][:, 1:].astype(int))
        assert np.mean(duv.max(axis=1) <= 2) >= 0.99
        # The flip really swaps sides: the unflipped render disagrees on many labels.
        plain = renderer.render(verts, K, w2c)
        assert np.mean(plain[..., 0][fg] == got[..., 0][fg]) < 0.9
        checked += int(fg.sum())
    assert checked > 2000


def test_render_clip_is_smooth_over_time(renderer, walk_clip) -> None:
    maps = np.stack(list(renderer.render_clip(walk_clip, size=64, progress=False,
                                              frames=range(0, 16))))
    assert maps.shape == (16, 64, 64, 3)
    labels = maps[..., 0].astype(int)
    step = [np.mean(labels[i] != labels[i + 1]) for i in range(15)]
    far = np.mean(labels[0] != labels[15])  # half a stride apart
    assert max(step) < 0.5 * far, (max(step), far)
    # render_clip left the renderer at its own size.
    assert (renderer.width, renderer.height) == (SIZE, SIZE)
    # The same frames rendered one by one give the same maps.
    again = list(renderer.render_clip(walk_clip, size=64, progress=False, frames=[3, 9]))
    assert np.array_equal(again[0], maps[3]) and np.array_equal(again[1], maps[9])


def test_renderer_errors_and_close(body, atlas, rest) -> None:
    r = IUVRenderer(body, 32, 32, atlas=atlas)
    K, w2c = camera_facing(rest, "front", size=32)
    with pytest.raises(ValueError, match="vertices"):
        r.render(rest[:10], K, w2c)
    with pytest.raises(ValueError, match="world_to_cam"):
        r.render(rest, K, w2c[:3])
    with pytest.raises(ValueError, match="K"):
        r.render(rest, np.eye(4), w2c)
    behind = look_at(np.array([0.0, 0.0, -5.0]), np.array([0.0, 0.0, -10.0]))
    assert not r.render(rest, K, behind).any()  # body behind the camera: empty map
    r.close()
    r.close()
    with pytest.raises(RuntimeError, match="closed"):
        r.render(rest, K, w2c)


# --------------------------------------------------------------------- UV_Processed reader


def _write_uv_processed(path: Path, atlas: Atlas, **override) -> None:
    """Write an atlas in DensePose's UV_Processed.mat layout (1-based, column vectors)."""
    data = {
        "All_FaceIndices": atlas.face_part.astype(np.float64)[:, None],
        "All_Faces": (atlas.faces + 1).astype(np.float64),
        "All_U_norm": atlas.uv[:, :1].astype(np.float64),
        "All_V_norm": atlas.uv[:, 1:].astype(np.float64),
        "All_vertices": (atlas.vertex_index + 1).astype(np.float64)[:, None],
    }
    data.update(override)
    data = {k: v for k, v in data.items() if v is not None}
    scipy.io.savemat(str(path), data)


def test_uv_processed_reader_round_trip(tmp_path: Path, body, atlas, renderer, rest) -> None:
    path = tmp_path / "UV_Processed.mat"
    _write_uv_processed(path, atlas)
    read = load_atlas(body, str(path))
    assert read.source == str(path)
    assert np.array_equal(read.vertex_index, atlas.vertex_index)
    assert np.array_equal(read.faces, atlas.faces)
    assert np.array_equal(read.part, atlas.part)
    assert np.allclose(read.uv, atlas.uv, atol=1e-7)
    K, w2c = camera_facing(rest, "front")
    with IUVRenderer(body, SIZE, SIZE, atlas=read) as r:
        assert np.array_equal(r.render(rest, K, w2c), renderer.render(rest, K, w2c))


def test_uv_processed_splits_vertices_shared_by_two_parts(tmp_path: Path) -> None:
    # Two triangles share split vertices 2 and 3 but belong to parts 4 and 7.
    path = tmp_path / "small.mat"
    scipy.io.savemat(str(path), {
        "All_FaceIndices": np.array([[4], [7]]),
        "All_Faces": np.array([[1, 2, 3], [2, 4, 3]]),
        "All_U_norm": np.array([[0.0], [0.5], [1.0], [0.25]]),
        "All_V_norm": np.array([[0.1], [0.2], [0.3], [0.4]]),
        "All_vertices": np.array([[5], [1], [2], [3]]),
    })
    a = read_uv_processed(path, num_body_vertices=6)
    assert a.num_vertices == 6
    assert a.face_part.tolist() == [4, 7]
    assert a.vertex_index[a.faces].tolist() == [[4, 0, 1], [0, 2, 1]]
    assert np.allclose(a.uv[a.faces[1]], [[0.5, 0.2], [0.25, 0.4], [1.0, 0.3]])


@pytest.mark.parametrize(
    "override, message",
    [
        ({"All_Faces": None}, "missing key 'All_Faces'"),
        ({"All_U_norm": None}, "missing key 'All_U_norm'"),
        ({"All_FaceIndices": np.array([[4], [25]])}, "All_FaceIndices values must lie in 1..24"),
        ({"All_Faces": np.array([[0, 1, 2], [1, 3, 2]])}, "All_Faces must hold 1-based"),
        ({"All_V_norm": np.array([[0.1], [0.2], [1.3], [0.4]])}, "All_V_norm values must lie"),
        ({"All_vertices": np.array([[1], [2], [3]])}, "one row per split vertex"),
        ({"All_vertices": np.array([[1], [2], [3], [99]])}, "All_vertices reaches 99"),
        ({"All_U_norm": np.array([[0.0, 1.0]])}, "All_U_norm must have shape"),
    ],
)
def test_uv_processed_errors_name_file_and_key(tmp_path: Path, override, message) -> None:
    base = {
        "All_FaceIndices": np.array([[4], [7]]),
        "All_Faces": np.array([[1, 2, 3], [2, 4, 3]]),
        "All_U_norm": np.array([[0.0], [0.5], [1.0], [0.25]]),
        "All_V_norm": np.array([[0.1], [0.2], [0.3], [0.4]]),
        "All_vertices": np.array([[5], [1], [2], [3]]),
    }
    base.update(override)
    path = tmp_path / "broken_uv.mat"
    scipy.io.savemat(str(path), {k: v for k, v in base.items() if v is not None})
    with pytest.raises(AtlasError, match=re.escape(message)) as info:
        read_uv_processed(path, num_body_vertices=10)
    assert "broken_uv.mat" in str(info.value)


def test_uv_processed_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.mat"):
        read_uv_processed(tmp_path / "missing.mat")
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"this is not a MATLAB file at all" * 8)
    with pytest.raises(AtlasError, match="junk.mat.*not a readable"):
        read_uv_processed(junk)
    truncated = tmp_path / "truncated.mat"
    scipy.io.savemat(str(truncated), {"All_Faces": np.ones((200, 3))})
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(AtlasError, match="truncated.mat.*not a readable"):
        read_uv_processed(truncated)


# ----------------------------------------------------------------------------------- preview


def test_colorize_iuv() -> None:
    iuv = np.zeros((4, 26, 3), np.uint8)
    iuv[0, 1:25, 0] = np.arange(1, 25)
    iuv[0, 1:25, 1:] = 100
    iuv[1:, 1:, 0] = 10
    iuv[1:, 1:, 1:] = 77  # between iso-lines
    iuv[1, 1:, 1] = np.linspace(0, 255, 25).astype(np.uint8)
    iuv[2, 1:, 2] = np.linspace(0, 255, 25).astype(np.uint8)
    rgb = colorize_iuv(iuv)
    assert rgb.shape == iuv.shape and rgb.dtype == np.uint8
    assert not rgb[iuv[..., 0] == 0].any()
    assert len({tuple(c) for c in rgb[0, 1:25]}) == 24  # one colour per part
    assert len(np.unique(PART_PALETTE[1:], axis=0)) == 24
    assert len({tuple(c) for c in rgb[1, 1:]}) > 1  # U is visible
    assert len({tuple(c) for c in rgb[2, 1:]}) > 1  # V is visible


def test_contact_sheet_layout() -> None:
    a = np.full((10, 20, 3), 200, np.uint8)
    b = np.full((6, 8, 3), 100, np.uint8)
    sheet = contact_sheet([a, b, a], cols=2, labels=["a", "", "c"], gap=2)
    assert sheet.shape == (2 * 10 + 3 * 2, 2 * 20 + 3 * 2, 3)
    assert (sheet[2 + 2 : 2 + 8, 2 + 20 + 2 + 6 : 2 + 20 + 2 + 14] == 100).all()  # b centred
    with pytest.raises(ValueError, match="labels"):
        contact_sheet([a, b], cols=2, labels=["x"])


def test_write_mp4_pads_to_even_and_decodes(tmp_path: Path) -> None:
    frames = [np.full((33, 47, 3), 20 * i, np.uint8) for i in range(6)]
    path = write_mp4(frames, tmp_path / "v" / "clip.mp4", fps=12)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    decoded = [np.frombuffer(f, np.uint8).reshape(34, 48, 3) for f in reader]
    assert meta["size"] == (48, 34) and abs(meta["fps"] - 12) < 1e-6
    assert len(decoded) == 6
    assert abs(int(decoded[5][10, 10, 0]) - 100) <= 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["clip.mp4"]
    with pytest.raises(ValueError, match="frame 1 is"):
        write_mp4([frames[0], frames[1][:, :40]], tmp_path / "bad.mp4", fps=12)
    assert not (tmp_path / "bad.mp4").exists()


# ------------------------------------------------------------------------------------- CLI


def test_cli_end_to_end_and_resume(tmp_path: Path, walk_clip, capsys) -> None:
    from btdm_engine.cli import main

    clip_path = walk_clip.slice(0, 10).save(tmp_path / "walk.npz")
    out = tmp_path / "out"
    assert main(["posemaps", str(clip_path), "--out", str(out), "--size", "64",
                 "--no-progress"]) == 0
    pngs = sorted((out / "iuv").iterdir())
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(10)]
    first = [read_iuv_png(p) for p in pngs]
    assert all(m.shape == (64, 64, 3) and m[..., 0].max() > 0 for m in first)
    reader = imageio_ffmpeg.read_frames(str(out / "preview.mp4"))
    assert reader.__next__()["size"] == (64, 64)
    assert sum(1 for _ in reader) == 10
    assert "10 rendered, 0 already complete" in capsys.readouterr().out

    # Resume: only the missing frame is rendered again, and identically.
    stamps = {p.name: p.stat().st_mtime_ns for p in pngs}
    (out / "iuv" / "000004.png").unlink()
    assert main(["posemaps", str(clip_path), "--out", str(out), "--size", "64",
                 "--no-mp4", "--no-progress"]) == 0
    assert "1 rendered, 9 already complete" in capsys.readouterr().out
    for p in sorted((out / "iuv").iterdir()):
        if p.name != "000004.png":
            assert p.stat().st_mtime_ns == stamps[p.name], p.name
    assert np.array_equal(read_iuv_png(out / "iuv" / "000004.png"), first[4])

    # A range writes only its frames; a bad range is a one-line error.
    part = tmp_path / "part"
    assert main(["posemaps", str(clip_path), "--out", str(part), "--size", "48",
                 "--start", "2", "--end", "5", "--no-mp4", "--no-progress"]) == 0
    assert sorted(p.name for p in (part / "iuv").iterdir()) == [
        "000002.png", "000003.png", "000004.png"]
    assert main(["posemaps", str(clip_path), "--out", str(part), "--start", "8",
                 "--end", "20", "--no-progress"]) == 2
    assert "outside the clip's 0..10" in capsys.readouterr().err


def test_changed_inputs_replace_outdated_pose_maps(tmp_path: Path, walk_clip, capsys) -> None:
    from btdm_engine.cli import main

    out = tmp_path / "out"
    first = walk_clip.slice(0, 4).save(tmp_path / "a.npz")
    second = walk_clip.slice(10, 14).save(tmp_path / "b.npz")
    args = ["--out", str(out), "--size", "48", "--no-mp4", "--no-progress"]
    assert main(["posemaps", str(first), *args]) == 0
    before = read_iuv_png(out / "iuv" / "000000.png")
    capsys.readouterr()
    # Same folder, another clip: the old frames are outdated, never silently reused.
    assert main(["posemaps", str(second), *args]) == 0
    printed = capsys.readouterr().out
    assert "deleted 4 outdated" in printed and "4 rendered, 0 already complete" in printed
    assert not np.array_equal(read_iuv_png(out / "iuv" / "000000.png"), before)


def test_demo_command(tmp_path: Path, capsys) -> None:
    from btdm_engine.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seconds", "0.2", "--size", "48", "--generate-seconds", "0.2",
                 "--steps", "1", "--sr-steps", "1", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for name in ("walk", "spin"):
        assert (out / name / "clip.npz").is_file()
        assert len(list((out / name / "iuv").glob("*.png"))) == 6
        assert (out / name / "preview.mp4").stat().st_size > 1000
        assert str(out / name / "preview.mp4") in printed
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[0] > 2 * 48 and sheet.shape[1] >= 6 * 48
    assert str(out / "contact_sheet.png") in printed
    # generated frames from the embedded model, at its SR3 resolution, with video and strip
    frames = sorted((out / "generated" / "frames").glob("*.png"))
    assert len(frames) == 6
    assert cv2.imread(str(frames[0])).shape == (256, 256, 3)
    assert (out / "generated" / "animation.mp4").stat().st_size > 1000
    assert cv2.imread(str(out / "generated" / "strip.png")).shape[0] > 2 * 256
    assert main(["demo", "--out", str(tmp_path / "maps_only"), "--seconds", "0.2", "--size", "48",
                 "--no-generate", "--no-progress"]) == 0
    assert not (tmp_path / "maps_only" / "generated").exists()
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--motions", "moonwalk"]) == 2
    assert "allowed:" in capsys.readouterr().err
