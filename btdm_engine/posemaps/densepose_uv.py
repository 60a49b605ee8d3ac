"""Reader for DensePose's ``UV_Processed.mat``: the official atlas for licensed SMPL bodies.

The file (from DensePose's ``fetch_densepose_data.sh``; licensed together with SMPL) describes a
seam-split copy of SMPL's 6890-vertex mesh:

* ``All_FaceIndices (F, 1)``: part 1..24 of each face;
* ``All_Faces (F, 3)``: 1-based indices into the split vertices;
* ``All_U_norm (V', 1)``, ``All_V_norm (V', 1)``: chart coordinates in [0, 1];
* ``All_vertices (V', 1)``: 1-based index of each split vertex into SMPL's vertices.

It is read into the same :class:`~btdm_engine.posemaps.atlas.Atlas` as the procedural atlas, so
the renderer does not care where its atlas came from; :func:`load_atlas` picks one of the two.
Nothing is downloaded: users point to their own copy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from btdm_engine.posemaps.atlas import Atlas, AtlasError, build_atlas
from btdm_engine.posemaps.parts import NUM_PARTS

if TYPE_CHECKING:
    from btdm_engine.body.model import BodyModel

UV_PROCESSED_KEYS: tuple[str, ...] = (
    "All_FaceIndices",
    "All_Faces",
    "All_U_norm",
    "All_V_norm",
    "All_vertices",
)


def read_uv_processed(
    path: str | os.PathLike[str], num_body_vertices: int | None = None
) -> Atlas:
    """Read DensePose's ``UV_Processed.mat`` into an :class:`Atlas`.

    A split vertex used by faces of two parts (the official file has none) is split once more
    so that every face's vertices carry its own part; its U, V are kept as given.

    Args:
        path: the ``.mat`` file.
        num_body_vertices: number of vertices of the body it will drive (6890 for SMPL); when
            given, ``All_vertices`` is checked against it.

    Raises:
        FileNotFoundError: no such file.
        AtlasError: unreadable file, missing key, bad shape or out-of-range value; the message
            names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such UV_Processed.mat file")
    try:
        mat = scipy.io.loadmat(str(path))
    except (MatReadError, ValueError, TypeError, OSError, NotImplementedError) as exc:
        raise AtlasError(f"{path}: not a readable MATLAB .mat file ({exc})") from None

    def column(key: str, dtype: type) -> np.ndarray:
        if key not in mat:
            raise AtlasError(
                f"{path}: missing key {key!r} (expected {', '.join(UV_PROCESSED_KEYS)})"
            )
        value = np.asarray(mat[key])
        if value.ndim != 2 or value.shape[1] != 1:
            raise AtlasError(f"{path}: {key} must have shape (N, 1), got {value.shape}")
        if not np.all(np.isfinite(value)):
            raise AtlasError(f"{path}: {key} has non-finite values")
        return value[:, 0].astype(dtype)

    face_part = column("All_FaceIndices", np.int64)
    u = column("All_U_norm", np.float64)
    v = column("All_V_norm", np.float64)
    vertices = column("All_vertices", np.int64) - 1
    if "All_Faces" not in mat:
        raise AtlasError(
            f"{path}: missing key 'All_Faces' (expected {', '.join(UV_PROCESSED_KEYS)})"
        )
    faces = np.asarray(mat["All_Faces"])
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise AtlasError(f"{path}: All_Faces must have shape (F, 3), got {faces.shape}")
    faces = faces.astype(np.int64) - 1

    n_split = vertices.shape[0]
    if u.shape[0] != n_split or v.shape[0] != n_split:
        raise AtlasError(
            f"{path}: All_U_norm ({u.shape[0]}), All_V_norm ({v.shape[0]}) and All_vertices "
            f"({n_split}) must have one row per split vertex"
        )
    if face_part.shape[0] != faces.shape[0]:
        raise AtlasError(
            f"{path}: All_FaceIndices has {face_part.shape[0]} rows, All_Faces {faces.shape[0]}"
        )
    if face_part.size and (face_part.min() < 1 or face_part.max() > NUM_PARTS):
        raise AtlasError(f"{path}: All_FaceIndices values must lie in 1..{NUM_PARTS}")
    if faces.size and (faces.min() < 0 or faces.max() >= n_split):
        raise AtlasError(f"{path}: All_Faces must hold 1-based indices in 1..{n_split}")
    for key, value in (("All_U_norm", u), ("All_V_norm", v)):
        if value.size and (value.min() < 0.0 or value.max() > 1.0):
            raise AtlasError(f"{path}: {key} values must lie in [0, 1]")
    if vertices.size and vertices.min() < 0:
        raise AtlasError(f"{path}: All_vertices must hold 1-based indices (found 0 or less)")
    if num_body_vertices is not None and vertices.size and vertices.max() >= num_body_vertices:
        raise AtlasError(
            f"{path}: All_vertices reaches {int(vertices.max()) + 1}, the body has "
            f"{num_body_vertices} vertices (is this the atlas for this body model?)"
        )

    # One atlas vertex per (split vertex, part) pair used by a face.
    corner_key = faces * 32 + face_part[:, None]
    keys, inverse = np.unique(corner_key.ravel(), return_inverse=True)
    src = keys // 32
    atlas = Atlas(
        vertex_index=vertices[src],
        faces=inverse.reshape(faces.shape).astype(np.int64),
        part=(keys % 32).astype(np.uint8),
        uv=np.stack([u[src], v[src]], axis=1).astype(np.float32),
        source=str(path),
    )
    return atlas.validate(num_body_vertices)


def load_atlas(body: BodyModel, uv_processed_path: str | os.PathLike[str] | None = None) -> Atlas:
    """The atlas to render ``body`` with.

    Args:
        body: the body model.
        uv_processed_path: DensePose's ``UV_Processed.mat`` (for licensed SMPL bodies); when
            given it is read instead of building the procedural atlas
            (:func:`~btdm_engine.posemaps.atlas.build_atlas`).
    """
    if uv_processed_path is not None:
        n = int(np.asarray(body.v_template).shape[0])
        return read_uv_processed(uv_processed_path, num_body_vertices=n)
    return build_atlas(body)
