"""The threaded job runner: submit, follow, download, commit. No bpy here.

A :class:`PrevisRun` does all its HTTP in one worker thread (or, in background mode, in the
calling thread through :meth:`PrevisRun.run`), and exposes a thread-safe :meth:`snapshot` that
the main thread reads from ``bpy.app.timers`` to draw progress and, once :attr:`finished`, to put
the strip on the sequencer.

Files: frames are downloaded as the engine finishes them into a staging folder
``<out>/.btdm-<job id>/`` (each written to a temporary name, then renamed), and moved into
``<out>/`` only when the job has succeeded, named by scene frame (``NNNNNN.png``); stale frames
of an earlier, longer plate are removed. A cancelled or failed run deletes its staging folder, so
the folder never holds a half-written frame nor a mix of two runs; one that a killed Blender left
is removed by the next run in that folder once the engine says its job ended
(:func:`sweep_stale_staging`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field

from .engine import MANAGER, EngineSettings, EngineUnavailable, readable
from .engine_client import FINAL_STATES, EngineError
from .pngio import atomic_write_bytes
from .words import panel_words

__all__ = ["PrevisRun", "RunGroup", "RunRequest", "RunSnapshot"]

logger = logging.getLogger(__name__)

POLL_S = 0.25
CANCEL_WAIT_S = 30.0
RETRY_S = 120.0
"""How long a running job's polls and downloads retry an engine that stopped answering (a network
hiccup, a proxy restart) before the run fails; the job goes on on the engine meanwhile."""
_FRAME_FILE = re.compile(r"^\d{6}\.png$")
_STAGING_DIR = re.compile(r"^\.btdm-([0-9a-f]{32})$")
_TEMP_FILE = re.compile(r"^\.btdm\..+\.tmp$")


@dataclass
class RunRequest:
    """What one run sends and where it writes (built on the main thread from the scene)."""

    kind: str  # "plates" (generate) or "posemaps" (preview only: the job is cancelled once the maps exist)
    skeleton: bytes  # skeleton-animation .npz, with the shot camera when there is one
    params: dict
    out_dir: str  # absolute
    first_frame: int  # the scene frame of the job's frame 0
    num_frames: int
    settings: EngineSettings
    appearance: bytes | None = None
    appearance_iuv: bytes | None = None
    views: dict[int, bytes] = field(default_factory=dict)  # further views of the person, {job frame: PNG}
    skeleton_without_camera: bytes | None = None  # fallback for an engine without shot-camera plates
    posemaps_dir: str | None = None  # also keep the pose-map previews here (plates runs)
    shot: dict | None = None  # whose frames these are: {"blend": file name, "scene": ..., "camera": ...}
    adopt: tuple[str, ...] = ()  # folders whose unattributed frames this scene's strips show (see check_output_folder)
    notes: tuple[str, ...] = ()  # said with the result (a unit the armature was taken in, ...)
    take: bool = False  # out_dir is a new take_NNN folder of the shot's output folder (see takes.py)
    armature: str = ""  # the armature whose motion this is (its object name)
    character: str = ""  # one of several characters of a shot (RunGroup): its name ("" for a shot's only one)
    depths: tuple[float, ...] = ()  # per frame, the character's distance from the camera (layers.body_depths)


@dataclass(frozen=True)
class RunSnapshot:
    phase: str = "starting"  # starting, connecting, submitting, running, committing, succeeded, failed, cancelled
    job_id: str = ""
    stage: str = ""
    step: int = 0
    total: int = 0
    eta_s: float | None = None
    frames_done: int = 0  # downloaded
    frames_total: int = 0
    posemaps_done: int = 0
    has_plates: bool = False
    message: str = ""
    notes: tuple[str, ...] = ()
    retarget: dict | None = None
    model: str = ""
    label: str = ""  # which character of several the line is about ("" for one)

    @property
    def finished(self) -> bool:
        return self.phase in ("succeeded", "failed", "cancelled")

    def line(self) -> str:
        """One line of progress for the panel and the status bar."""
        if self.phase in ("connecting", "submitting", "committing", "starting"):
            return f"{self.phase}..."
        if self.finished:
            return self.message or self.phase
        eta = f", ETA {self.eta_s:.0f} s" if self.eta_s is not None else ""
        stage = f"{self.stage} {self.step}/{self.total}" if self.stage else "queued"
        label = f"{self.label}: " if self.label else ""
        return f"{label}{stage}, frames {self.frames_done}/{self.frames_total}{eta}"

    @property
    def fraction(self) -> float:
        if self.frames_total:
            return min(1.0, self.frames_done / self.frames_total)
        return 0.0


class RunCancelled(Exception):
    pass


class RunFailed(Exception):
    pass


class PrevisRun:
    """One pre-vis job from submit to committed files; see the module docstring."""

    def __init__(self, request: RunRequest) -> None:
        self.request = request
        self._lock = threading.Lock()
        self._snap = RunSnapshot(frames_total=request.num_frames, model=request.params.get("model", ""),
                                 notes=tuple(request.notes))
        self._cancel = threading.Event()
        self._hurry = threading.Event()  # cancelling: do not wait for the engine to confirm
        self._client = None  # the engine client, once connected
        self._thread: threading.Thread | None = None
        self.finalized = False  # set by the main thread once the strip is placed (or the failure reported)

    # -- main thread API
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="btdm-previs", daemon=True)
        self._thread.start()

    def cancel(self, wait: bool = True) -> None:
        """Stop the run: the job is cancelled on the engine, nothing is committed. ``wait=False`` (also after an
        earlier cancel) does not wait for the engine to confirm that the job stopped."""
        if not wait:
            self._hurry.set()
        self._cancel.set()

    def snapshot(self) -> RunSnapshot:
        with self._lock:
            return self._snap

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # -- worker
    def _update(self, **values) -> None:
        with self._lock:
            self._snap = dataclasses.replace(self._snap, **values)

    def run(self) -> RunSnapshot:
        """The whole run, blocking; never raises (the outcome is in the snapshot)."""
        try:
            self._run()
        except RunCancelled:
            self._update(phase="cancelled", message="cancelled: no plate was placed", eta_s=None)
        except RunFailed as exc:
            self._update(phase="failed", message=str(exc), eta_s=None)
        except EngineUnavailable as exc:
            self._update(phase="failed", message=f"cannot connect to the engine: {exc}", eta_s=None)
        except EngineError as exc:
            what = "lost the engine" if exc.code == "unreachable" else "the engine refused the job"
            self._update(phase="failed", message=f"{what}: {readable(exc)}", eta_s=None)
            self._abandon()
        except OSError as exc:
            self._update(phase="failed", message=f"cannot write the plates: {exc}", eta_s=None)
            self._abandon()
        except Exception as exc:  # a bug: say so instead of leaving the panel spinning
            logger.exception("pre-vis run failed")
            self._update(phase="failed", message=f"internal error ({type(exc).__name__}: {exc})", eta_s=None)
            self._abandon()
        finally:
            for folder in self._staging_dirs():
                shutil.rmtree(folder, ignore_errors=True)
        return self.snapshot()

    def _abandon(self) -> None:
        """A run that failed on this side: the engine need not go on computing its job (best effort)."""
        job_id, client = self.snapshot().job_id, self._client
        if not job_id or client is None:
            return
        try:
            client.cancel(job_id)
        except EngineError as exc:
            logger.info("could not cancel job %s on the engine: %s", job_id, exc)

    def _retrying(self, call, *args):
        """``call(*args)``, retried with backoff while the engine is unreachable, for up to RETRY_S."""
        deadline, delay = None, POLL_S
        while True:
            try:
                return call(*args)
            except EngineError as exc:
                if exc.code != "unreachable":
                    raise
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + RETRY_S
                if now >= deadline:
                    raise
                logger.warning("the engine is not answering (%s); retrying", exc.message)
                self._update(message=f"the engine is not answering; retrying ({exc.message})")
                if self._cancel.wait(delay):
                    raise RunCancelled() from None
                delay = min(2 * delay, 5.0)

    def _staging_dirs(self) -> list[str]:
        job_id = self.snapshot().job_id
        if not job_id:
            return []
        dirs = [os.path.join(self.request.out_dir, f".btdm-{job_id}")]
        if self.request.posemaps_dir:
            dirs.append(os.path.join(self.request.posemaps_dir, f".btdm-{job_id}"))
        return dirs

    def _check_cancel(self, client=None) -> None:
        if not self._cancel.is_set():
            return
        job_id = self.snapshot().job_id
        if client is not None and job_id:
            self._cancel_on_engine(client, job_id)
        raise RunCancelled()

    def _cancel_on_engine(self, client, job_id: str) -> None:
        try:
            client.cancel(job_id)
        except EngineError as exc:
            if exc.status != 409:  # 409: it had already ended
                logger.warning("cancelling job %s: %s", job_id, exc)
                return
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline and not self._hurry.is_set():  # the sampler stops within one step
            try:
                if client.job(job_id)["state"] in FINAL_STATES:
                    return
            except EngineError:
                return
            self._hurry.wait(POLL_S)

    def _submit(self, client):
        r = self.request
        try:
            return client.submit(skeleton=r.skeleton, appearance=r.appearance, appearance_iuv=r.appearance_iuv,
                                 views=r.views, params=r.params)
        except EngineError as exc:
            if exc.code != "not_supported" or r.skeleton_without_camera is None:
                raise
            note = (f"this engine cannot make full-resolution shot plates yet ({panel_words(exc.message)}); "
                    "sent without the shot camera: the frames are square and do not lie over the shot")
            logger.warning("%s", note)
            self._update(notes=self.snapshot().notes + (note,))
            return client.submit(skeleton=r.skeleton_without_camera, appearance=r.appearance,
                                 appearance_iuv=r.appearance_iuv, views=r.views, params=r.params)

    def _run(self) -> None:
        r = self.request
        for folder in (r.out_dir, r.posemaps_dir):
            if folder:
                check_output_folder(folder, r.shot, adopt=folder in r.adopt)
        self._update(phase="connecting")
        client = self._client = MANAGER.connect(r.settings)
        for folder in {r.out_dir, r.posemaps_dir} - {None, ""}:
            sweep_stale_staging(folder, client)
        self._check_cancel()
        self._update(phase="submitting")
        job = self._submit(client)
        job_id = job["id"]
        self._update(phase="running", job_id=job_id)
        logger.info("submitted job %s", job_id)
        want_posemaps = r.kind == "posemaps" or r.posemaps_dir is not None
        frames_dir = r.out_dir if r.kind == "plates" else None
        maps_dir = r.out_dir if r.kind == "posemaps" else r.posemaps_dir
        stage_frames = os.path.join(frames_dir, f".btdm-{job_id}") if frames_dir else None
        stage_maps = os.path.join(maps_dir, f".btdm-{job_id}") if maps_dir else None
        frames_got = maps_got = 0
        while True:
            self._check_cancel(client)
            job = self._retrying(client.job, job_id)
            total = job.get("frames_total") or r.num_frames
            if want_posemaps:
                while maps_got < job.get("posemaps_done", 0):
                    self._check_cancel(client)
                    data = self._retrying(client.posemap, job_id, maps_got)
                    atomic_write_bytes(os.path.join(stage_maps, f"{r.first_frame + maps_got:06d}.png"), data)
                    maps_got += 1
                    self._update(posemaps_done=maps_got)
            if r.kind == "plates":
                while frames_got < job.get("frames_done", 0):
                    self._check_cancel(client)
                    data = self._retrying(client.plate if job.get("has_plates") else client.frame, job_id, frames_got)
                    atomic_write_bytes(os.path.join(stage_frames, f"{r.first_frame + frames_got:06d}.png"), data)
                    frames_got += 1
                    self._update(frames_done=frames_got)
            self._update(stage=job.get("stage") or "", step=int(job.get("step") or 0),
                         total=int(job.get("total") or 0), eta_s=job.get("eta_s"), frames_total=total,
                         has_plates=bool(job.get("has_plates")), retarget=job.get("retarget"))
            state = job["state"]
            if r.kind == "posemaps" and total and maps_got >= total:
                self._cancel_on_engine(client, job_id)  # the preview needs no generation
                break
            if state == "succeeded" and frames_got >= total:
                break
            if state == "failed":
                raise RunFailed(f"the engine failed the job: {panel_words(job.get('error')) or 'no reason given'}")
            if state == "cancelled":
                raise RunCancelled()
            if state != "succeeded":
                time.sleep(POLL_S)
        self._check_cancel(client)
        self._update(phase="committing")
        count = maps_got if r.kind == "posemaps" else frames_got
        if stage_frames:
            _commit(stage_frames, frames_dir, r.shot, adopt=frames_dir in r.adopt)
        if stage_maps:
            _commit(stage_maps, maps_dir, r.shot, adopt=maps_dir in r.adopt)
        what = "pose maps" if r.kind == "posemaps" else ("plates" if self.snapshot().has_plates else "frames")
        self._update(phase="succeeded", eta_s=None, frames_done=count,
                     message=f"{count} {what} in {r.out_dir}")


class RunGroup:
    """Several characters of one shot: one :class:`PrevisRun` (one engine job) each, all submitted at once, so
    the engine queues them; it quacks like a run (``start``, ``cancel``, ``snapshot``, ``join``, ``run``,
    ``finalized``). All or nothing: the first member that fails or is cancelled cancels the others, and
    ``runs.finalize`` then removes what the ones that finished wrote; the group's snapshot says which character."""

    def __init__(self, requests: list[RunRequest], take: bool = True) -> None:
        self.members = [PrevisRun(r) for r in requests]
        self.take = take  # the members' folders are characters' folders of a new take (takes.py)
        self.request = requests[0]  # kind, take folder's parent, shot: the same for every member
        self.finalized = False
        self._lock = threading.Lock()
        self._first_failure: PrevisRun | None = None

    @property
    def requests(self) -> list[RunRequest]:
        return [m.request for m in self.members]

    def start(self) -> None:
        for member in self.members:
            member._thread = threading.Thread(target=self._run_member, args=(member,), name="btdm-previs",
                                              daemon=True)
            member._thread.start()

    def _run_member(self, member: PrevisRun) -> None:
        snap = member.run()
        if snap.phase != "succeeded":
            with self._lock:
                if self._first_failure is None:
                    self._first_failure = member
            for other in self.members:
                if other is not member:
                    other.cancel()

    def run(self) -> RunSnapshot:
        """Every member, blocking; never raises."""
        self.start()
        self.join()
        return self.snapshot()

    def cancel(self, wait: bool = True) -> None:
        for member in self.members:
            member.cancel(wait)

    def join(self, timeout: float | None = None) -> None:
        for member in self.members:
            member.join(timeout)

    def snapshot(self) -> RunSnapshot:
        snaps = [m.snapshot() for m in self.members]
        names = [m.request.character for m in self.members]
        frames = {"frames_done": sum(x.frames_done for x in snaps), "frames_total": sum(x.frames_total for x in snaps),
                  "has_plates": all(x.has_plates for x in snaps), "job_id": snaps[0].job_id,
                  "model": snaps[0].model, "notes": tuple(n for x in snaps for n in x.notes)}
        if all(x.finished for x in snaps):
            if all(x.phase == "succeeded" for x in snaps):
                what = "plates" if frames["has_plates"] else "frames"
                return RunSnapshot(phase="succeeded", message=f"{len(snaps)} characters ({', '.join(names)}): "
                                   f"{frames['frames_done']} {what} in {os.path.dirname(self.request.out_dir)}",
                                   **frames)
            with self._lock:
                failed = self._first_failure
            index = self.members.index(failed) if failed is not None else next(
                i for i, x in enumerate(snaps) if x.phase != "succeeded")
            snap = snaps[index]
            if snap.phase == "failed":
                return RunSnapshot(phase="failed", message=f"{names[index]}: {snap.message}; the other characters "
                                   "were cancelled: no plate was placed", **frames)
            return RunSnapshot(phase="cancelled", message="cancelled: no plate was placed", **frames)
        index = next(i for i, x in enumerate(snaps) if not x.finished)
        snap = snaps[index]
        return dataclasses.replace(snap, label=f"{names[index]} ({index + 1} of {len(snaps)})", **frames)


