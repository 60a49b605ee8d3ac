"""Session-wide test setup shared by every test file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Headless OpenGL for pyrender, before any test imports it.
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

# `make test` runs the suite in one pytest-xdist worker per core. Each worker (and every subprocess it
# starts) then uses one thread: a worker's torch taking every core beside the others' makes the CPU work
# several times slower (measured: an overfitting test 4 s alone, 54 s with two 2-thread workers). This
# runs before any test module imports torch; results do not depend on thread counts.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One fresh BTDM cache per test session: the suite never depends on (or pollutes) the
    user's ~/.cache/btdm, and the mannequin is built once for all test files. The xdist workers of
    one run share it (their temporary folders' parent is the run's): its files are written
    atomically, so the first worker to build the mannequin builds it for the others."""
    if "BTDM_TEST_USE_USER_CACHE" not in os.environ:
        root = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            root = root.parent
        cache = root / "btdm-cache"
        cache.mkdir(exist_ok=True)
        os.environ["BTDM_CACHE_DIR"] = str(cache)


@pytest.fixture(scope="session")
def body():
    """The mannequin body model (built once per session into the isolated cache; shared: read-only)."""
    from btdm_engine.body import load_body_model

    return load_body_model("mannequin")


def _walk(path: Path, seconds: str) -> Path:
    from commandline import run_btdm

    run_btdm("motion", "make", "walk", "--seconds", seconds, "--fps", "30", "--out", path, check=True)
    return path


@pytest.fixture(scope="session")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.2 s walk (6 frames at 30 fps) as a MotionClip ``.npz``, made once per session by ``btdm
    motion make`` as a user makes one (in this process: ``commandline.run_btdm``); shared: read-only."""
    return _walk(tmp_path_factory.mktemp("clips") / "walk.npz", "0.2")


@pytest.fixture(scope="session")
def clip36_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1.2 s walk (36 frames at 30 fps), made like :func:`clip_file` (a ``btdm motion make`` costs
    seconds on a busy machine); for the jobs that must still run when a server is killed or stopped."""
    return _walk(tmp_path_factory.mktemp("clips") / "walk36.npz", "1.2")


@pytest.fixture()
def one_thread():
    """Run a test with one torch intra-op thread: two threads on a busy two-core machine run
    several times slower than one, and in-process results then match OMP_NUM_THREADS=1 subprocesses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory, toy_model: Path):
    """A real `btdm serve` on a loopback port (``test_addon.Engine``) for the add-on tests, started with the
    first that needs it and stopped at the end of the session: the add-on's tests share it as one artist's
    Blender sessions share their local engine (each test's jobs are its own; none reads the whole queue).
    It offers the embedded model (``default``) and the toy model as ``toy``."""
    from test_addon import Engine

    server = Engine(tmp_path_factory.mktemp("addon-engine") / "data", "--model", f"toy={toy_model}")
    yield server
    server.stop()


def _toy_model(root: Path, resolution: int, **sr3: object) -> Path:
    """A model folder like the embedded one but cheaper per frame: the embedded BTU-Net (tiny-warp,
    32 px, its trained weights and metadata: a single-image model with the texture-transfer prior)
    and a warp-conditioned residual SR3 32 px -> ``resolution`` px with perturbed untrained weights.
    It holds the embedded appearance image and its IUV map (``appearance.png``, ``appearance_iuv.png``)."""
    import shutil

    import torch

    from btdm_engine.checkpoints import save_checkpoint
    from btdm_engine.diffusion import ScheduleConfig
    from btdm_engine.models import SR3, SR3Config
    from btdm_engine.weights import default_model_dir
    from tests.test_pipeline import trained_like

    shutil.copytree(default_model_dir() / "btunet", root / "btunet")
    for name in ("appearance.png", "appearance_iuv.png"):
        shutil.copyfile(default_model_dir() / name, root / name)
    torch.manual_seed(0)
    config = SR3Config.preset("tiny-warp").replace(resolution=resolution, low_resolution=32, residual=True, **sr3)
    save_checkpoint(root / "sr3", trained_like(SR3(config), 2), "sr3", ScheduleConfig(),
                    extra={"task": "super_resolution", "sampling": {"sr_steps": 1}})
    return root


@pytest.fixture(scope="session")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64 px model folder (:func:`_toy_model`) for the tests of mechanics (resume, restarts, node loss,
    frames equal to ``btdm animate``'s) that do not depend on the model's size: several times cheaper
    per frame than the embedded 256 px one. Served as ``btdm serve --model toy=DIR``; shared: read-only."""
    return _toy_model(tmp_path_factory.mktemp("toy-model"), 64)


@pytest.fixture(scope="session")
def toy_model_256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 256 px model folder (:func:`_toy_model`) with a thin SR3 (8 channels): chunked by the CPU
    memory budget like the embedded model (4 frames per SR3 call), cheaper per frame; shared: read-only."""
    return _toy_model(tmp_path_factory.mktemp("toy-model-256"), 256, model_channels=8, channel_mult=(1, 1, 2, 2))
