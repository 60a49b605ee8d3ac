"""``BodyModel``: an SMPL-layout model file and SMPL's linear blend skinning in torch.

The forward pass is SMPL's (Loper et al. 2015, section 3): shape blend shapes (eq. 8), joint
regression from the shaped template (eq. 10), pose blend shapes from the rotation matrices minus
identity (eq. 9), then linear blend skinning with world transforms along the kinematic tree
(eq. 2-4). It gives the same vertices as ``smplx.SMPL`` for the same file.

Model files are pickles in SMPL's layout. They are read with a restricted unpickler that builds
only numpy arrays, scipy sparse matrices and plain Python values; anything else (for example the
chumpy objects inside licensed SMPL files) is refused with a clear error.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from btdm_engine.body import exact
from btdm_engine.body.mannequin import mannequin_path
from btdm_engine.body.skeleton import NUM_BETAS, NUM_JOINTS, NUM_POSE_BASIS, PARENTS
from btdm_engine.errors import BtdmError

REQUIRED_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f")

# (module, name) pairs a model file may reference; numpy moved its core to numpy._core in 2.0.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
    ("scipy.sparse._csc", "csc_matrix"),
    ("scipy.sparse.csc", "csc_matrix"),
    ("scipy.sparse._csr", "csr_matrix"),
    ("scipy.sparse.csr", "csr_matrix"),
}


class BodyModelError(BtdmError, ValueError):
    """A model file is missing, unreadable or has a wrong key, shape or value."""


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def __init__(self, fh, path: Path):
        super().__init__(fh, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            hint = " (a licensed SMPL file with chumpy objects: load it with smplx)" if module.startswith("chumpy") else ""
            raise BodyModelError(f"{self._path}: refuses to load object {module}.{name}{hint}")
        return super().find_class(module, name)


def read_model_file(path: str | Path) -> dict:
    """Read an SMPL-layout pickle into a dict of plain values (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise BodyModelError(f"{path}: body model file not found")
    try:
        data = _ArraysOnlyUnpickler(io.BytesIO(path.read_bytes()), path).load()
    except BodyModelError:
        raise
    except Exception as exc:  # any unpickling failure means the file is not a model file
        raise BodyModelError(f"{path}: not a readable SMPL-layout model file ({exc})") from exc
    if not isinstance(data, dict):
        raise BodyModelError(f"{path}: model file holds a {type(data).__name__}, expected a dict")
    return data


def _dense(value) -> np.ndarray:
    return np.asarray(value.toarray() if hasattr(value, "toarray") else value)


class BodyModel:
    """An SMPL-compatible body: template, blend shapes, regressor and skinning weights.

    Attributes are numpy arrays: ``v_template (V,3)``, ``shapedirs (V,3,B)`` (B >= 10),
    ``posedirs (V,3,207)``, ``J_regressor (24,V)``, ``weights (V,24)`` (float32), ``parents (24,)``,
    ``faces (F,3)`` (int64), and ``mirror_vertex_index (V,)`` int64 where the file provides it
    (the mannequin does), else None.
    """

    def __init__(self, data: dict, name: str, source: Path | None = None):
        where = str(source) if source is not None else name
        missing = [k for k in REQUIRED_KEYS if k not in data]
        if missing:
            raise BodyModelError(f"{where}: missing key(s) {', '.join(missing)}")
        arrays = {}
        for key in REQUIRED_KEYS:
            try:
                arrays[key] = _dense(data[key])
            except Exception as exc:
                raise BodyModelError(f"{where}: key {key} is not an array ({exc})") from exc
        v = arrays["v_template"]
        if v.ndim != 2 or v.shape[1] != 3 or len(v) < 4:
            raise BodyModelError(f"{where}: key v_template has shape {v.shape}, expected (V,3)")
        nv = len(v)
        expect = {
            "shapedirs": lambda s: len(s) == 3 and s[:2] == (nv, 3) and s[2] >= NUM_BETAS,
            "posedirs": lambda s: s == (nv, 3, NUM_POSE_BASIS),
            "J_regressor": lambda s: s == (NUM_JOINTS, nv),
            "weights": lambda s: s == (nv, NUM_JOINTS),
            "kintree_table": lambda s: s == (2, NUM_JOINTS),
            "f": lambda s: len(s) == 2 and s[1] == 3 and s[0] >= 4,
        }
        wanted = {
            "shapedirs": f"({nv},3,>={NUM_BETAS})", "posedirs": f"({nv},3,{NUM_POSE_BASIS})",
            "J_regressor": f"({NUM_JOINTS},{nv})", "weights": f"({nv},{NUM_JOINTS})",
            "kintree_table": f"(2,{NUM_JOINTS})", "f": "(F,3)",
        }
        for key, ok in expect.items():
            if not ok(tuple(arrays[key].shape)):
                raise BodyModelError(
                    f"{where}: key {key} has shape {tuple(arrays[key].shape)}, expected {wanted[key]}"
                )
        for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
            if not np.issubdtype(arrays[key].dtype, np.number) or not np.isfinite(arrays[key]).all():
                raise BodyModelError(f"{where}: key {key} has non-numeric or non-finite values")
        faces = arrays["f"].astype(np.int64)
        if faces.min() < 0 or faces.max() >= nv:
            raise BodyModelError(f"{where}: key f indexes vertices outside 0..{nv - 1}")
        parents = arrays["kintree_table"][0].astype(np.int64)
        parents[0] = -1
        if tuple(parents.tolist()) != PARENTS:
            raise BodyModelError(f"{where}: key kintree_table is not SMPL's kinematic tree")
        weights = arrays["weights"]
        if (weights < -1e-6).any() or np.abs(weights.sum(1) - 1.0).max() > 1e-3:
            raise BodyModelError(f"{where}: key weights must be non-negative rows summing to 1")

        self.name = name
        self.source = source
        self.v_template = v.astype(np.float32)
        self.shapedirs = arrays["shapedirs"].astype(np.float32)
        self.posedirs = arrays["posedirs"].astype(np.float32)
        self.J_regressor = arrays["J_regressor"].astype(np.float32)
        self.weights = weights.astype(np.float32)
        self.parents = parents
        self.faces = faces
        mirror = data.get("mirror_vertex_index")
        if mirror is not None:
            mirror = np.asarray(mirror, dtype=np.int64)
            if mirror.shape != (nv,) or mirror.min() < 0 or mirror.max() >= nv:
                raise BodyModelError(f"{where}: key mirror_vertex_index must be ({nv},) vertex indices")
        self.mirror_vertex_index = mirror
        self._torch_cache: dict[tuple, dict[str, torch.Tensor]] = {}

    @property
    def num_vertices(self) -> int:
        return len(self.v_template)

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[2]

    def __repr__(self) -> str:
        return f"BodyModel(name={self.name!r}, V={self.num_vertices}, F={len(self.faces)})"

    # ---------------------------------------------------------------------------------------

    def _buffers(self, device: torch.device) -> dict[str, torch.Tensor]:
        key = (device.type, device.index)
        if key not in self._torch_cache:
            self._torch_cache[key] = {
                name: torch.from_numpy(getattr(self, name)).to(device)
                for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights")
            }
        return self._torch_cache[key]

    def rest_joints(self, betas: np.ndarray | None = None) -> np.ndarray:
        """Rest-pose joint positions (24,3) float32 for shape ``betas`` (zeros by default).

        Computed in float64 in a fixed order and rounded once (:mod:`btdm_engine.body.exact`): a
        float32 ``J_regressor @ vertices`` sums over every vertex in BLAS, whose threads changed the
        last bits, and with them the root translation a synthetic clip stores.
        """
        b = np.zeros(NUM_BETAS, np.float32) if betas is None else np.asarray(betas, np.float32)
        b = self._check_betas(b, 1)[0]
        return exact.rest_joints(self, b).astype(np.float32)

    def _check_betas(self, betas, frames: int):
        if betas.ndim == 1:
            betas = betas[None].expand(frames, -1) if torch.is_tensor(betas) else np.broadcast_to(betas, (frames, len(betas)))
        if betas.ndim != 2 or betas.shape[0] != frames or not (1 <= betas.shape[1] <= self.num_betas):
            raise ValueError(
                f"betas has shape {tuple(betas.shape)}, expected (K,) or ({frames},K) with K <= {self.num_betas}"
            )
        return betas

    def forward(self, poses, betas, trans):
        """SMPL linear blend skinning, batched over frames.

        poses (T,24,3) axis-angle (joint 0 = global orientation), betas (K,) or (T,K) with
        K <= num_betas, trans (T,3). Returns (vertices (T,V,3), joints (T,24,3)) float32: numpy
        in gives numpy out, torch in gives torch out (on the input's device, differentiable).
        """
        as_numpy = not torch.is_tensor(poses)
        if as_numpy:
            poses = torch.as_tensor(np.asarray(poses, dtype=np.float32))
            betas = torch.as_tensor(np.asarray(betas, dtype=np.float32))
            trans = torch.as_tensor(np.asarray(trans, dtype=np.float32))
        if poses.ndim != 3 or poses.shape[1:] != (NUM_JOINTS, 3):
            raise ValueError(f"poses has shape {tuple(poses.shape)}, expected (T,{NUM_JOINTS},3)")
        frames = poses.shape[0]
        if tuple(trans.shape) != (frames, 3):
            raise ValueError(f"trans has shape {tuple(trans.shape)}, expected ({frames},3)")
        betas = self._check_betas(betas, frames)
        buf = self._buffers(poses.device)
        verts, joints = lbs(
            poses.float(), betas.float(), trans.float(), buf["v_template"], buf["shapedirs"],
            buf["posedirs"], buf["J_regressor"], buf["weights"], self.parents,
        )
        if as_numpy:
            return verts.numpy(), joints.numpy()
        return verts, joints

    __call__ = forward


def axis_angle_to_matrix(aa: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula (..., 3) -> (..., 3, 3), exact at zero angle."""
    theta2 = (aa * aa).sum(-1, keepdim=True)
    theta = torch.sqrt(theta2.clamp_min(1e-24))
    small = theta2 < 1e-12
    # sin(t)/t and (1-cos t)/t^2 with their Taylor limits near zero.
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    x, y, z = aa.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*aa.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


def lbs(poses, betas, trans, v_template, shapedirs, posedirs, J_regressor, weights, parents):
    """SMPL's forward pass on torch tensors; see the module docstring for the equations."""
    frames = poses.shape[0]
    # 1. Shape blend shapes (SMPL eq. 8) and joint regression (eq. 10).
    v_shaped = v_template + torch.einsum("vck,tk->tvc", shapedirs[:, :, : betas.shape[1]], betas)
    joints = torch.einsum("jv,tvc->tjc", J_regressor, v_shaped)
    # 2. Pose blend shapes from R - I of the 23 non-root joints (eq. 9).
    rot = axis_angle_to_matrix(poses)  # (T,24,3,3)
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    pose_feature = rearrange(rot[:, 1:] - eye, "t j a b -> t (j a b)")
    v_posed = v_shaped + torch.einsum("tp,vcp->tvc", pose_feature, posedirs)
    # 3. World transforms along the kinematic tree (eq. 3-4).
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, list(parents[1:])]
    local = torch.cat([rot, rel[..., None]], dim=-1)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=rot.dtype, device=rot.device).expand(frames, NUM_JOINTS, 1, 4)
    local = torch.cat([local, bottom], dim=-2)  # (T,24,4,4)
    chain = [local[:, 0]]
    for j in range(1, NUM_JOINTS):
        chain.append(chain[parents[j]] @ local[:, j])
    world = torch.stack(chain, dim=1)
    posed_joints = world[..., :3, 3]
    # 4. Skinning transforms remove the rest joint position, then blend per vertex (eq. 2).
    skin = world.clone()
    skin[..., :3, 3] = world[..., :3, 3] - torch.einsum("tjab,tjb->tja", world[..., :3, :3], joints)
    blend = torch.einsum("vj,tjab->tvab", weights, skin)
    verts = torch.einsum("tvab,tvb->tva", blend[..., :3, :3], v_posed) + blend[..., :3, 3]
    return verts + trans[:, None], posed_joints + trans[:, None]


