"""The job worker: plain Python around the :class:`~btdm_engine.pipeline.Animator`, testable without HTTP.

One :class:`Worker` per device runs one job at a time in its own thread; the models it has used
stay loaded in a :class:`ModelRegistry` (loaded once, under a lock), so a second job never pays
the load again. A job's failure (bad input found late, out of memory) fails that job alone.

A job's folder (``DATA/jobs/<id>/``), every file written atomically (:mod:`btdm_engine.fileio`)::

    input/                      the validated uploads (motion.npz | skeleton.npz | posemaps/, appearance...)
    clip.npz                    skeleton jobs: the retargeted MotionClip
    run.json                    batch sizes fixed at the first run, so a resumed run is bit-identical
    posemaps/iuv/NNNNNN.png     the IUV maps at the output resolution (project channel order)
    posemaps/preview/NNNNNN.png their colour previews (GET .../posemaps/{n}.png)
    low.npy                     the complete low-resolution result of the BTU-Net stage
    frames/NNNNNN.png           SR3 frames (GET .../frames/{n}.png)
    plates/NNNNNN.png           RGBA plates at the shot camera's resolution (shot-camera jobs)
    video.mp4

Resuming after a crash (SIGKILL, power loss) redoes only what is not on disk: pose maps already
rendered are kept, ``low.npy`` skips fine-tuning and the bidirectional sampler, and SR3 restarts
at the first chunk with a missing frame. SR3 gives every frame the same noise (``sample_sr3``'s
shared noise, drawn from one seed), so a frame does not depend on the chunks before it and the
resumed frames equal an uninterrupted run's, which equal ``btdm animate``'s with the same seed.

The API process imports this module before any job runs: torch, cv2 and pyrender (and the engine
modules that pull them in) are imported where a job first needs them (``# lazy:`` comments).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from btdm_engine.errors import BtdmError
from btdm_engine.fileio import atomic_path, atomic_write_text, read_json
from btdm_engine.jobspec import JobFault, JobSpec
from btdm_engine.procs import release_freed_memory
from btdm_engine.service import limits
from btdm_engine.service.errors import NO_SPACE, InvalidParams, ServiceError, disk_full, public
from btdm_engine.service.schemas import JOB_FIELDS, RULE_NAMES
from btdm_engine.service.store import MAX_ATTEMPTS, JobStore
from btdm_engine.weights import (
    DEFAULT_MODEL_DIR,
    NoDefaultModelError,
    default_appearance,
    model_appearance,
    sr3_stage_dirs,
)

logger = logging.getLogger(__name__)

# Sampler callback stages -> the API's stages.
_STAGES = {"posemaps": "posemaps", "writing": "writing", "finetune": "finetune", "bidirectional": "btunet",
           "unidirectional": "btunet", "sr3": "sr3"}
_PROGRESS_INTERVAL_S = 0.25
EXPIRY_EVERY_S = 600.0
"""How often an idle worker looks for finished jobs past ``btdm serve --keep-days``."""


class JobCancelled(Exception):
    """The job's cancel signal was set (by a client, or by the server stopping)."""


class RunLost(Exception):
    """What ran the job is gone (a Ray node died with its actor): the job goes back to the queue, the run
    counted like a crash (after ``store.MAX_ATTEMPTS`` runs it fails)."""


# ---------------------------------------------------------------------------- models
@dataclass
class ModelEntry:
    name: str
    path: Path
    default_appearance: tuple[Path, Path] | None = None
    animator: Any = None
    info: dict[str, Any] = field(default_factory=dict)


