"""Jobs on a Ray cluster (``btdm serve --ray ADDRESS``): the service stays the one API, Ray runs the jobs.

One :class:`JobRunner` actor per GPU of the cluster (``num_gpus=1``), or one per CPU node where the
cluster has no GPU; each holds its models (its own :class:`~.worker.ModelRegistry`) and runs one job
at a time with the very code of the in-process worker (:class:`~.worker.Worker` on a
:class:`~.store.JobStore` of its own, in a temporary folder on its node), so a job's frames are the
same wherever it runs. On the server, one :class:`RayWorker` thread per actor claims jobs from the
server's queue as an in-process worker does, and for each:

1. sends the actor the job row and every file of the job folder (the uploads, and whatever a
   previous run left: pose maps, ``low.npy``, frames: the actor resumes from them);
2. polls the actor (twice a second) for the job's progress and the files written since the last
   poll (row first, then files, so the frames a row counts are always among the files), writes
   them atomically into the server's job folder and updates the job row: the API serves frames as
   they appear, as with a local worker;
3. passes a cancel on, and ends the job as the actor's run ended (succeeded, failed, cancelled).

A node lost mid-job (its actor dies) ends the run with :class:`~.worker.RunLost`: the job goes back
to the queue with the files synced so far, another actor takes it and resumes, and nothing the API
already served is lost or changed. The lost actor is restarted by Ray (``max_restarts=-1``, on any
node with room); until it answers again its :class:`RayWorker` claims nothing. The actors are not
detached: they end with the server.

The model folders (``--model NAME=DIR``) must be readable at the same path on every node (the
embedded model ships with the package); the nodes run the same installation as the server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from btdm_engine.fileio import atomic_write_bytes
from btdm_engine.service.errors import ServiceError
from btdm_engine.service.store import JobStore
from btdm_engine.service.worker import JobCancelled, ModelRegistry, RunLost, Worker

logger = logging.getLogger(__name__)

POLL_S = 0.5
"""How often a :class:`RayWorker` asks its actor for progress and new files."""
LOAD_S = 600.0
"""How long a :class:`RayWorker` waits at start for its actor to load the preloaded models."""
PING_S = 5.0
"""How long an idle :class:`RayWorker` waits for its actor to answer before it counts it as unavailable."""
_PROGRESS = ("stage", "step", "total", "frames_done", "frames_total", "posemaps_done", "eta_s", "has_video",
             "has_plates", "plate_width", "plate_height", "width", "height")


def _files(folder: Path, skip: Callable[[str, os.stat_result], bool] = lambda rel, st: False) -> dict[str, bytes]:
    """Every finished file under ``folder`` (hidden names: files being written) -> bytes, by relative path."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in Path(rel).parts):
            st = path.stat()
            if not skip(rel, st):
                found[rel] = path.read_bytes()
    return found


