"""Body model: the procedural mannequin, its model file and SMPL's linear blend skinning."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import ConvexHull

from btdm_engine.body import BodyModel, BodyModelError, load_body_model, mannequin, read_model_file, smplx_kwargs
from btdm_engine.body.skeleton import JOINT_NAMES, MIRROR, NUM_JOINTS, PARENTS

J = {n: i for i, n in enumerate(JOINT_NAMES)}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache directory, so the tests build the mannequin themselves."""
    path = tmp_path_factory.mktemp("btdm_cache")
    old = os.environ.get("BTDM_CACHE_DIR")
    os.environ["BTDM_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        del os.environ["BTDM_CACHE_DIR"]
    else:
        os.environ["BTDM_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def model(cache) -> BodyModel:
    return load_body_model("mannequin")


def random_inputs(frames: int, seed: int, scale: float = 0.5):
    g = torch.Generator().manual_seed(seed)
    poses = torch.randn(frames, NUM_JOINTS, 3, generator=g) * scale
    betas = torch.randn(frames, 10, generator=g)
    trans = torch.randn(frames, 3, generator=g)
    return poses, betas, trans


def descendants(j: int) -> set[int]:
    out = {j}
    for k in range(NUM_JOINTS):
        if k and PARENTS[k] in out:
            out.add(k)
    return out


# ---------------------------------------------------------------------------------- file, cache


def test_model_file_is_cached_versioned_and_smpl_layout(model, cache):
    path = cache / f"mannequin-v{mannequin.VERSION}.pkl"
    assert model.source == path and path.is_file()
    data = read_model_file(path)
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f", "J"):
        assert key in data
    assert data["posedirs"].shape == (model.num_vertices, 3, 207)
    assert data["shapedirs"].shape == (model.num_vertices, 3, 10)
    mtime = path.stat().st_mtime_ns
    again = load_body_model("mannequin")
    assert path.stat().st_mtime_ns == mtime  # loaded from the cache, not rebuilt
    np.testing.assert_array_equal(again.v_template, model.v_template)
    assert not list(cache.glob("*.tmp"))


def test_build_is_deterministic(model):
    data = mannequin.build_mannequin()
    cached = read_model_file(model.source)
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "f", "mirror_vertex_index"):
        np.testing.assert_array_equal(data[key], cached[key], err_msg=key)


# -------------------------------------------------------------------------------------- surface


def test_surface_is_one_closed_manifold_of_smpl_density(model):
    mesh = trimesh.Trimesh(model.v_template, model.faces, process=False)
    assert 6890 <= model.num_vertices <= 9000
    assert len(model.faces) == 2 * model.num_vertices - 4  # closed genus-0 triangle mesh
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.is_volume
    assert mesh.body_count == 1
    assert mesh.volume > 0.05  # outward normals; an adult is about 0.07 m^3
    assert mesh.area_faces.min() > 1e-6
    lo, hi = model.v_template.min(0), model.v_template.max(0)
    assert 1.70 < hi[1] - lo[1] < 1.80  # height
    assert hi[0] - lo[0] > 1.6  # T-pose arm span
    assert hi[2] > 0.12 and lo[2] > -0.2  # faces +Z (toes and nose in front)


def test_template_is_mirror_symmetric(model):
    v, mirror = model.v_template.astype(np.float64), model.mirror_vertex_index
    np.testing.assert_array_equal(mirror[mirror], np.arange(model.num_vertices))
    np.testing.assert_allclose(v[mirror] * (-1, 1, 1), v, atol=1e-6)
    # Faces map onto faces (with reversed winding) under the mirror.
    faces = {tuple(sorted(f)) for f in model.faces.tolist()}
    assert all(tuple(sorted(f)) in faces for f in mirror[model.faces].tolist())
    # Weights and regressor follow the joint mirror map.
    np.testing.assert_allclose(model.weights[mirror][:, list(MIRROR)], model.weights, atol=1e-6)
    np.testing.assert_allclose(model.J_regressor[list(MIRROR)][:, mirror], model.J_regressor, atol=1e-7)


# -------------------------------------------------------------------------------------- weights


def test_weights_are_convex(model):
    assert (model.weights >= 0).all()
    np.testing.assert_allclose(model.weights.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_each_body_region_is_dominated_by_its_bone(model, side):
    v, j = model.v_template, model.rest_joints()
    s = 1.0 if side == "left" else -1.0
    x, y, z = v[:, 0] * s, v[:, 1], v[:, 2]
    jx = lambda n: j[J[f"{side}_{n}"], 0] * s  # noqa: E731
    jy = lambda n: j[J[f"{side}_{n}"], 1]  # noqa: E731
    regions = {
        f"{side}_hip": (x > 0.02) & (y < jy("hip") - 0.1) & (y > jy("knee") + 0.07),
        f"{side}_knee": (x > 0.02) & (y < jy("knee") - 0.07) & (y > jy("ankle") + 0.05),
        f"{side}_ankle": (x > 0.02) & (y < jy("ankle") - 0.02) & (z < j[J[f"{side}_foot"], 2] - 0.05),
        f"{side}_foot": (x > 0.02) & (z > j[J[f"{side}_foot"], 2] + 0.04),
        f"{side}_shoulder": (x > jx("shoulder") + 0.08) & (x < jx("elbow") - 0.06),
        f"{side}_elbow": (x > jx("elbow") + 0.06) & (x < jx("wrist") - 0.05),
        f"{side}_wrist": (x > jx("wrist") + 0.025) & (x < jx("hand") - 0.02),
        f"{side}_hand": x > jx("hand") + 0.035,
    }
    centre = {
        "head": y > j[J["head"], 1] + 0.09,
        "pelvis": (np.abs(x) < 0.1) & (y > j[J["pelvis"], 1] + 0.02) & (y < j[J["spine1"], 1] - 0.04),
        "spine1": (np.abs(x) < 0.1) & (y > j[J["spine1"], 1] + 0.04) & (y < j[J["spine2"], 1] - 0.04),
        "spine3": (np.abs(x) < 0.06) & (y > j[J["spine3"], 1] + 0.03) & (y < j[J["spine3"], 1] + 0.08),
    }
    dominant = np.argmax(model.weights, axis=1)
    for name, sel in {**regions, **centre}.items():
        assert sel.sum() >= 20, name
        share = np.mean(dominant[sel] == J[name])
        assert share > 0.97, f"{name}: only {share:.2f} of its region is dominated by it"


# ----------------------------------------------------------------------------------- forward pass


def test_rest_pose_reproduces_template_and_design_joints(model):
    zero = np.zeros((1, NUM_JOINTS, 3), np.float32)
    v, j = model.forward(zero, np.zeros(10, np.float32), np.zeros((1, 3), np.float32))
    assert isinstance(v, np.ndarray) and v.dtype == np.float32 and v.shape == (1, model.num_vertices, 3)
    np.testing.assert_allclose(v[0], model.v_template, atol=1e-6)
    np.testing.assert_allclose(j[0], mannequin.rest_joint_positions(), atol=1e-5)
    np.testing.assert_allclose(model.rest_joints(), j[0], atol=1e-6)


def test_joints_follow_the_kinematic_tree(model):
    poses, betas, trans = random_inputs(3, seed=1)
    _, j0 = model.forward(poses, betas, trans)
    rest = torch.from_numpy(np.stack([model.rest_joints(b) for b in betas.numpy()]))
    for k in range(1, NUM_JOINTS):  # bone lengths are preserved by any pose
        np.testing.assert_allclose(
            (j0[:, k] - j0[:, PARENTS[k]]).norm(dim=-1), (rest[:, k] - rest[:, PARENTS[k]]).norm(dim=-1), atol=1e-5
        )
    for k in (J["left_hip"], J["spine3"], J["right_elbow"], J["neck"]):
        bent = poses.clone()
        bent[:, k] += torch.tensor([0.4, -0.3, 0.5])
        _, j1 = model.forward(bent, betas, trans)
        moved = (j1 - j0).norm(dim=-1).amax(0) > 1e-5
        expect = torch.zeros(NUM_JOINTS, dtype=torch.bool)
        expect[list(descendants(k) - {k})] = True
        assert torch.equal(moved, expect), JOINT_NAMES[k]


def test_exact_points_agree_with_forward_and_rest_joints(model):
    """body.exact is the same model as forward, in float64 with a fixed order of operations."""
    from btdm_engine.body import exact

    poses, betas, trans = (x.numpy() for x in random_inputs(3, seed=4))
    verts, _ = model.forward(poses, betas[0], trans)
    frames = np.repeat(np.arange(3), model.num_vertices)
    vertices = np.tile(np.arange(model.num_vertices), 3)
    pts = exact.posed_points(model, poses, betas[0], trans, frames, vertices, chunk=5000)
    assert pts.dtype == np.float64
    np.testing.assert_allclose(pts.reshape(verts.shape), verts, atol=2e-6)
    # Any subset, in any order, gives the same bits for the same (frame, vertex).
    pick = np.random.default_rng(0).permutation(len(frames))[:300]
    assert exact.posed_points(model, poses, betas[0], trans, frames[pick], vertices[pick]).tobytes() == pts[pick].tobytes()
    rest = model.rest_joints(betas[0])
    assert rest.dtype == np.float32
    np.testing.assert_array_equal(rest, exact.rest_joints(model, betas[0]).astype(np.float32))
    np.testing.assert_allclose(rest, model.J_regressor.astype(np.float64) @ exact.rest_vertices(model, betas[0]), atol=1e-6)


def test_forward_torch_in_torch_out_batched_and_differentiable(model):
    poses, betas, trans = random_inputs(4, seed=2)
    poses.requires_grad_(True)
    v, j = model.forward(poses, betas[0], trans)
    assert torch.is_tensor(v) and v.dtype == torch.float32 and j.shape == (4, NUM_JOINTS, 3)
    v.sum().backward()
    assert torch.isfinite(poses.grad).all() and poses.grad.abs().sum() > 0
    v_np, _ = model.forward(poses.detach().numpy()[1:2], betas[0].numpy(), trans.numpy()[1:2])
    np.testing.assert_allclose(v_np[0], v[1].detach().numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="poses"):
        model.forward(poses.detach()[:, :23], betas[0], trans)
    with pytest.raises(ValueError, match="betas"):
        model.forward(poses.detach(), betas[:2], trans)


def test_smplx_gives_the_same_body(model):
    smplx = pytest.importorskip("smplx")
    poses, betas, trans = random_inputs(5, seed=3, scale=0.6)
    ours_v, ours_j = model.forward(poses, betas, trans)
    layer = smplx.SMPL(model_path=str(model.source), batch_size=5, **smplx_kwargs(model))
    out = layer(global_orient=poses[:, 0], body_pose=poses[:, 1:].flatten(1), betas=betas, transl=trans)
    assert (out.vertices - ours_v).abs().max() < 1e-5
    assert (out.joints[:, :NUM_JOINTS] - ours_j).abs().max() < 1e-5
    # With >= 6890 vertices, smplx's default SMPL-H keypoint ids load too.
    assert smplx.SMPL(model_path=str(model.source)).v_template.shape == (model.num_vertices, 3)


# ---------------------------------------------------------------------------------------- shape


def shaped(model: BodyModel, k: int, value: float) -> tuple[np.ndarray, np.ndarray]:
    betas = np.zeros(10, np.float32)
    betas[k] = value
    v, j = model.forward(np.zeros((1, NUM_JOINTS, 3), np.float32), betas, np.zeros((1, 3), np.float32))
    return v[0].astype(np.float64), j[0].astype(np.float64)


def test_shape_directions_change_the_body_plausibly(model):
    v0, j0 = shaped(model, 0, 0.0)
    vol0 = trimesh.Trimesh(v0, model.faces, process=False).volume

    def height(v):
        return v[:, 1].max() - v[:, 1].min()

    def chest(v, axis):  # extent of the torso's cross-section just below the armpits
        band = (np.abs(v[:, 1] - j0[J["spine3"], 1] - 0.03) < 0.02) & (np.abs(v[:, 0]) < 0.2)
        return np.ptp(v[band, axis])

    measures = {
        0: lambda v, j: height(v),
        1: lambda v, j: trimesh.Trimesh(v, model.faces, process=False).volume / vol0,
        2: lambda v, j: j[J["left_hip"], 1],
        3: lambda v, j: j[J["left_shoulder"], 0] - j[J["right_shoulder"], 0],
        4: lambda v, j: j[J["left_hip"], 0] - j[J["right_hip"], 0],
        5: lambda v, j: v[np.abs(v[:, 1] + 0.07) < 0.03, 2].max(),
        6: lambda v, j: np.linalg.norm(j[J["left_wrist"]] - j[J["left_shoulder"]]),
        7: lambda v, j: v[:, 1].max() - j[J["neck"], 1],
        8: lambda v, j: np.ptp(
            v[(np.abs(v[:, 1] - (j[J["left_hip"], 1] + j[J["left_knee"], 1]) / 2) < 0.02) & (v[:, 0] > 0.02), 0]),
        9: lambda v, j: chest(v, 2),
    }
    ranges = {  # plausible change per +1 beta (metres, or ratio for volume)
        0: (0.045, 0.08), 1: (0.05, 0.3), 2: (0.03, 0.07), 3: (0.02, 0.06), 4: (0.008, 0.05),
        5: (0.015, 0.05), 6: (0.02, 0.06), 7: (0.01, 0.03), 8: (0.008, 0.04), 9: (0.01, 0.05),
    }
    for k, measure in measures.items():
        base = measure(v0, j0)
        vp, jp = shaped(model, k, 1.0)
        vm, jm = shaped(model, k, -1.0)
        up, down = measure(vp, jp) - base, base - measure(vm, jm)
        lo, hi = ranges[k]
        assert lo < up < hi and lo < down < hi, f"beta {k} ({mannequin.SHAPE_NAMES[k]}): +{up:.4f} / -{down:.4f}"
        # Every shape keeps the body symmetric and standing on the floor.
        np.testing.assert_allclose(vp[model.mirror_vertex_index] * (-1, 1, 1), vp, atol=1e-5)
        assert abs(vp[:, 1].min() - v0[:, 1].min()) < 2e-3, f"beta {k} lifts the soles"


# ----------------------------------------------------------------------------------- deformation


def section_area(v: np.ndarray, x: float) -> float:
    """Area of the convex hull of the body's cross-section near the plane at ``x``."""
    band = np.abs(v[:, 0] - x) < 0.006
    return ConvexHull(v[band][:, 1:]).volume


@pytest.mark.parametrize("joint", ["left_wrist", "left_elbow", "right_shoulder"])
def test_twist_does_not_collapse_the_joint(model, joint):
    """Plain LBS keeps 50% of a 50/50-blended section at 90 degrees of twist and 15% at 135."""
    j = model.rest_joints()
    x = j[J[joint], 0]
    for angle, keep in ((np.pi / 2, 0.85), (0.75 * np.pi, 0.35)):
        pose = np.zeros((1, NUM_JOINTS, 3), np.float32)
        pose[0, J[joint]] = (angle, 0.0, 0.0)  # about the arm's axis
        v, _ = model.forward(pose, np.zeros(10, np.float32), np.zeros((1, 3), np.float32))
        for dx in (-0.03, -0.02, -0.01, 0.0, 0.01, 0.02, 0.03):
            ratio = section_area(v[0], x + dx) / section_area(model.v_template, x + dx)
            assert ratio > keep, f"{joint} twisted {np.degrees(angle):.0f} deg: section at {dx:+.2f} m keeps {ratio:.2f}"


def test_bending_keeps_the_surface_closed_and_the_volume(model):
    pose = np.zeros((1, NUM_JOINTS, 3), np.float32)
    for side, s in (("left", 1.0), ("right", -1.0)):
        pose[0, J[f"{side}_elbow"]] = (0.0, -s * np.pi / 2, 0.0)
        pose[0, J[f"{side}_knee"]] = (np.pi / 2, 0.0, 0.0)
        pose[0, J[f"{side}_hip"]] = (-np.pi / 3, 0.0, 0.0)
        pose[0, J[f"{side}_shoulder"]] = (0.0, 0.0, -s * 1.2)
    v, _ = model.forward(pose, np.zeros(10, np.float32), np.zeros((1, 3), np.float32))
    rest_volume = trimesh.Trimesh(model.v_template, model.faces, process=False).volume
    volume = trimesh.Trimesh(v[0], model.faces, process=False).volume
    assert 0.93 < volume / rest_volume < 1.05


# ------------------------------------------------------------------------------------ bad input


def test_bad_model_files_name_the_file_and_key(model, tmp_path):
    data = read_model_file(model.source)
    cases = {
        "missing.pkl": ({k: v for k, v in data.items() if k != "weights"}, "weights"),
        "shape.pkl": ({**data, "posedirs": data["posedirs"][:, :, :200]}, "posedirs"),
        "tree.pkl": ({**data, "kintree_table": data["kintree_table"][:, ::-1]}, "kintree_table"),
        "nan.pkl": ({**data, "v_template": data["v_template"] * np.nan}, "v_template"),
        "faces.pkl": ({**data, "f": data["f"] + 10**6}, "f"),
    }
    for name, (content, key) in cases.items():
        path = tmp_path / name
        path.write_bytes(pickle.dumps(content, protocol=4))
        with pytest.raises(BodyModelError, match=rf"{name}.*\b{key}\b"):
            load_body_model(path)


def test_foreign_objects_and_junk_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"v_template": Evil()}))
    with pytest.raises(BodyModelError, match="evil.pkl.*refuses"):
        load_body_model(path)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(BodyModelError, match="junk.pkl"):
        load_body_model(junk)
    with pytest.raises(BodyModelError, match="nowhere.pkl.*not found"):
        load_body_model(tmp_path / "nowhere.pkl")
    with pytest.raises(ValueError, match="mannequin"):
        load_body_model("smpl_neutral")