class ModelRegistry:
    """The models a server offers (``name -> model folder``); each loaded at most once, on one device."""

    def __init__(self, models: dict[str, Path], device: str, default_appearances: dict[str, tuple[Path, Path]]
                 | None = None) -> None:
        self.device = device
        self._lock = threading.Lock()
        self._entries = {
            name: ModelEntry(name, Path(path), (default_appearances or {}).get(name))
            for name, path in models.items()
        }
        for entry in self._entries.values():
            entry.info = self._read_info(entry)

    @classmethod
    def with_default(cls, device: str, extra: dict[str, Path] | None = None) -> ModelRegistry:
        """The embedded model as ``default`` (when installed), plus ``extra`` model folders; each with
        the appearance its folder ships (``appearance.png`` + ``appearance_iuv.png``), if any."""
        models: dict[str, Path] = {}
        appearances = {}
        try:
            appearances["default"] = default_appearance()
            models["default"] = DEFAULT_MODEL_DIR
        except NoDefaultModelError as exc:
            logger.warning("%s", exc)
        for name, folder in (extra or {}).items():
            models[name] = folder
            if (own := model_appearance(folder)) is not None:
                appearances[name] = own
            else:
                appearances.pop(name, None)
        return cls(models, device, appearances)

    @staticmethod
    def _read_info(entry: ModelEntry) -> dict[str, Any]:
        def config(kind: str) -> dict[str, Any] | None:
            path = entry.path / kind / "config.json"
            return read_json(path, ServiceError) if path.is_file() else None

        btunet = config("btunet")
        if btunet is None:
            raise ServiceError(f"model {entry.name}: {entry.path} has no btunet/config.json")
        sr3 = config("sr3")
        stages = sr3_stage_dirs(entry.path)  # a cascade's last stage makes the output's size
        last = config(stages[-1].name) if stages else None
        extra = btunet.get("extra", {})
        low = int(btunet["model"]["resolution"])
        return {
            "name": entry.name,
            "preset": extra.get("training", {}).get("preset"),
            "resolution": int(last["model"]["resolution"]) if last else low,
            "low_resolution": low,
            "has_sr3": sr3 is not None,
            "takes_appearance": extra.get("task") == "single_image",
            "has_default_appearance": entry.default_appearance is not None,
            "task": extra.get("task"),
            # the networks take the texture-transfer prior, which reads g(c) (appearance_iuv)
            "texture_prior": bool(btunet["model"].get("warp_channels", 0)),
        }

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> ModelEntry:
        if name not in self._entries:
            raise InvalidParams(f"model {name!r} is unknown; available: {', '.join(self._entries) or 'none'}",
                                field="params.model")
        return self._entries[name]

    def infos(self) -> list[dict[str, Any]]:
        return [{**e.info, "loaded": e.animator is not None} for e in self._entries.values()]

    def load(self, name: str) -> Any:
        """The model's Animator, loaded on first use and kept."""
        entry = self.entry(name)
        with self._lock:
            if entry.animator is None:
                from btdm_engine.pipeline import Animator  # lazy: torch

                t0 = time.perf_counter()
                entry.animator = Animator.from_pretrained(entry.path, device=self.device)
                logger.info("model %s loaded from %s on %s in %.2f s", name, entry.path, self.device,
                            time.perf_counter() - t0)
            return entry.animator


# ---------------------------------------------------------------------------- progress
class Progress:
    """The samplers' ``callback(stage, step, total)`` -> throttled job-row updates with an ETA.

    The ETA is the current stage's remaining steps at its measured rate, plus, while the BTU-Net
    runs, the SR3 steps still to come at the rate the last SR3 stage of this model ran (none
    before the first job finishes: then only the current stage counts).
    """

    def __init__(self, store: JobStore, job_id: str, sr3_seconds_per_step: dict[str, float], model: str) -> None:
        self.store, self.job_id = store, job_id
        self.sr3_rate = sr3_seconds_per_step
        self.model = model
        self.stage: str | None = None
        self.stage_t0 = time.perf_counter()
        self.stage_step0 = 0
        self.last_write = 0.0
        self.sr3_total: int | None = None

    def set_stage(self, stage: str, step: int = 0, total: int | None = None, **fields: Any) -> None:
        self.stage, self.stage_t0, self.stage_step0 = stage, time.perf_counter(), step
        self.last_write = time.perf_counter()
        self.store.update(self.job_id, stage=stage, step=step, total=total, eta_s=None, **fields)

    def __call__(self, stage: str, step: int, total: int | None) -> None:
        api_stage = _STAGES.get(stage, "btunet")
        if api_stage != self.stage:
            self.set_stage(api_stage, 0, total)
        now = time.perf_counter()
        done = step - self.stage_step0
        rate = (now - self.stage_t0) / done if done > 0 else None
        if api_stage == "sr3" and rate is not None and total is not None and step == total:
            self.sr3_rate[self.model] = rate
        if now - self.last_write < _PROGRESS_INTERVAL_S and step != total:
            return
        eta = None
        if rate is not None and total is not None:
            eta = (total - step) * rate
            if api_stage in ("finetune", "btunet") and self.sr3_total:
                known = self.sr3_rate.get(self.model)
                eta = eta + self.sr3_total * known if known is not None else None
        self.last_write = now
        self.store.update(self.job_id, step=step, total=total, eta_s=None if eta is None else round(eta, 2))