class JobRunner:
    """The Ray actor: one job at a time, in its own folder and store, with the in-process worker's code."""

    def __init__(self, models: dict[str, str], device: str, threads: int | None = None) -> None:
        self.threads = threads
        self.folder = Path(tempfile.mkdtemp(prefix="btdm-ray-"))
        self.store = JobStore(self.folder)
        self.registry = ModelRegistry.with_default(device, {name: Path(path) for name, path in models.items()})
        self.worker = Worker(self.store, self.registry, name="ray-runner")
        self._sent: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) the server has
        self._lock = threading.Lock()

    def node(self) -> str:
        import ray  # lazy: optional (the ray extra)

        return ray.get_runtime_context().get_node_id()

    def load(self, names: list[str]) -> list[str]:
        self._threads()
        for name in names:
            self.registry.load(name)
        return names

    def _threads(self) -> None:
        """torch's thread count is per thread, and an actor's calls run on a pool of threads: set it on each."""
        if self.threads is not None:
            import torch  # lazy: only the actor runs models (the API's import stays torch-free)

            torch.set_num_threads(self.threads)

    def run(self, job: dict[str, Any], files: dict[str, bytes]) -> dict[str, Any]:
        """Run ``job`` (a server row) from ``files`` (its folder); the final row and the files not yet sent."""
        self._threads()
        job_id = job["id"]
        folder = self.store.job_dir(job_id)
        with self._lock:
            self.store.delete(job_id)
            shutil.rmtree(folder, ignore_errors=True)
            self._sent = {}
            for rel, data in files.items():
                path = folder / rel
                if not path.resolve().is_relative_to(folder.resolve()):
                    raise ValueError(f"not a job file: {rel!r}")
                atomic_write_bytes(path, data)
                st = path.stat()
                self._sent[rel] = (st.st_size, st.st_mtime_ns)
            self.store.create(job_id, params=job["params"], source=job["source"], inputs=job["inputs"],
                              retarget=job.get("retarget"))
            claimed = self.store.claim_next(job.get("worker"))
        assert claimed is not None and claimed["id"] == job_id
        try:
            self.worker.run_claimed(claimed)
            return self.poll(job_id)
        finally:
            with self._lock:
                self.store.delete(job_id)
                shutil.rmtree(folder, ignore_errors=True)

    def poll(self, job_id: str) -> dict[str, Any]:
        """The job's row, then the files written or changed since the last poll (so the row never counts a
        frame that is not among the files the server has)."""
        with self._lock:
            row = self.store.get(job_id)
            folder = self.store.job_dir(job_id)
            if row is None or not folder.is_dir():
                return {"job": row, "files": {}}
            files = _files(folder, lambda rel, st: self._sent.get(rel) == (st.st_size, st.st_mtime_ns))
            for rel in files:
                st = (folder / rel).stat()
                self._sent[rel] = (st.st_size, st.st_mtime_ns)
        return {"job": row, "files": files}

    def cancel(self, job_id: str) -> None:
        self.worker.cancel(job_id)


class RayWorker(Worker):
    """A server-side worker thread whose jobs run on one :class:`JobRunner` actor (see the module docstring)."""

    def __init__(self, store: JobStore, registry: ModelRegistry, actor: Any, *, name: str, poll_s: float = 1.0,
                 keep_s: float | None = None) -> None:
        super().__init__(store, registry, poll_s=poll_s, keep_s=keep_s, name=name)
        self.actor = actor
        self.node: str | None = None
        self.available = False  # until the actor first answers (it loads torch and the models first)

    def _preload(self, names: tuple[str, ...]) -> None:
        import ray  # lazy: optional (the ray extra)

        try:
            ray.get(self.actor.load.remote(list(names)), timeout=LOAD_S)
        except ray.exceptions.RayError as exc:  # the actor cannot be placed, or the model not loaded: jobs will say
            logger.error("%s: could not load %s on its Ray actor: %s", self.name, ", ".join(names), exc)

    def _ready(self) -> bool:
        import ray  # lazy: optional (the ray extra)

        try:
            self.node = ray.get(self.actor.node.remote(), timeout=PING_S)
            self.available = True
        except ray.exceptions.RayError:  # restarting after its node died, or none has room for it yet
            if self.available:
                logger.warning("%s: its Ray actor does not answer; taking no job until it does", self.name)
            self.node = None
            self.available = False
        return self.available

    def where(self) -> str:
        return f"ray:{(self.node or 'pending')[:12]}"

    def _run(self, job: dict[str, Any], is_cancelled: Callable[[], bool]) -> None:
        import ray  # lazy: optional (the ray extra)

        job_id = job["id"]
        folder = self.store.job_dir(job_id)
        ref = self.actor.run.remote(job, _files(folder))
        cancel_sent = False
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_S)
                if ready:
                    result = ray.get(ref)
                    break
                if is_cancelled() and not cancel_sent:
                    self.actor.cancel.remote(job_id)
                    cancel_sent = True
                self._apply(job, ray.get(self.actor.poll.remote(job_id), timeout=60))
        except ray.exceptions.RayTaskError as exc:  # the actor's code raised: this job's failure, a bug
            raise ServiceError(f"the Ray actor failed: {type(exc.cause).__name__}: {exc.cause}") from None
        except ray.exceptions.RayError as exc:  # the actor or its node is gone (or unreachable for now)
            with contextlib.suppress(ray.exceptions.RayError):  # if it is only unreachable: stop its run there
                self.actor.cancel.remote(job_id)
            raise RunLost(f"its Ray actor on node {(self.node or '?')[:12]} was lost ({type(exc).__name__})") from None
        self._apply(job, result)
        row = result["job"]
        if row["state"] == "cancelled":
            raise JobCancelled("cancelled")
        if row["state"] == "failed":
            raise ServiceError(row["error"] or "failed on the Ray actor")
        if row["state"] != "succeeded":
            raise RunLost(f"the Ray actor's run ended {row['state']}")

    def _apply(self, job: dict[str, Any], update: dict[str, Any]) -> None:
        """The actor's files into the server's job folder (atomically), then its progress into the job row."""
        folder = self.store.job_dir(job["id"])
        for rel, data in update["files"].items():
            path = folder / rel
            if not path.resolve().is_relative_to(folder.resolve()):
                raise ServiceError(f"the Ray actor sent a file outside the job: {rel!r}")
            atomic_write_bytes(path, data)
        row = update["job"]
        if row is None:
            return
        before = self.store.get(job["id"])
        new_frames = row["frames_done"] - (before["frames_done"] if before else 0)
        self.store.update(job["id"], **{key: row[key] for key in _PROGRESS})
        for _ in range(max(0, new_frames)):
            self.frame_written(job["params"])


