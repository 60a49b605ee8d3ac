"""``btdm serve --parent-pid PID``: the server ends with the process that started it, on every OS.

The Blender add-on starts its engine as a child (``blender_addon/engine.py``) and passes its own
pid. When that process is gone, killed or not (SIGKILL and a crash run no ``atexit``), the server
cancels its jobs, removes the running job's partial files (its own job folder, nothing else), and
exits. :class:`ParentWatch` polls, because no single mechanism covers Linux, macOS and Windows
(``PR_SET_PDEATHSIG`` is Linux's only, and kills without cleaning):

- POSIX, started directly by the parent: ``os.getppid()`` changes once the parent dies (the child
  is re-parented), exact whatever happens to the pid afterwards.
- POSIX, started through a wrapper (a shell script as the ``btdm`` executable): the pid is probed
  with ``kill(pid, 0)``; a zombie counts as gone.
- Windows: a handle opened on the parent at start (``OpenProcess(SYNCHRONIZE)``) is signalled when
  it exits; holding it keeps the pid from being reused meanwhile.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from btdm_engine.procs import pid_alive

logger = logging.getLogger(__name__)

POLL_S = 1.0


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def parent_alive(pid: int) -> Callable[[], bool]:
    """A cheap check that process ``pid`` still runs; raises ValueError when it does not run now."""
    if sys.platform == "win32":
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        synchronize, wait_timeout = 0x00100000, 0x102
        handle = kernel32.OpenProcess(synchronize, False, pid)
        if not handle:
            raise ValueError(f"--parent-pid {pid}: no such process")
        return lambda: kernel32.WaitForSingleObject(handle, 0) == wait_timeout
    if not pid_alive(pid) or _zombie(pid):
        raise ValueError(f"--parent-pid {pid}: no such process")
    if os.getppid() == pid:
        return lambda: os.getppid() == pid
    return lambda: pid_alive(pid) and not _zombie(pid)


class ParentWatch:
    """Calls ``on_gone`` once, from its own daemon thread, when process ``pid`` has ended."""

    def __init__(self, pid: int, on_gone: Callable[[], None], poll_s: float = POLL_S) -> None:
        self.pid, self.on_gone, self.poll_s = pid, on_gone, poll_s
        self.alive = parent_alive(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="btdm-parent-watch", daemon=True)

    def start(self) -> ParentWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            if not self.alive():
                logger.warning("the process that started this server (pid %d) is gone: cancelling its jobs and "
                               "exiting", self.pid)
                self.on_gone()
                return


__all__ = ["ParentWatch", "parent_alive"]