# ---------------------------------------------------------------------------- the worker
class Worker:
    """Runs queued jobs of ``store`` one at a time on ``registry``'s device, in a daemon thread."""

    def __init__(self, store: JobStore, registry: ModelRegistry, *, poll_s: float = 1.0,
                 keep_s: float | None = None, name: str = "btdm-worker", threads: int | None = None) -> None:
        self.store = store
        self.registry = registry
        self.name = name
        self.threads = threads  # torch threads of this worker's thread (its share of the CPU); None: inherited
        self.poll_s = poll_s
        self.keep_s = keep_s  # finished jobs older than this are removed while idle (None: kept)
        self._next_expiry = 0.0
        self._stop = threading.Event()
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.sr3_seconds_per_step: dict[str, float] = {}
        self.store_error: str | None = None  # the job store's last write error, until a write succeeds
        self.last_error: str | None = None  # why the last job failed
        self.metrics: Any = None  # metrics.ServiceMetrics (the app's), told of each frame and each run's end
        self.available = True  # False while a remote worker's runner does not answer (raypool.RayWorker)
        self._frames_this_run = 0

    # -- lifetime
    def start(self, preload: tuple[str, ...] = ()) -> None:
        self._thread = threading.Thread(target=self._loop, args=(preload,), name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt the running job (it goes back to the queue and resumes at the next start) and join."""
        self.signal_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def signal_stop(self) -> None:
        """Ask the worker to stop (its running job is interrupted within one network step); no wait."""
        self._stop.set()
        self.store.wake()

    def _loop(self, preload: tuple[str, ...]) -> None:
        if self.threads is not None:
            import torch  # lazy: torch

            torch.set_num_threads(self.threads)  # per thread: the sampler's workers split this worker's share
        self._preload(preload)
        while not self._stop.is_set():
            if not self._ready():  # a remote worker whose runner is gone (a lost node): claim nothing meanwhile
                self._stop.wait(self.poll_s)
                continue
            try:
                job = self.store.claim_next(f"{self.name}@{self.where()}")
                self.store_error = None
                if job is None:
                    self._expire_if_due()
                    self.store.wait_for_queued(self.poll_s)
                    continue
                self.run_claimed(job)
            except Exception as exc:  # the store itself failed (disk full, ...): keep the worker alive, retry
                self.store_error = NO_SPACE if disk_full(exc) else public(f"{type(exc).__name__}: {exc}")
                logger.error("worker: job store error (%s); retrying in %.0f s", exc, self.poll_s * 5,
                             exc_info=not disk_full(exc))
                self._stop.wait(self.poll_s * 5)

    def _preload(self, names: tuple[str, ...]) -> None:
        for name in names:
            try:
                self.registry.load(name)
            except Exception:  # a broken model folder must not stop the server from serving the others
                logger.exception("could not load model %s", name)

    def _ready(self) -> bool:
        """Whether the worker can take a job now (always, in process)."""
        return True

    def where(self) -> str:
        """Where this worker runs jobs: its device (a Ray worker: its node)."""
        return str(self.registry.device)

    def health(self) -> dict[str, Any]:
        """The worker's part of ``GET /v1/health``."""
        with self._lock:
            running = next(iter(self._cancel), None)
        alive = self._thread is not None and self._thread.is_alive()
        state = ("stopped" if not alive else "store_error" if self.store_error else
                 "running" if running else "idle" if self.available else "unavailable")
        return {"alive": alive, "state": state, "job": running, "last_error": self.last_error,
                "device": self.where(), "name": self.name}

    def running(self) -> list[str]:
        """The id of the job this worker runs now (none or one)."""
        with self._lock:
            return list(self._cancel)

    def workers(self) -> list[Worker]:
        """The workers behind this one (itself: a pool answers its members)."""
        return [self]

    def _expire_if_due(self) -> None:
        """While idle, at most every EXPIRY_EVERY_S: drop the jobs that ended more than keep_s ago."""
        if self.keep_s is None or time.monotonic() < self._next_expiry:
            return
        self._next_expiry = time.monotonic() + EXPIRY_EVERY_S
        self.store.expire(self.keep_s)

    def abandon(self, timeout: float = 60.0) -> list[str]:
        """The process this server works for is gone (``btdm serve --parent-pid``): cancel the running job
        and every queued one, stop, and remove the running job's partial files (its own job folder).

        Returns the ids of the jobs that were running. Nobody is left to fetch their results, and a
        cancelled job never resumes; queued jobs keep their uploads until ``--keep-days``.
        """
        running = [job_id for worker in self.workers() for job_id in worker.running()]
        for job_id in running:
            self.store.update(job_id, cancel_requested=True)
            self.cancel(job_id)
        self.stop(timeout)  # the sampler stops within one network step; the job ends cancelled
        for job_id in self.store.ids("queued"):
            self.store.cancel_queued(job_id)
        for job_id in running:
            remove_job_files(self.store, job_id)
            logger.info("job %s: cancelled, its partial files removed", job_id)
        return running

    # -- cancel
    def cancel(self, job_id: str) -> None:
        """Signal a running job to stop (the sampler raises within one network step)."""
        with self._lock:
            event = self._cancel.get(job_id)
        if event is not None:
            event.set()

    # -- one job
    def run_claimed(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run a job already marked running; returns its final row. Never raises for the job's own failures."""
        t0 = time.perf_counter()
        self._frames_this_run = 0
        event = threading.Event()  # the job's cancel; while it is registered, health() says "running"
        with self._lock:
            self._cancel[job["id"]] = event
        try:
            final = self._run_claimed(job, event)
            if self.metrics is not None:
                params = job["params"]
                self.metrics.run_ended(final["state"], params.get("model", "default"),
                                       params.get("method", "diffusion"), time.perf_counter() - t0,
                                       self._frames_this_run)
        finally:  # idle once the job's final state is stored and counted, not before
            with self._lock:
                self._cancel.pop(job["id"], None)
        return final

    def frame_written(self, params: dict[str, Any]) -> None:
        """A frame of the running job is on disk (for the metrics)."""
        self._frames_this_run += 1
        if self.metrics is not None:
            self.metrics.frame_written(params.get("model", "default"), params.get("method", "diffusion"))

    def _run_claimed(self, job: dict[str, Any], event: threading.Event) -> dict[str, Any]:
        job_id = job["id"]
        if job["cancel_requested"]:
            event.set()
        try:
            self._run(job, lambda: event.is_set() or self._stop.is_set())
        except JobCancelled:
            if event.is_set():
                return self.store.transition(job_id, "cancelled", finished=time.time(), eta_s=None)
            # The server is stopping: back to the queue, and this run does not count as a crash.
            return self.store.transition(job_id, "queued", attempts=job["attempts"] - 1, stage=None, step=0,
                                         total=None, eta_s=None)
        except RunLost as exc:
            if event.is_set():
                return self.store.transition(job_id, "cancelled", finished=time.time(), eta_s=None)
            if job["attempts"] >= MAX_ATTEMPTS:
                return self._failed(job_id, public(f"lost what ran it during each of {job['attempts']} runs ({exc})"))
            logger.warning("job %s: %s; back in the queue, to resume from its files elsewhere", job_id, exc)
            return self.store.transition(job_id, "queued", stage=None, step=0, total=None, eta_s=None)
        except BtdmError as exc:
            message = exc.message if isinstance(exc, ServiceError) else str(exc)
            return self._failed(job_id, public(message))
        except Exception as exc:
            import torch  # lazy: torch

            if disk_full(exc):
                # What the job wrote so far goes (a failed job never resumes), so the store can record the
                # failure and the next job finds the space it had; the uploads stay with the row.
                logger.error("job %s: %s (%s)", job_id, NO_SPACE, exc)
                self._remove_outputs(job_id)
                error = f"{NO_SPACE}: the server's disk is full; free space where it keeps its jobs and submit again"
            elif isinstance(exc, torch.cuda.OutOfMemoryError):
                error = f"out of memory on {self.registry.device}: lower params.max_batch or use fewer frames"
            else:
                logger.exception("job %s: unexpected error", job_id)
                detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                error = public(f"internal error ({type(exc).__name__}: {detail})")
            return self._failed(job_id, error)
        finally:
            release_freed_memory()  # the heap kept its peak for the job's network calls (btdm_engine.procs)
        return self.store.transition(job_id, "succeeded", stage=None, finished=time.time(), eta_s=0.0)

    def _failed(self, job_id: str, error: str) -> dict[str, Any]:
        self.last_error = error
        try:
            return self.store.transition(job_id, "failed", error=error, finished=time.time(), eta_s=None)
        except Exception as exc:
            if not disk_full(exc):
                raise
            self._remove_outputs(job_id)  # the space the job took, so its failure can be recorded
            return self.store.transition(job_id, "failed", error=error, finished=time.time(), eta_s=None)

    def _remove_outputs(self, job_id: str) -> None:
        self.remove_outputs(self.store, job_id)

    @staticmethod
    def remove_outputs(store: JobStore, job_id: str) -> None:
        """Everything the worker wrote for the job (all but ``input/`` and a skeleton job's ``clip.npz``, which
        the submit wrote)."""
        folder = store.job_dir(job_id)
        for path in folder.iterdir() if folder.is_dir() else ():
            if path.name not in ("input", "clip.npz"):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def _run(self, job: dict[str, Any], is_cancelled: Callable[[], bool]) -> None:
        from btdm_engine.diffusion.samplers import Cancelled  # lazy: torch

        try:
            _JobRun(self, job, is_cancelled).run()
        except Cancelled as exc:
            raise JobCancelled(str(exc)) from None
        if is_cancelled():
            raise JobCancelled("cancelled")


def _refuse(fault: JobFault | None) -> None:
    """A job rule (jobspec.RULES) broken when the job runs, in the service's words."""
    if fault is not None:
        raise InvalidParams(fault.message, field=fault.field)


class _JobRun:
    """One run of one job (fresh or resumed); see the module docstring for the folder layout."""

    def __init__(self, worker: Worker, job: dict[str, Any], is_cancelled: Callable[[], bool]) -> None:
        self.worker, self.store = worker, worker.store
        self.job, self.id = job, job["id"]
        self.params: dict[str, Any] = job["params"]
        self.inputs: dict[str, Any] = job["inputs"]
        self.dir = self.store.job_dir(self.id)
        self.is_cancelled = is_cancelled
        self.progress = Progress(self.store, self.id, worker.sr3_seconds_per_step, self.params["model"])

    def check_cancel(self) -> None:
        if self.is_cancelled():
            raise JobCancelled("cancelled")

    def run(self) -> None:
        import torch  # lazy: torch

        from btdm_engine.imageio import read_rgb  # lazy: torch, cv2
        from btdm_engine.motion.shot import picture_at_frame  # lazy: scipy
        from btdm_engine.pipeline import max_batch_for, pair_batch_for, sampling_workers, tensor_to_images  # lazy: torch
        from btdm_engine.posemaps.encoding import read_iuv_png  # lazy: torch, cv2

        p = self.params
        entry = self.worker.registry.entry(p["model"])
        animator = self.worker.registry.load(p["model"])
        res, out_res, dev = animator.low_resolution, animator.resolution, animator.device
        spec = JobSpec(**{n: p[n] for n in JOB_FIELDS if n in p})
        # the model checked at submission may have changed since (a restart with other --model folders)
        _refuse(spec.fault(RULE_NAMES, model=f"model {p['model']}", has_sr3=animator.sr3 is not None))

        # 0. batch sizes fixed once per job (a resumed run must chunk exactly like the first); on the
        # CPU a step's calls run side by side (`btdm serve --threads` workers, as in the Animator).
        workers, _ = sampling_workers(dev)
        run_path = self.dir / "run.json"
        if run_path.is_file():
            run_info = read_json(run_path, ServiceError)
        else:
            run_info = {"max_batch": p.get("max_batch") or pair_batch_for(res, dev, workers),
                        "sr_batch": max_batch_for(out_res, dev, workers)}
            atomic_write_text(run_path, json.dumps(run_info))

        # 1. pose maps at the output resolution (kept across restarts, frame by frame).
        iuv_files, fps, plan = self.pose_maps(out_res)
        fps = p["fps"] or fps
        num = len(iuv_files)
        self.check_cancel()

        # 2. appearance c (and g(c) for fine-tuning and the texture-transfer prior), read like
        # `btdm animate` reads them.
        appearance = appearance_iuv = None
        app_path, app_iuv_path, app_order = self.appearance_paths(entry)
        if app_path is not None:
            appearance = np.round(read_rgb(app_path) * 255.0).astype(np.uint8)
        if app_iuv_path is not None:
            appearance_iuv = read_iuv_png(app_iuv_path, order=app_order)
        shown = p.get("appearance_frame")
        if shown is not None and appearance is not None:
            # c shows the body as frame `shown` does: a picture of the whole shot is cut with that
            # frame's window (plates), and that frame's pose map is its IUV map g(c).
            _refuse(spec.fault(RULE_NAMES, appearance_frame=shown, frames=num))
            appearance, appearance_iuv = picture_at_frame(plan, shown, appearance, read_iuv_png(iuv_files[shown]))
        views = [self.view(k, plan, iuv_files) for k in self.inputs.get("views", ())]
        texture_method = p.get("method") == "texture"
        if p["finetune_steps"] == 0 and not animator.uses_warp and not texture_method:
            appearance_iuv = None  # only fine-tuning and the texture-transfer prior read g(c)
        pose_maps = np.stack([read_iuv_png(f) for f in iuv_files])
        if texture_method:  # no network: the appearance's pixels through the UV atlas, frame by frame
            self.write_transfer(appearance, appearance_iuv, views, pose_maps, plan, iuv_files)
            if p["video"]:
                self.write_video(num, fps)
            return

        # 3. the low-resolution sequence, once: the Animator's stages (fine-tuning, then algorithm 1
        # or the baseline), so the frames are `btdm animate`'s.
        low_path = self.dir / "low.npy"
        job = animator.prepare(pose_maps, appearance, appearance_iuv, views)
        if low_path.is_file():
            low = torch.from_numpy(np.load(low_path, allow_pickle=False))
            logger.info("job %s: reusing the low-resolution result %s", self.id, low_path)
        else:
            btunet = None
            if p["finetune_steps"] > 0:
                self.progress.set_stage("finetune", 0, p["finetune_steps"])
                btunet = animator.finetune(job, steps=p["finetune_steps"], lr=p["finetune_lr"], seed=p["seed"],
                                           callback=self.progress, cancel=self.is_cancelled)
            self.progress.sr3_total = (animator.sr3_calls(num, p["steps"], p["sr_steps"], run_info["sr_batch"])
                                       if animator.sr3 is not None else None)
            self.progress.set_stage("btunet", 0, p["steps"] * (num if p["sampler"] == "unidirectional" else 1))
            low = animator.sample_low(job, btunet, steps=p["steps"], seed=p["seed"], sampler=p["sampler"],
                                      eta=p["eta"], noise=p["noise"], max_batch=run_info["max_batch"],
                                      workers=workers, callback=self.progress, cancel=self.is_cancelled)
            del btunet
            low = low.detach().float().cpu()
            with atomic_path(low_path, suffix=".npy.tmp") as tmp, open(tmp, "wb") as fh:
                np.save(fh, low.numpy(), allow_pickle=False)
        self.check_cancel()

        # 4. frames: SR3 from the first chunk with a missing frame (its noise is shared by all frames).
        frames_dir = self.dir / "frames"
        frames_dir.mkdir(exist_ok=True)
        done = 0
        while done < num and (frames_dir / f"{done:06d}.png").is_file():
            done += 1
        self.store.update(self.id, frames_done=done)
        if animator.sr3 is None:
            self.progress.set_stage("writing", done, num)
            for n, frame in enumerate(tensor_to_images(low[done:]), start=done):
                self.check_cancel()
                self.write_frame(n, frame, plan, iuv_files)
        elif done < num:
            batch = run_info["sr_batch"]
            first_chunk = done // batch
            start = first_chunk * batch
            self.progress.set_stage("sr3", 0, animator.sr3_calls(num - start, p["steps"], p["sr_steps"], batch))
            chunks = animator.super_resolve(job, low, start=start, steps=p["steps"], sr_steps=p["sr_steps"],
                                            seed=p["seed"], eta=p["eta"],
                                            batch=batch, noise=p["noise"], workers=workers, callback=self.progress,
                                            cancel=self.is_cancelled)
            n = start
            for chunk in chunks:
                for frame in tensor_to_images(chunk):
                    self.write_frame(n, frame, plan, iuv_files)
                    n += 1
        self.check_cancel()

        # 5. the video, from the frames on disk.
        if p["video"]:
            self.write_video(num, fps)

    # -- pieces
    def view(self, k: int, plan: Any, iuv_files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        """Further view ``k`` (the views zip's picture of job frame k) and its IUV map, frame k's pose map,
        read as the appearance at ``appearance_frame`` is (:func:`picture_at_frame`)."""
        from btdm_engine.imageio import read_rgb  # lazy: torch, cv2
        from btdm_engine.motion.shot import picture_at_frame  # lazy: scipy
        from btdm_engine.posemaps.encoding import read_iuv_png  # lazy: torch, cv2

        image = np.round(read_rgb(self.dir / "input" / "views" / f"{k:06d}.png") * 255.0).astype(np.uint8)
        return picture_at_frame(plan, k, image, read_iuv_png(iuv_files[k]))

    def write_transfer(self, appearance: Any, appearance_iuv: Any, views: list[tuple[np.ndarray, np.ndarray]],
                       pose_maps: np.ndarray, plan: Any, iuv_files: list[Path]) -> None:
        """``params.method`` texture: every missing frame by texture transfer (no network)."""
        from btdm_engine.posemaps.texture import texture_from_image, transfer_frames  # lazy: torch, cv2

        num = len(pose_maps)
        done = 0
        while done < num and (self.dir / "frames" / f"{done:06d}.png").is_file():
            done += 1
        (self.dir / "frames").mkdir(exist_ok=True)
        texture = texture_from_image(appearance, appearance_iuv, views=views)
        self.progress.set_stage("writing", done, num)
        for n, frame in enumerate(transfer_frames(texture, pose_maps, start=done), start=done):
            self.check_cancel()
            self.write_frame(n, frame, plan, iuv_files)
            self.progress("writing", n + 1, num)

    def write_frame(self, n: int, frame: np.ndarray, plan: Any, iuv_files: list[Path]) -> None:
        """Plate n (shot-camera jobs) first, then frame n: a frame on disk means its plate is there too."""
        from btdm_engine.posemaps.encoding import read_iuv_png  # lazy: torch, cv2
        from btdm_engine.posemaps.preview import write_rgb_png, write_rgba_png  # lazy: torch, cv2

        if plan is not None:
            write_rgba_png(self.dir / "plates" / f"{n:06d}.png", plan.composite(n, frame, read_iuv_png(iuv_files[n])))
        write_rgb_png(self.dir / "frames" / f"{n:06d}.png", frame)
        self.store.update(self.id, frames_done=n + 1)
        self.worker.frame_written(self.params)

    def write_video(self, num: int, fps: float) -> None:
        import cv2  # lazy: cv2

        from btdm_engine.posemaps.preview import write_mp4  # lazy: torch, cv2

        self.progress.set_stage("writing", 0, num)

        def frames() -> Any:
            for n in range(num):
                self.check_cancel()
                bgr = cv2.imread(str(self.dir / "frames" / f"{n:06d}.png"), cv2.IMREAD_COLOR)
                yield np.ascontiguousarray(bgr[..., ::-1])
                self.progress("writing", n + 1, num)

        write_mp4(frames(), self.dir / "video.mp4", fps=fps)
        self.store.update(self.id, has_video=True)

    def appearance_paths(self, entry: Any) -> tuple[Path | None, Path | None, str]:
        p = self.params
        app = self.dir / "input" / "appearance.png"
        app_iuv = self.dir / "input" / "appearance_iuv.png"
        if self.inputs.get("appearance"):
            return app, (app_iuv if self.inputs.get("appearance_iuv") else None), p["iuv_order"]
        if p["use_default_appearance"] and entry.default_appearance is not None:
            image, iuv = entry.default_appearance
            return image, iuv, "btdm"
        return None, None, "btdm"

    def load_clip(self) -> Any:
        """The job's MotionClip: the upload, or for skeleton jobs the clip retargeted at submit time."""
        from btdm_engine.motion.clip import MotionClip  # lazy: torch, cv2

        if self.job["source"] == "motion":
            return MotionClip.load(self.dir / "input" / "motion.npz")
        return MotionClip.load(self.dir / "clip.npz")

    def pose_maps(self, size: int) -> tuple[list[Path], float, Any]:
        """IUV maps at ``size`` px in ``posemaps/iuv`` (rendering only missing ones), their previews; fps; shot plan."""
        from btdm_engine.posemaps.encoding import read_iuv_png, write_iuv_png  # lazy: torch, cv2
        from btdm_engine.posemaps.preview import colorize_iuv, write_rgb_png  # lazy: torch, cv2

        p = self.params
        iuv_dir, preview_dir = self.dir / "posemaps" / "iuv", self.dir / "posemaps" / "preview"
        plan = None
        if self.job["source"] == "posemaps":
            sources = sorted((self.dir / "input" / "posemaps").glob("[0-9]*.png"))
            start, stop = _frame_range(p, len(sources))
            sources, fps, clip = sources[start:stop], 30.0, None
            num = len(sources)
        else:
            clip = self.load_clip()
            start, stop = _frame_range(p, clip.num_frames)
            clip = clip.slice(start, stop)
            fps, num = float(clip.fps), clip.num_frames
            if wants_plates(p, self.inputs):
                from btdm_engine.motion.shot import plan_shot  # lazy: torch, cv2

                plan = plan_shot(clip, size)
                clip = plan.square_clip
                self.store.update(self.id, has_plates=True, plate_width=int(plan.width), plate_height=int(plan.height))
        if num > limits.MAX_FRAMES:
            raise InvalidParams(f"{num} frames; a job may generate at most {limits.MAX_FRAMES} "
                                "(use frame_start / frame_end)", field="params.frame_end")
        files = [iuv_dir / f"{n:06d}.png" for n in range(num)]
        missing = [n for n in range(num) if not (files[n].is_file() and (preview_dir / files[n].name).is_file())]
        self.store.update(self.id, frames_total=num, posemaps_done=num - len(missing), width=size, height=size)
        if not missing:
            return files, fps, plan
        self.progress.set_stage("posemaps", num - len(missing), num)

        def publish(n: int, iuv: np.ndarray) -> None:
            write_iuv_png(files[n], iuv)
            write_rgb_png(preview_dir / files[n].name, colorize_iuv(iuv))
            done = num - len(missing) + missing.index(n) + 1
            self.store.update(self.id, posemaps_done=done)
            self.progress("posemaps", done, num)
            self.check_cancel()

        if clip is None:
            # Uploaded maps keep their size: the Animator resizes them NEAREST, as for `btdm animate --posemaps`.
            for n in missing:
                publish(n, read_iuv_png(sources[n]))
        else:
            from btdm_engine.body.model import load_body_model  # lazy: torch
            from btdm_engine.posemaps.renderer import IUVRenderer  # lazy: pyrender

            body = load_body_model(clip.body_model)
            with IUVRenderer(body, size, size) as renderer:
                for n, iuv in zip(missing, renderer.render_clip(clip, size=size, progress=False, frames=missing)):
                    publish(n, iuv)
        return files, fps, plan


class WorkerPool:
    """Several :class:`Worker` threads sharing one queue (``btdm serve --workers N``, ``--device cuda:0,cuda:1``):
    each claims the next job from the store (atomically: one job, one worker) and runs it on its own
    registry's device with its own loaded models. Answers what the app and ``btdm serve`` ask of a worker:
    start, stop, cancel, abandon, health (the members' together, and each one's), ``store_error``."""

    def __init__(self, members: list[Worker]) -> None:
        if not members:
            raise ValueError("a worker pool needs at least one worker")
        self.members = list(members)
        self.store = members[0].store
        self.registry = members[0].registry  # the API's view of the models (every member offers the same)

    def workers(self) -> list[Worker]:
        return list(self.members)

    def start(self, preload: tuple[str, ...] = ()) -> None:
        for worker in self.members:
            worker.start(preload)

    def stop(self, timeout: float = 30.0) -> None:
        self.signal_stop()  # all interrupted at once, then joined
        deadline = time.monotonic() + timeout
        for worker in self.members:
            worker.stop(max(0.0, deadline - time.monotonic()))

    def signal_stop(self) -> None:
        for worker in self.members:
            worker.signal_stop()

    def cancel(self, job_id: str) -> None:
        for worker in self.members:
            worker.cancel(job_id)

    abandon = Worker.abandon

    @property
    def store_error(self) -> str | None:
        return next((w.store_error for w in self.members if w.store_error is not None), None)

    @property
    def metrics(self) -> Any:
        return self.members[0].metrics

    @metrics.setter
    def metrics(self, value: Any) -> None:
        for worker in self.members:
            worker.metrics = value

    def health(self) -> dict[str, Any]:
        """The pool as one worker: alive while every member is, running while any runs a job."""
        each = [w.health() for w in self.members]
        alive = all(h["alive"] for h in each)
        running = next((h["job"] for h in each if h["job"] is not None), None)
        state = ("stopped" if not any(h["alive"] for h in each) else
                 "store_error" if any(h["state"] == "store_error" for h in each) else
                 "running" if running else "idle")
        last_error = next((h["last_error"] for h in each if h["last_error"]), None)
        return {"alive": alive, "state": state, "job": running, "last_error": last_error,
                "device": ",".join(dict.fromkeys(h["device"] for h in each)), "name": "pool"}


def wants_plates(params: dict[str, Any], inputs: dict[str, Any]) -> bool:
    """Plates (``btdm_engine.motion.shot``) for ``params.plate`` true, or by default for a shot camera
    (a skeleton animation's ``cam_*``) or a camera that is not square; pose-map uploads never have them."""
    if inputs.get("source") == "posemaps":
        return False
    if params.get("plate") is not None:
        return bool(params["plate"])
    return bool(inputs.get("camera")) or inputs.get("width") != inputs.get("height")


def _frame_range(params: dict[str, Any], num: int) -> tuple[int, int]:
    start, end = params["frame_start"], params.get("frame_end")
    stop = num if end is None else end
    if start >= num:
        raise InvalidParams(f"frame_start {start} is past the source's last frame ({num - 1})",
                            field="params.frame_start")
    if stop > num or stop <= start:
        raise InvalidParams(f"frame_end {end} must lie in {start + 1}..{num}", field="params.frame_end")
    return start, stop


def remove_job_files(store: JobStore, job_id: str) -> None:
    shutil.rmtree(store.job_dir(job_id), ignore_errors=True)