def start_ray_workers(address: str, store: JobStore, registry: ModelRegistry, models: dict[str, Path], *,
                      keep_s: float | None = None) -> tuple[list[RayWorker], str]:
    """Connect to the cluster at ``address`` and make one actor per GPU (or per CPU node without GPUs) and one
    :class:`RayWorker` for each; the workers and a description of where they run."""
    import ray  # lazy: optional (the ray extra)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # lazy: optional (the ray extra)

    if not ray.is_initialized():
        ray.init(address=address, namespace="btdm-serve", log_to_driver=False, configure_logging=False)
    runner = ray.remote(max_restarts=-1, max_task_retries=0, max_concurrency=4)(JobRunner)
    paths = {name: str(Path(path).resolve()) for name, path in models.items()}
    actors, gpus, cpu_nodes = [], 0, 0
    for node in sorted((n for n in ray.nodes() if n.get("Alive")), key=lambda n: n["NodeID"]):
        resources = node.get("Resources", {})
        place = NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)  # soft: restarted elsewhere if it dies
        if int(resources.get("GPU", 0)) > 0:
            for _ in range(int(resources["GPU"])):
                actors.append(runner.options(num_gpus=1, num_cpus=0, scheduling_strategy=place).remote(paths, "cuda"))
                gpus += 1
        elif int(resources.get("CPU", 0)) > 0:
            threads = int(resources["CPU"])
            actors.append(runner.options(num_cpus=1, scheduling_strategy=place).remote(paths, "cpu", threads))
            cpu_nodes += 1
    if not actors:
        raise RuntimeError(f"the Ray cluster at {address} has no node with a CPU or GPU to run jobs on")
    workers = [RayWorker(store, registry, actor, name=f"ray-{n}", keep_s=keep_s if n == 0 else None)
               for n, actor in enumerate(actors)]
    where = f"Ray cluster {address}: {len(actors)} actor(s)" + (f", {gpus} GPU(s)" if gpus else "") + (
        f", {cpu_nodes} CPU node(s)" if cpu_nodes else "")
    return workers, where


__all__ = ["JobRunner", "RayWorker", "start_ray_workers"]
