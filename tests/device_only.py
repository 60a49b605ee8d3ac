"""Run Python in a child that sees only the packages the GPU machine has (tests' helper).

The device machine (/work/.library/device/KINDS.md) has torch, numpy, opencv, einops, safetensors,
tensorboard and the like, but not the service stack (fastapi, pydantic, uvicorn), Blender (bpy),
pyrender or imageio-ffmpeg. The child runs ``python -S`` (no site-packages) with a folder of links
to just the allowed packages, so an import of anything else fails exactly as it would there.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# Import names of packages on the GPU machine's image that the project's GPU paths may reach.
DEVICE_PACKAGES = {
    "absl", "btdm_engine", "bench", "cv2", "einops", "filelock", "fsspec", "google", "grpc", "jinja2", "markupsafe",
    "mpmath", "networkx", "numpy", "packaging", "PIL", "safetensors", "scipy", "six", "sympy", "tensorboard",
    "tensorboard_data_server", "torch", "torchgen", "tqdm", "training", "triton", "typing_extensions", "werkzeug",
    "yaml", "_yaml", "markdown",
}  # fmt: skip
# Their distributions' folders beside them (metadata, bundled shared libraries).
DEVICE_DISTRIBUTIONS = {"absl_py", "grpcio", "opencv_python_headless", "pillow", "protobuf", "pyyaml", "numpy", "scipy"}


def device_only_python(code: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) in ``cwd`` with the standard library, the repository and DEVICE_PACKAGES only."""
    site = Path(np.__file__).resolve().parents[1]
    linked = cwd / "device_site"
    linked.mkdir(exist_ok=True)
    for entry in site.iterdir():
        stem = entry.name.split("-")[0].split(".")[0]
        if stem in DEVICE_PACKAGES | DEVICE_DISTRIBUTIONS and not (linked / entry.name).exists():
            (linked / entry.name).symlink_to(entry)
    env = {"PYTHONPATH": f"{REPO}:{linked}", "PATH": "/usr/bin:/bin", "HOME": str(cwd), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)  # fmt: skip