def load_body_model(name_or_path: str | Path = "mannequin") -> BodyModel:
    """Load a body model: ``"mannequin"`` (built and cached on first use) or an SMPL-layout file.

    Models are kept in memory per file (keyed by path, size and modification time), because
    reading a model file takes seconds and every stage of the pipeline asks for the body. The
    returned model is shared: treat its arrays as read-only.
    """
    if isinstance(name_or_path, str) and name_or_path == "mannequin":
        path, name = mannequin_path(), "mannequin"
    else:
        path = Path(name_or_path)
        if isinstance(name_or_path, str) and not path.suffix and not path.exists():
            raise BodyModelError(f"unknown body model {name_or_path!r}: use 'mannequin' or a path to a .pkl model file")
        name = path.stem
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise BodyModelError(f"{path}: body model file not found") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, name)
    model = _MODEL_CACHE.get(key)
    if model is None:
        model = BodyModel(read_model_file(path), name=name, source=path)
        if len(_MODEL_CACHE) >= 4:
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = model
    return model


_MODEL_CACHE: dict[tuple, BodyModel] = {}


def smplx_kwargs(model: BodyModel) -> dict:
    """Keyword arguments for ``smplx.SMPL(model_path=..., **smplx_kwargs(model))``.

    smplx appends extra keypoints at fixed SMPL-H vertex ids (up to 6787); for a body whose
    vertex ids mean something else those are not meaningful, so this selects only the five face
    keypoints, placed on the nearest vertices to SMPL-like spots of this body, and turns the hand
    and foot keypoints off. Its first 24 output joints are SMPL's joints either way.
    """
    v = model.v_template
    j = model.rest_joints()
    head = j[15]
    spots = {
        "nose": head + (0.0, 0.08, 0.2),
        "reye": head + (-0.035, 0.11, 0.2),
        "leye": head + (0.035, 0.11, 0.2),
        "rear": head + (-0.2, 0.09, -0.02),
        "lear": head + (0.2, 0.09, -0.02),
    }
    ids = {k: int(np.argmin(np.linalg.norm(v - p, axis=1))) for k, p in spots.items()}
    return {"vertex_ids": ids, "use_hands": False, "use_feet_keypoints": False, "num_betas": min(model.num_betas, NUM_BETAS)}
