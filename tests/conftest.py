"""Session-wide test setup shared by every test file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Headless OpenGL for pyrender, before any test imports it.
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One fresh BTDM cache per test session: the suite never depends on (or pollutes) the
    user's ~/.cache/btdm, and the mannequin is built once for all test files."""
    if "BTDM_TEST_USE_USER_CACHE" not in os.environ:
        os.environ["BTDM_CACHE_DIR"] = str(tmp_path_factory.mktemp("btdm-cache"))


@pytest.fixture(scope="session")
def body():
    """The mannequin body model (built once per session into the isolated cache; shared: read-only)."""
    from btdm_engine.body import load_body_model

    return load_body_model("mannequin")


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.2 s walk (6 frames at 30 fps) as a MotionClip ``.npz``, made once per session by ``btdm
    motion make`` as a user makes one (one thread, the session's cache); shared: read-only."""
    path = tmp_path_factory.mktemp("clips") / "walk.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    btdm = str(Path(sys.executable).with_name("btdm"))
    subprocess.run([btdm, "motion", "make", "walk", "--seconds", "0.2", "--fps", "30", "--out", str(path)],
                   cwd=Path(__file__).resolve().parents[1], env=env, check=True, capture_output=True)
    return path


@pytest.fixture()
def one_thread():
    """Run a test with one torch intra-op thread: two threads on a busy two-core machine run
    several times slower than one, and in-process results then match OMP_NUM_THREADS=1 subprocesses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """A real `btdm serve` on a loopback port for one add-on test file (``test_addon.Engine``); stopped after it."""
    from test_addon import Engine

    server = Engine(tmp_path_factory.mktemp(f"{request.module.__name__}-engine") / "data")
    yield server
    server.stop()
