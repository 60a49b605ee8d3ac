"""The engine connection: a local ``btdm serve`` child process, or a remote engine by URL and token.

No bpy here: :class:`EngineManager` runs in worker threads (and in tests). The add-on keeps one
manager, :data:`MANAGER`; it starts a child at most once per session, on a free loopback port,
and stops it at unregister and when Blender's Python exits (``atexit``); a Blender that is killed
takes it along too (``btdm serve --parent-pid``).

The add-on's own files live in its user folder (``EngineSettings.user_dir``, see
``btdm_bridge/addon_home.py``): the ``btdm`` executable that ``btdm addon install`` recorded, the remote
token (mode 0600; never in the preferences), and the local engine's jobs and logs.

Environment overrides (for pipelines and ``btdm previs``): ``BTDM_ENGINE_URL`` (use that engine,
never start one), ``BTDM_ENGINE_TOKEN`` (or ``BTDM_TOKEN``), ``BTDM_EXECUTABLE`` (the ``btdm``
command), ``BTDM_ENGINE_DEVICE``. Without a preference or ``BTDM_EXECUTABLE``, the ``btdm`` that
``btdm addon install`` recorded in the user folder is started, else the one on ``PATH``.
"""

from __future__ import annotations

import atexit
import dataclasses
import ipaddress
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from ._bridge import load
from .engine_client import EngineClient, EngineError
from .words import panel_words

__all__ = ["DEFAULT_LOCAL_URL", "MANAGER", "TOKEN_VARIABLES", "EngineManager", "EngineSettings", "EngineStatus",
           "EngineUnavailable", "first_run_hint", "is_loopback"]

home = load("addon_home")
TOKEN_VARIABLES = ("BTDM_ENGINE_TOKEN", "BTDM_TOKEN")
"""Environment variables that give the remote token (the first one set wins over the stored token)."""

logger = logging.getLogger(__name__)

DEFAULT_LOCAL_URL = "http://127.0.0.1:8765"
START_TIMEOUT_S = 180.0


class EngineUnavailable(Exception):
    """No engine answers; the message says why, in words an animator can act on."""


@dataclass(frozen=True)
class EngineSettings:
    """Where the engine is, as plain data (the preferences, read on the main thread)."""

    mode: str = "LOCAL"  # LOCAL: use or start one here; REMOTE: the URL only
    local_url: str = DEFAULT_LOCAL_URL
    remote_url: str = ""
    token: str | None = field(default=None, repr=False)  # never in a log line
    executable: str = ""
    device: str = ""
    data_dir: str = ""
    timeout: float = 10.0
    # Blender's "Allow Online Access" (bpy.app.online_access): an engine off this machine needs it.
    online_access: bool = True
    # the add-on's user folder (config, token, the local engine's jobs and logs); "" when there is none
    user_dir: str = ""

    @classmethod
    def from_environment(cls, **values) -> EngineSettings:
        """The settings with the environment's overrides applied; the token: an environment variable
        (:data:`TOKEN_VARIABLES`), else the one given, else the one stored in the user folder."""
        settings = cls(**values)
        env = os.environ
        if env.get("BTDM_ENGINE_URL"):
            settings = dataclasses.replace(settings, mode="REMOTE", remote_url=env["BTDM_ENGINE_URL"])
        token = next((env[name] for name in TOKEN_VARIABLES if env.get(name)), None)
        if token is None and settings.token is None:
            token = home.read_token(settings.user_dir)
        if token is not None:
            settings = dataclasses.replace(settings, token=token)
        if env.get("BTDM_EXECUTABLE"):
            settings = dataclasses.replace(settings, executable=env["BTDM_EXECUTABLE"])
        if env.get("BTDM_ENGINE_DEVICE"):
            settings = dataclasses.replace(settings, device=env["BTDM_ENGINE_DEVICE"])
        return settings

    def find_executable(self) -> str | None:
        """The ``btdm`` to start: the preference, else ``btdm addon install``'s record, else the PATH's."""
        exe = self.executable or home.configured_executable(self.user_dir)
        if exe:
            return exe if os.path.isfile(exe) and os.access(exe, os.X_OK) else None
        return shutil.which("btdm")

    def executable_source(self) -> str:
        """Where :meth:`find_executable` takes the ``btdm`` command from, in words."""
        if self.executable:
            return "the btdm executable preference" if not os.environ.get("BTDM_EXECUTABLE") else "BTDM_EXECUTABLE"
        if home.configured_executable(self.user_dir):
            return "recorded by btdm addon install"
        return "found on PATH" if shutil.which("btdm") else ""

    def jobs_dir(self) -> str:
        """The local engine's job folder: the preference, else the user folder's ``engine/`` ("": the engine's own)."""
        if self.data_dir:
            return self.data_dir
        return os.path.join(self.user_dir, home.JOBS_DIR) if self.user_dir else ""


