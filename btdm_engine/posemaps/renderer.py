"""IUV pose-map renderer: the posed body mesh drawn with pyrender, one (I, U, V) per pixel.

How the pixels stay exact:

* The mesh is the atlas's seam-split mesh with per-vertex colour (I/255, U, V): every face's
  three vertices share its part, so interpolation keeps I exact inside the face.
* pyrender's colour passes render into a 4x multisampled framebuffer, whose resolve would blend
  labels across part edges and into the background. Its segmentation pass (``RenderFlags.SEG``)
  disables multisampling, lighting and blending; we run that pass with our own two shaders
  (``shaders/segmentation.*``) that output the interpolated vertex colour instead of a flat
  per-node colour. Nothing applies gamma: 8-bit read-back gives round(255 * value).
* The camera is OpenCV's pinhole model with pixel centres at integer coordinates. OpenGL puts
  pixel centres at half-integers, so the projection uses (cx + 0.5, cy + 0.5); the
  OpenCV -> OpenGL axis flip (y, z negated) is the mesh's model matrix.
"""

from __future__ import annotations

import os

# pyrender picks its GL platform at import time: headless EGL unless the user chose otherwise.
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyrender
from OpenGL import GL
from pyrender.shader_program import ShaderProgramCache
from tqdm import tqdm

from btdm_engine.errors import BtdmError
from btdm_engine.posemaps.atlas import Atlas, build_atlas


class RendererError(BtdmError, ValueError):
    """The renderer cannot draw this: a size over its limit, a bad camera or vertices."""

if TYPE_CHECKING:
    from btdm_engine.body.model import BodyModel
    from btdm_engine.motion.clip import MotionClip

SHADER_DIR = Path(__file__).resolve().parent / "shaders"

# OpenCV camera axes (x right, y down, z forward) -> OpenGL camera axes (y up, looking down -z).
_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


class OpenCVCamera(pyrender.Camera):
    """A pyrender camera with OpenCV intrinsics (skew included), pixel-exact.

    Args:
        K: ``(3, 3)`` intrinsics; pixel centres at integer coordinates.
        width, height: image size in pixels.
        znear, zfar: clipping distances in metres.
    """

    def __init__(self, K: np.ndarray, width: int, height: int, znear: float, zfar: float):
        super().__init__(znear=znear, zfar=zfar)
        self.K = np.asarray(K, dtype=np.float64)
        self.width, self.height = int(width), int(height)

    def get_projection_matrix(self, width: int | None = None, height: int | None = None):
        (fx, s, cx), (_, fy, cy) = self.K[0], self.K[1]
        w, h = self.width, self.height
        n, f = self.znear, self.zfar
        P = np.zeros((4, 4))
        # x_ndc = 2 (u + 1/2) / w - 1 with u = (fx x + s y) / z + cx in OpenCV camera axes,
        # rewritten for OpenGL camera axes (y_gl = -y, z_gl = -z) and w_clip = -z_gl.
        P[0] = [2 * fx / w, -2 * s / w, 1 - 2 * (cx + 0.5) / w, 0]
        P[1] = [0, 2 * fy / h, 2 * (cy + 0.5) / h - 1, 0]
        P[2] = [0, 0, (f + n) / (n - f), 2 * f * n / (n - f)]
        P[3] = [0, 0, -1, 0]
        return P


def _keep_shared_egl_display(gl: pyrender.OffscreenRenderer) -> None:
    """Make deleting this renderer destroy only its own EGL context.

    pyrender's ``EGLPlatform.delete_context`` calls ``eglTerminate`` on the process-wide default
    display, which invalidates every other live EGL context (other renderers, other threads).
    The display stays initialised until the process exits instead.
    """
    from pyrender.platforms.egl import EGLPlatform  # lazy: EGL's library is loaded only where EGL is the platform

    platform = gl._platform
    if not isinstance(platform, EGLPlatform):
        return

    def delete_context() -> None:
        from OpenGL import EGL  # lazy: as EGLPlatform above

        if platform._egl_display is not None and platform._egl_context is not None:
            EGL.eglMakeCurrent(platform._egl_display, EGL.EGL_NO_SURFACE, EGL.EGL_NO_SURFACE,
                               EGL.EGL_NO_CONTEXT)
            EGL.eglDestroyContext(platform._egl_display, platform._egl_context)
        platform._egl_context = None
        platform._egl_display = None

    platform.delete_context = delete_context


