"""Process plumbing: children die with their parent, stale temporaries are cleaned, freed memory is kept.

Every ``subprocess.Popen`` the project starts for long work (ffmpeg, the synthetic builder's shard
workers) passes ``preexec_fn=die_with_parent``: Linux then sends the child SIGKILL when the process
that started it dies, even by SIGKILL, so no orphan keeps writing into a folder a resumed run is
cleaning. Temporary names carry their writer's pid (``.NAME.<pid>.XXXX.tmp``), so
:func:`clean_stale_temps` removes exactly those whose writer is gone. :func:`keep_freed_memory`
stops glibc from handing every freed activation back to the kernel (the commands that run
networks call it first), :func:`release_freed_memory` hands it back when a job is done.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["clean_stale_temps", "die_with_parent", "keep_freed_memory", "pid_alive", "release_freed_memory",
           "stop_process"]

_PR_SET_PDEATHSIG = 1
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[^.]+(\.[A-Za-z0-9]+)*\.tmp(\.[A-Za-z0-9]+)?$")


def die_with_parent() -> None:
    """``preexec_fn`` for Popen: SIGKILL this child when its parent dies (Linux; a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(None)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse rather than return it to the kernel.

    torch allocates every activation afresh. By default glibc gives large freed blocks back to the
    kernel (``munmap``, heap trimming, and each thread's own arena trims its heaps), so the next
    network call page-faults the same megabytes in again: ``make demo``'s generation took between
    0.25 and 4 million page faults and up to 6 s of kernel time for 11-16 s of wall time, and 0.03
    million with this (bench/bench_cpu.py reports both side by side). After this call every
    thread allocates from the one main heap (a short lock per allocation, nothing beside a
    convolution), blocks under 32 MiB come from that heap, and the heap is never trimmed: it stays
    at its high-water mark until :func:`release_freed_memory`.
    Call it early, before the threads that will allocate exist. Linux with glibc only; returns
    whether it took effect.
    """
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_ARENA_MAX, 1) and libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    return bool(ok and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory() -> None:
    """Hand the heap's free memory back to the kernel (``malloc_trim``), e.g. after a job; a no-op
    without glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


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
    import ray  # lazy: optional (the ray extra)

    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return True