FIRST_RUN = ("the add-on does not know where the engine's `btdm` command is: set the btdm executable in the add-on's "
             "preferences (Edit > Preferences > Add-ons > BTDM Pre-vis; it is in the bin folder of the environment the "
             "engine is installed in), or start `btdm serve` on this machine (it is used at the Local URL), or set "
             "Engine to Remote")


def first_run_hint(settings: EngineSettings) -> str | None:
    """What to do when the add-on cannot start an engine (a local engine and no ``btdm`` known), else None."""
    if settings.mode != "LOCAL" or settings.find_executable() is not None:
        return None
    if settings.executable:
        return f"{settings.executable} is not an executable file: set the btdm executable in the add-on's preferences"
    return FIRST_RUN[:1].upper() + FIRST_RUN[1:]


@dataclass
class EngineStatus:
    """What the panel shows: connected or not, where, on what device, with which models, or why not."""

    connected: bool = False
    url: str = ""
    device: str = ""
    device_name: str = ""
    version: str = ""
    models: list[dict] = field(default_factory=list)
    reason: str = "not connected yet (press Connect, or Generate)"
    local_child: bool = False
    max_frames: int = 0  # the most frames one job may have on this engine (0: not known yet)
    # GET /v1/limits: {param: {"min", "max"}} a job may ask for on this engine ({}: not known, an older engine)
    job_limits: dict = field(default_factory=dict)
    checking: bool = False
    checked: float = 0.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def readable(exc: EngineError) -> str:
    """An engine error as one sentence for the UI, in the panel's words (:func:`.words.panel_words`)."""
    if exc.code == "unauthorized":
        return ("the engine refused the token: set the remote token in the add-on preferences (Set Token), "
                "or in BTDM_ENGINE_TOKEN")
    return panel_words(exc.message)