def sweep_stale_staging(folder: str, client) -> list[str]:
    """Remove the staging folders ``.btdm-<job id>/`` that a killed Blender left in ``folder``.

    Only folders the add-on made (the name) holding only files it writes there (``NNNNNN.png`` and
    its temporary names), whose job the engine reports ended or does not know, go; a folder of a
    job still queued or running (another Blender on this shot), or with anything else in it, stays.
    Returns the removed paths.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _STAGING_DIR.match(name)
        path = os.path.join(folder, name)
        if not match or not os.path.isdir(path) or os.path.islink(path):
            continue
        try:
            files = os.listdir(path)
        except OSError:
            continue
        if not all((_FRAME_FILE.match(f) or _TEMP_FILE.match(f)) and os.path.isfile(os.path.join(path, f))
                   and not os.path.islink(os.path.join(path, f)) for f in files):
            continue
        try:
            state = client.job(match.group(1)).get("state")
        except EngineError as exc:
            if exc.status != 404:
                continue  # the engine cannot say: leave it
            state = None
        if state is not None and state not in FINAL_STATES:
            continue
        for f in files:
            os.unlink(os.path.join(path, f))
        os.rmdir(path)
        logger.info("removed %s, left by an interrupted run", path)
        removed.append(path)
    return removed


WRITTEN_FILE = ".btdm-frames.json"
"""In an output folder: the shot that owns it and the frame files the add-on wrote there for that shot
(only these are ever replaced or removed): ``{"shot": {"blend", "scene", "camera"}, "frames": [...]}``."""

SHOT_FIELDS = ("blend", "scene", "camera")


def _read_record(dest: str) -> dict:
    path = os.path.join(dest, WRITTEN_FILE)
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
        if not isinstance(record, dict) or not isinstance(record.get("frames", []), list):
            raise ValueError("not a pre-vis record")
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise RunFailed(f"{path} is unreadable ({exc}); remove it and the frames it listed, or choose another "
                        "Output folder") from None
    return record


def _written(dest: str) -> set[str]:
    names = _read_record(dest).get("frames", [])
    return {n for n in names if isinstance(n, str) and _FRAME_FILE.match(n)}


def _owner(record: dict) -> dict | None:
    shot = record.get("shot")
    if not isinstance(shot, dict):
        return None
    return {k: str(shot.get(k, "")) for k in SHOT_FIELDS}


def describe_shot(shot: dict) -> str:
    """``shot010.blend, scene 'Scene', camera 'Camera'`` (an unsaved file: ``an unsaved .blend``)."""
    blend = shot.get("blend") or "an unsaved .blend"
    return f"{blend}, scene {shot.get('scene', '')!r}, camera {shot.get('camera', '')!r}"


def _record(dest: str, names: set[str], shot: dict | None) -> None:
    record: dict = {"frames": sorted(names)}
    if shot is not None:
        record = {"shot": {k: str(shot.get(k, "")) for k in SHOT_FIELDS}, **record}
    atomic_write_bytes(os.path.join(dest, WRITTEN_FILE), (json.dumps(record, indent=0) + "\n").encode("utf-8"))


def check_output_folder(dest: str, shot: dict | None = None, *, adopt: bool = False) -> None:
    """Refuse a folder holding frame files (``NNNNNN.png``) that the add-on did not write there for ``shot``.

    A run replaces the frames of the run before it in its folder and removes the ones the new run
    did not make; it never touches a file it did not write (someone's render) nor the frames it wrote
    for another shot (another .blend, scene or camera sharing the folder), so such a folder is
    refused before anything is generated. Frames recorded before the add-on recorded their shot are
    taken as this shot's only with ``adopt`` (the scene's own strip shows them); ``shot`` None
    checks for foreign files only.
    """
    if not os.path.isdir(dest):
        return
    record = _read_record(dest)
    written = _written(dest)
    present = set(os.listdir(dest))
    foreign = sorted(f for f in present if _FRAME_FILE.match(f) and f not in written)
    if foreign:
        raise RunFailed(f"{dest} holds {len(foreign)} frame file(s) that pre-vis did not write ({foreign[0]}"
                        f"{', ...' if len(foreign) > 1 else ''}); choose an empty Output folder or move them")
    theirs = sorted(written & present)
    if shot is None or not theirs:
        return
    owner = _owner(record)
    mine = {k: str(shot.get(k, "")) for k in SHOT_FIELDS}
    if owner is None and not adopt:
        raise RunFailed(f"{dest} holds {len(theirs)} frame(s) that pre-vis wrote for a shot it did not record, and "
                        "no strip of this scene shows them; choose another Output folder (or delete those frames "
                        "to reuse this one)")
    if owner is not None and owner != mine:
        raise RunFailed(f"{dest} holds the {len(theirs)} frame(s) of another shot ({describe_shot(owner)}); "
                        "choose another Output folder for this one (or delete those frames to reuse it)")


def _commit(staging: str, dest: str, shot: dict | None = None, *, adopt: bool = False) -> None:
    """Move the staged frames into ``dest`` and drop the frames of an earlier run that this one did not write.

    The record of what the add-on wrote covers old and new frames while files move, so a crash in
    between never leaves a frame of ours looking foreign; it names ``shot`` as the folder's owner
    from before the first frame moves.
    """
    check_output_folder(dest, shot, adopt=adopt)
    new = {f for f in os.listdir(staging) if _FRAME_FILE.match(f)}
    old = _written(dest)
    _record(dest, old | new, shot)
    for f in sorted(new):
        os.replace(os.path.join(staging, f), os.path.join(dest, f))
    for f in sorted(old - new):
        path = os.path.join(dest, f)
        if os.path.exists(path):
            os.unlink(path)
    _record(dest, new, shot)
    shutil.rmtree(staging, ignore_errors=True)