# -------------------------------------------------------------------------------------- meshing


def test_symmetric_meshing_of_a_simple_shape_and_its_errors():
    from btdm_engine.body import sdf as S
    from btdm_engine.body.meshing import MeshingError, mesh_symmetric_sdf

    def dumbbell(p):  # two balls joined by a bar, symmetric in x
        balls = np.minimum(np.linalg.norm(p - (0.3, 0, 0), axis=1), np.linalg.norm(p + (0.3, 0, 0), axis=1)) - 0.12
        return S.smooth_min(balls, S.round_cone(p, (-0.3, 0, 0), (0.3, 0, 0), 0.05, 0.05), 0.05)

    bounds = ((-0.5, 0.5), (-0.2, 0.2), (-0.2, 0.2))
    mesh = mesh_symmetric_sdf(dumbbell, bounds, 0.02)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.is_watertight and tm.is_volume and tm.body_count == 1
    np.testing.assert_array_equal(mesh.vertices[mesh.mirror] * (-1, 1, 1), mesh.vertices)
    assert np.abs(dumbbell(mesh.vertices)).max() < 1e-4  # vertices lie on the surface
    exact = 2 * (4 / 3) * np.pi * 0.12**3
    assert exact < tm.volume < exact + np.pi * 0.05**2 * 0.6
    with pytest.raises(MeshingError, match="2 connected components"):
        mesh_symmetric_sdf(
            lambda p: np.minimum(np.linalg.norm(p - (0.3, 0, 0), axis=1), np.linalg.norm(p + (0.3, 0, 0), axis=1)) - 0.1,
            bounds, 0.02)
    with pytest.raises(MeshingError, match="border"):
        mesh_symmetric_sdf(dumbbell, ((-0.35, 0.35), (-0.2, 0.2), (-0.2, 0.2)), 0.02)
