"""Child processes die with their parent; temporary files of killed writers are cleaned next time.

Every ``subprocess.Popen`` the project starts for long work (ffmpeg, the synthetic builder's shard
workers) passes ``preexec_fn=die_with_parent``: Linux then sends the child SIGKILL when the process
that started it dies, even by SIGKILL, so no orphan keeps writing into a folder a resumed run is
cleaning. Temporary names carry their writer's pid (``.NAME.<pid>.XXXX.tmp``), so
:func:`clean_stale_temps` removes exactly those whose writer is gone.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["clean_stale_temps", "die_with_parent", "pid_alive", "stop_process"]

_PR_SET_PDEATHSIG = 1
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+(\.[A-Za-z0-9]+)*\.tmp(\.[A-Za-z0-9]+)?$")


def die_with_parent() -> None:
    """``preexec_fn`` for Popen: SIGKILL this child when its parent dies (Linux; a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """Stop a child: SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds; waits for it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (it may belong to another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove hidden ``.NAME.<pid>.XXXX.tmp[.ext]`` files in ``folder`` whose writer pid is dead; returns them."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        m = _TEMP_NAME.match(path.name)
        if m is None or not path.is_file():
            continue
        if int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def ray_connect(address: str) -> bool:
    """Join the Ray cluster at ``address`` ("local" starts one on this machine) unless already in one.

    Returns whether this call started the connection (the caller then shuts it down when done).
    """
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return True