class EngineManager:
    """Finds, starts and stops the engine; thread-safe.

    ``_lock`` guards the child process and the status and is only ever held for a moment, so the
    main thread (the Stop button, unregister, quitting) never waits behind a connect, which can
    take minutes (a remote request, a local start). Connects are serialised by their own lock; a
    :meth:`stop` during a local start makes that start give up at its next poll.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._connect_lock = threading.Lock()
        self._abort = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._proc_url = ""
        self._log_path = ""
        self.status = EngineStatus()

    # -- status
    def _set(self, **values) -> None:
        with self._lock:
            self.status = dataclasses.replace(self.status, checked=time.time(), **values)

    def _fail(self, reason: str, url: str = "") -> EngineUnavailable:
        self._set(connected=False, reason=reason, url=url, checking=False)
        return EngineUnavailable(reason)

    def _offline_refusal(self, url: str, settings: EngineSettings) -> None:
        """Blender's online access is off and ``url`` is not on this machine: refuse before any request."""
        if not settings.online_access and not is_loopback(url):
            raise self._fail(f"Blender's online access is off and the engine at {url} is not on this machine: "
                             "turn on Allow Online Access (Preferences > System > Network) or use a local engine",
                             url)

    def _check(self, url: str, token: str | None, timeout: float) -> EngineClient:
        """Health and model list of the engine at ``url``; raises EngineError."""
        client = EngineClient(url, token=token, timeout=timeout)
        health = client.health()
        models = client.models()  # needs the token, so a wrong one shows here
        try:
            job_limits = client.limits()["limits"]
        except EngineError as exc:
            if exc.status != 404:  # an engine before /v1/limits: its request model still refuses what is out of range
                raise
            job_limits = {}
        with self._lock:
            child = self._proc is not None and self._proc_url == url
        self._set(connected=True, url=url, device=str(health.get("device", "")),
                  device_name=str(health.get("device_name", "")), version=str(health.get("version", "")),
                  models=models, reason="", checking=False, local_child=child,
                  max_frames=int(health.get("max_frames") or 0), job_limits=job_limits)
        return client

    # -- connecting
    def connect(self, settings: EngineSettings, start: bool = True) -> EngineClient:
        """A client for a live engine, starting the local one when needed (blocking: not on the main thread)."""
        with self._connect_lock:
            self._abort.clear()
            self._set(checking=True)
            try:
                return self._connect(settings, start)
            finally:
                if self.status.checking:  # an unexpected error: Connect must not stay disabled
                    self._set(checking=False)

    def _connect(self, settings: EngineSettings, start: bool) -> EngineClient:
        if settings.mode == "REMOTE":
            url = settings.remote_url.strip()
            if not url:
                raise self._fail("no remote engine URL: set one in the add-on preferences")
            self._offline_refusal(url, settings)
            try:
                return self._check(url, settings.token, settings.timeout)
            except EngineError as exc:
                reason = readable(exc) if exc.status is None else f"remote engine {url}: {readable(exc)}"
                raise self._fail(reason, url) from None
        self._offline_refusal(settings.local_url, settings)
        with self._lock:
            proc, proc_url = self._proc, self._proc_url
        if proc is not None and proc.poll() is None:
            try:
                return self._check(proc_url, None, settings.timeout)
            except EngineError:
                logger.warning("the local engine at %s stopped answering; restarting it", proc_url)
                self._stop_child(wait=True)
        try:
            return self._check(settings.local_url, settings.token, min(settings.timeout, 3.0))
        except EngineError as exc:
            if exc.status is not None or not start:
                reason = readable(exc) if exc.status is None else f"local engine {settings.local_url}: {readable(exc)}"
                raise self._fail(reason, settings.local_url) from None
        return self._start(settings)

    def _start(self, settings: EngineSettings) -> EngineClient:
        exe = settings.find_executable()
        if exe is None:
            if settings.executable:
                raise self._fail(f"no engine answers at {settings.local_url} and the `btdm` command was not found "
                                 f"({settings.executable} is not an executable file): set the btdm executable in the "
                                 "add-on's preferences, or start `btdm serve` yourself")
            raise self._fail(f"no engine answers at {settings.local_url} and {FIRST_RUN}")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # --parent-pid: the engine ends with this Blender however Blender ends (SIGKILL and crashes run no
        # atexit), cancelling its jobs and removing the running job's partial files, on every OS.
        cmd = [exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--parent-pid", str(os.getpid())]
        if settings.device:
            cmd += ["--device", settings.device]
        jobs = settings.jobs_dir()
        if jobs:
            cmd += ["--data", jobs]
        fd, self._log_path = self._log_file(settings)
        logger.info("starting the local engine: %s (log %s)", " ".join(cmd), self._log_path)
        self._set(reason=f"starting the local engine on port {port}...", url=url)
        with os.fdopen(fd, "wb") as log:
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except OSError as exc:
                raise self._fail(f"could not start {exe}: {exc.strerror or exc}") from None
        with self._lock:
            self._proc, self._proc_url = proc, url
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._abort.is_set():  # stop() was called meanwhile (it may have run before _proc was set)
                self._stop_child(wait=True)
                _terminate(proc)
                raise self._fail("the local engine was stopped while it was starting")
            if proc.poll() is not None:
                tail = self._log_tail()
                with self._lock:
                    if self._proc is proc:
                        self._proc, self._proc_url = None, ""
                raise self._fail(f"the local engine exited at start ({tail or 'no output'})")
            try:
                return self._check(url, None, settings.timeout)
            except EngineError:
                self._abort.wait(0.25)
        self._stop_child(wait=True)
        raise self._fail(f"the local engine did not answer within {START_TIMEOUT_S:.0f} s (log: {self._log_path})")

    @staticmethod
    def _log_file(settings: EngineSettings) -> tuple[int, str]:
        """An open file for the child's output: in the user folder's ``logs/`` (the newest few kept), else a temp file."""
        if settings.user_dir:
            try:
                path = home.new_log_path(settings.user_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
                return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), path
            except OSError as exc:
                logger.warning("cannot write the engine's log in %s (%s); using a temporary file", settings.user_dir,
                               exc)
        return tempfile.mkstemp(prefix="btdm-serve-", suffix=".log")

    def _log_tail(self) -> str:
        try:
            with open(self._log_path, encoding="utf-8", errors="replace") as fh:
                lines = [line.strip() for line in fh if line.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    # -- stopping
    def stop(self, wait: bool = True) -> None:
        """Stop the child this manager started (SIGTERM, then SIGKILL); an engine it did not start is left alone.

        A local start in progress gives up. ``wait=False`` (the Stop button) reaps the child in a
        background thread, so the UI does not wait for it to exit.
        """
        self._abort.set()
        self._stop_child(wait)

    def _stop_child(self, wait: bool) -> None:
        with self._lock:
            proc, url = self._proc, self._proc_url
            self._proc, self._proc_url = None, ""
            if proc is None:
                return
            if self.status.url == url:
                self._set(connected=False, local_child=False, reason="the local engine was stopped")
        if wait:
            _terminate(proc)
        else:
            threading.Thread(target=_terminate, args=(proc,), name="btdm-engine-stop", daemon=True).start()

    @property
    def child_pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    logger.info("stopped the local engine (pid %d)", proc.pid)


MANAGER = EngineManager()
atexit.register(MANAGER.stop)


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine's loopback (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = (urllib.parse.urlsplit(url.strip()).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