def _check_camera(K: np.ndarray, world_to_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    K = np.asarray(K, dtype=np.float64)
    world_to_cam = np.asarray(world_to_cam, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise RendererError(f"K: expected a finite (3, 3) matrix, got shape {K.shape}")
    if K[1, 0] != 0 or not np.allclose(K[2], [0, 0, 1]) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise RendererError(f"K: not a pinhole intrinsics matrix: {K.tolist()}")
    if world_to_cam.shape != (4, 4) or not np.all(np.isfinite(world_to_cam)):
        raise RendererError(f"world_to_cam: expected a finite (4, 4) matrix, got {world_to_cam.shape}")
    if not np.allclose(world_to_cam[3], [0, 0, 0, 1]):
        raise RendererError("world_to_cam: last row must be (0, 0, 0, 1)")
    return K, world_to_cam


# Largest offscreen framebuffer side we allow (OpenGL drivers commonly cap at 8192 or 16384).
MAX_SIZE = 8192


class IUVRenderer:
    """Renders DensePose-style IUV pose maps of a body model.

    Args:
        body: the body model (``forward``, ``v_template``, ``faces``, ...).
        width, height: output size in pixels for :meth:`render`.
        atlas: the IUV atlas; by default :func:`~btdm_engine.posemaps.atlas.build_atlas(body)`.
        chunk_size: frames skinned per ``body.forward`` call in :meth:`render_clip`.
        prefetch: in :meth:`render_clip`, skin the next chunk on a worker thread while the
            current one renders.

    Faces must be wound counter-clockwise seen from outside (SMPL's convention): pyrender's
    segmentation pass culls back faces. Use as a context manager, or call :meth:`close` to free
    the GL context.
    """

    def __init__(
        self,
        body: BodyModel,
        width: int,
        height: int,
        atlas: Atlas | None = None,
        chunk_size: int = 64,
        prefetch: bool = True,
    ):
        if int(width) < 1 or int(height) < 1:
            raise RendererError(f"renderer size must be positive, got {width}x{height}")
        if max(int(width), int(height)) > MAX_SIZE:
            raise RendererError(
                f"renderer size {width}x{height} is larger than the {MAX_SIZE} px the offscreen renderer supports")
        if int(chunk_size) < 1:
            raise RendererError(f"chunk_size must be positive, got {chunk_size}")
        self.body = body
        self.num_body_vertices = int(np.asarray(body.v_template).shape[0])
        self.atlas = (atlas if atlas is not None else build_atlas(body)).validate(
            self.num_body_vertices
        )
        self.chunk_size = int(chunk_size)
        self.prefetch = bool(prefetch)
        self.width, self.height = int(width), int(height)

        # Interleaved vertex buffer as pyrender lays it out: position (3) then colour (4).
        self._buffer = np.zeros((self.atlas.num_vertices, 7), dtype=np.float32)
        self._buffer[:, 3:] = self.atlas.vertex_colors()
        template = np.asarray(body.v_template, dtype=np.float32)
        self._buffer[:, :3] = template[self.atlas.vertex_index]
        self._primitive = pyrender.Primitive(
            positions=self._buffer[:, :3].copy(),
            color_0=self._buffer[:, 3:].copy(),
            indices=self.atlas.faces.astype(np.uint32),
            mode=pyrender.GLTF.TRIANGLES,
        )
        self._scene = pyrender.Scene(bg_color=np.zeros(4), ambient_light=np.zeros(3))
        self._mesh_node = self._scene.add(pyrender.Mesh([self._primitive]))
        self._camera = OpenCVCamera(np.eye(3), self.width, self.height, 0.01, 100.0)
        self._scene.add(self._camera, pose=np.eye(4))
        self._seg_map = {self._mesh_node: 0}
        self._gl: pyrender.OffscreenRenderer | None = pyrender.OffscreenRenderer(
            self.width, self.height
        )
        # Route pyrender's segmentation pass to our IUV shaders (see the module docstring).
        self._gl._renderer._program_cache = ShaderProgramCache(shader_dir=str(SHADER_DIR))
        _keep_shared_egl_display(self._gl)
        self._uploaded = False

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Free the OpenGL context and buffers; the renderer cannot be used afterwards."""
        if self._gl is not None:
            self._gl.delete()
            self._gl = None

    def __enter__(self) -> IUVRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- rendering --------------------------------------------------------------------------

    def _upload(self, vertices: np.ndarray) -> None:
        """Replace the vertex positions in the existing GL buffer (no scene or mesh rebuild)."""
        self._buffer[:, :3] = vertices[self.atlas.vertex_index]
        if not self._uploaded:
            # First frame: pyrender creates the buffers from the primitive during render().
            self._primitive.positions = self._buffer[:, :3].copy()
            return
        assert self._gl is not None
        self._gl._platform.make_current()
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, self._primitive._buffers[0])
        GL.glBufferSubData(GL.GL_ARRAY_BUFFER, 0, self._buffer.nbytes, self._buffer)
        GL.glBindBuffer(GL.GL_ARRAY_BUFFER, 0)

    def render(self, vertices: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray) -> np.ndarray:
        """Render one IUV map.

        Args:
            vertices: ``(V, 3)`` posed body vertices in world coordinates (metres).
            K: ``(3, 3)`` OpenCV intrinsics for this renderer's ``width`` x ``height``.
            world_to_cam: ``(4, 4)`` world -> OpenCV camera transform.

        Returns:
            uint8 ``(height, width, 3)``: (I, round(255 U), round(255 V)); background 0.
        """
        if self._gl is None:
            raise RuntimeError("IUVRenderer is closed")
        vertices = np.asarray(vertices, dtype=np.float32)
        if vertices.shape != (self.num_body_vertices, 3):
            raise RendererError(
                f"vertices: expected ({self.num_body_vertices}, 3), got {vertices.shape}"
            )
        if not np.all(np.isfinite(vertices)):
            raise RendererError("vertices: non-finite values")
        K, world_to_cam = _check_camera(K, world_to_cam)

        depth = vertices @ world_to_cam[2, :3] + world_to_cam[2, 3]
        visible = depth[depth > 0]
        if visible.size == 0:
            return np.zeros((self.height, self.width, 3), dtype=np.uint8)
        # Tight clipping range around the body: depth precision where it matters.
        self._camera.znear = max(0.5 * float(visible.min()), 1e-4)
        self._camera.zfar = 2.0 * float(visible.max()) + 1e-3
        self._camera.K = K
        self._camera.width, self._camera.height = self.width, self.height

        self._upload(vertices)
        self._scene.set_pose(self._mesh_node, _CV_TO_GL @ world_to_cam)
        color, _ = self._gl.render(
            self._scene, flags=pyrender.RenderFlags.SEG, seg_node_map=self._seg_map
        )
        self._uploaded = True
        return np.ascontiguousarray(color[..., :3])

    def _resize(self, width: int, height: int) -> None:
        assert self._gl is not None
        self.width, self.height = int(width), int(height)
        self._gl.viewport_width, self._gl.viewport_height = self.width, self.height

    def render_clip(
        self,
        clip: MotionClip,
        size: int | None = None,
        progress: bool = True,
        frames: Sequence[int] | None = None,
    ) -> Iterator[np.ndarray]:
        """Render the IUV maps of a motion clip, frame by frame.

        Skinning runs through ``body.forward`` in chunks of ``chunk_size`` frames; each frame
        then only replaces the vertex buffer and the camera.

        Args:
            clip: the motion clip (poses, trans, betas, per-frame camera).
            size: render at ``size`` x ``size`` by rescaling the clip's camera
                (``clip.resized``); by default the clip's own width and height.
            progress: show a tqdm progress bar.
            frames: frame indices to render (default: all, in order).

        Yields:
            uint8 ``(H, W, 3)`` IUV maps, one per requested frame.
        """
        if size is not None:
            if int(size) < 1:
                raise RendererError(f"size must be positive, got {size}")
            clip = clip.resized(int(size), int(size))
        num_frames = int(np.asarray(clip.poses).shape[0])
        index = np.arange(num_frames) if frames is None else np.asarray(frames, dtype=np.int64)
        if index.ndim != 1 or (index.size and (index.min() < 0 or index.max() >= num_frames)):
            raise RendererError(f"frames: indices must lie in 0..{num_frames - 1}")
        previous = (self.width, self.height)
        self._resize(int(clip.width), int(clip.height))
        poses = np.asarray(clip.poses, dtype=np.float32)
        trans = np.asarray(clip.trans, dtype=np.float32)
        betas = np.asarray(clip.betas, dtype=np.float32)
        K = np.asarray(clip.K)
        world_to_cam = np.asarray(clip.world_to_cam)
        bar = tqdm(total=int(index.size), unit="frame", desc="pose maps", disable=not progress)
        # Skinning runs on blocks aligned to the clip's frame numbers (frames b*chunk_size ...
        # (b+1)*chunk_size - 1), whichever frames are asked for: batched matmuls round
        # differently for different batch shapes, and a resumed export must redraw a frame
        # bit for bit as the first run drew it.
        block_of = index // self.chunk_size
        cuts = np.flatnonzero(np.diff(block_of)) + 1
        chunks = np.split(index, cuts) if index.size else []

        def skin(chunk: np.ndarray) -> np.ndarray:
            start = int(chunk[0]) // self.chunk_size * self.chunk_size
            block = np.arange(start, min(start + self.chunk_size, num_frames))
            vertices, _ = self.body.forward(poses[block], betas, trans[block])
            return np.asarray(vertices)[chunk - start]

        # Skin the next chunk on a worker thread while this one renders: torch and the GL
        # driver both release the GIL, so the two overlap on a multi-core CPU.
        pool = ThreadPoolExecutor(max_workers=1) if self.prefetch else None
        try:
            pending = None
            for k, chunk in enumerate(chunks):
                vertices = pending.result() if pending is not None else skin(chunk)
                pending = None
                if pool is not None and k + 1 < len(chunks):
                    pending = pool.submit(skin, chunks[k + 1])
                for i, t in enumerate(chunk):
                    yield self.render(vertices[i], K[t], world_to_cam[t])
                    bar.update(1)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
            if self._gl is not None:
                self._resize(*previous)
