"""Build a synthetic dataset: plan shards, run them in worker processes or on Ray, write the layout.

The dataset layout is ``training/dataset_format.py``'s (``manifest.json``, ``sequences/<id>/``).
How a build stays correct when interrupted or when a worker dies:

* a shard writes into ``<out>/.staging/sequences/<id>/`` and the builder, after the worker has
  exited successfully and the folder checks out (:meth:`SequenceRecord.from_folder`), renames it
  into ``<out>/sequences/<id>`` (``os.replace``, atomic on one filesystem). A folder under
  ``sequences/`` is therefore always a finished sequence; leftovers in ``.staging`` are discarded;
* the manifest is rewritten atomically after every finished sequence (``write_manifest``), with
  ``info.complete`` false until every planned shard is in; ``info.preset`` records the recipe, and
  a rerun with a different recipe into the same folder is refused;
* a rerun skips sequences that are already in the manifest (their files still present) and
  adopts finished folders that a crash left out of it (after hashing them);
* a failed shard (error or killed worker) is reported with the tail of its log; the others keep
  going and are kept; :class:`BuildFailed` lists what failed, and a rerun builds just those.

Workers: ``workers`` local processes (``python -m synthetic_data.shard``, one per shard, since bpy
holds global state), or Ray tasks when ``ray_address`` is given (each task runs the same worker
process on its node and ships the finished folder back as a tar archive, so nodes need no shared
filesystem).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from btdm_engine.errors import BtdmError
from btdm_engine.procs import die_with_parent, pid_alive, ray_connect
from synthetic_data.presets import Preset, Shard, plan
from synthetic_data.shard import SYNTH_VERSION, sequence_paths
from synthetic_data.spec import SpecError

__all__ = ["STAGING", "BuildFailed", "BuildReport", "ShardFailure", "build_dataset", "default_workers"]

STAGING = ".staging"
_LOG_TAIL = 1500


class BuildFailed(BtdmError, RuntimeError):
    """Some shards failed; finished ones are in the dataset, a rerun builds the rest."""

    def __init__(self, failures: Sequence[ShardFailure], out: Path):
        self.failures = list(failures)
        lines = [f"{len(self.failures)} shard(s) failed in {out} "
                 "(finished sequences are kept; rerun the same command to build the rest):"]
        for f in self.failures:
            lines.append(f"  {f.sequence_id}: {f.reason}")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ShardFailure:
    sequence_id: str
    reason: str
    log_tail: str = ""


@dataclass
class BuildReport:
    out: Path
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[ShardFailure] = field(default_factory=list)
    seconds: float = 0.0


def default_workers() -> int:
    """Local worker processes: one per two cores (Cycles and the cloth solver use threads too)."""
    return max(1, (os.cpu_count() or 1) // 2)


# ------------------------------------------------------------------------------ manifest
def _dataset_format():
    from training import dataset_format  # lazy: loads cv2; btdm --help imports this module

    return dataset_format


def _load_existing(out: Path, preset: Preset) -> dict[str, Any]:
    """Records already in the manifest, after checking the recipe matches."""
    fmt = _dataset_format()
    if not (out / fmt.MANIFEST_NAME).is_file():
        return {}
    manifest = fmt.DatasetManifest.load(out)
    version = manifest.info.get("synth_version")
    if version != SYNTH_VERSION:
        raise SpecError(
            f"{out / fmt.MANIFEST_NAME}: built by synthetic_data version {version!r}, this is version {SYNTH_VERSION} "
            "(sequences would not match); use another --out folder or delete it"
        )
    recorded = manifest.info.get("preset")
    if recorded is not None and recorded != preset.to_dict():
        raise SpecError(
            f"{out / fmt.MANIFEST_NAME}: this folder was built with a different recipe (preset {recorded.get('name')!r}); "
            "use another --out folder or delete it"
        )
    return dict(manifest.sequences)


def _write_manifest(out: Path, preset: Preset, shards: Sequence[Shard], records: dict[str, Any]) -> None:
    fmt = _dataset_format()
    done = [s for s in shards if s.sequence_id in records]
    if not done:
        return
    splits: dict[str, list[str]] = {"train": [], "test": []}
    for s in done:
        splits[s.split].append(s.sequence_id)
    pending = [s.sequence_id for s in shards if s.sequence_id not in records]
    info = {
        "generator": "btdm-synth",
        "synth_version": SYNTH_VERSION,
        "preset": preset.to_dict(),
        "complete": not pending,
        "pending": pending,
        "characters": {s.character.character_id: s.split for s in shards},
    }
    fmt.write_manifest(out, [records[s.sequence_id] for s in done], splits, preset.render.resolution, preset.fps, info)


def _record_from_folder(root: Path, shard: Shard):
    fmt = _dataset_format()
    return fmt.SequenceRecord.from_folder(root, shard.sequence_id, shard.character.character_id, shard.motion.name)


def _folder_complete(folder: Path, record: Any) -> bool:
    """Every file the manifest lists is present (cheap; checksums are checked by validate)."""
    return all((folder / rel).is_file() for rel in record.checksums)


# ------------------------------------------------------------------------------ running shards
Report = Callable[[str, int, int], None]


def _tail(path: Path) -> str:
    if not path.is_file():
        return ""
    data = path.read_bytes()[-_LOG_TAIL:]
    return data.decode("utf-8", errors="replace")


def _shard_command(job_path: Path, staging: Path, threads: int) -> list[str]:
    """The worker process that builds one shard (``python -m synthetic_data.shard``), locally or in a Ray task."""
    return [sys.executable, "-m", "synthetic_data.shard", "--job", str(job_path), "--staging", str(staging),
            "--threads", str(threads)]


def _run_local(shard: Shard, staging: Path, threads: int, report: Report, procs: dict[str, subprocess.Popen]) -> None:
    """Run one shard in a fresh Python process; raise RuntimeError on failure."""
    paths = sequence_paths(staging, shard.sequence_id)
    job_dir = staging / "jobs"
    job_dir.mkdir(parents=True, exist_ok=True)
    job_path = job_dir / f"{shard.sequence_id}.json"
    job_path.write_text(json.dumps(shard.to_job()), encoding="utf-8")
    paths["log"].parent.mkdir(parents=True, exist_ok=True)
    cmd = _shard_command(job_path, staging, threads)
    env = dict(os.environ)
    env.setdefault("PYOPENGL_PLATFORM", "egl")
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([repo, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    last_error = ""
    with open(paths["log"], "ab") as log:
        # The worker dies with this builder (SIGKILL included): none renders on into a staging folder a resumed build cleans.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env, preexec_fn=die_with_parent)
        procs[shard.sequence_id] = proc
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("PROGRESS "):
                    _, done, total = line.split()
                    report(shard.sequence_id, int(done), int(total))
                elif line.startswith("ERROR "):
                    last_error = line[6:].strip()
            code = proc.wait()
        finally:
            procs.pop(shard.sequence_id, None)
    if code != 0:
        if code < 0:
            reason = f"worker process {proc.pid} was killed by signal {signal.Signals(-code).name}"
        else:
            reason = f"worker process {proc.pid} exited with status {code}" + (f": {last_error}" if last_error else "")
        raise RuntimeError(reason)


def _ray_task(job: dict[str, Any], threads: int) -> bytes:
    """Run inside a Ray worker: the shard in its own process, the sequence folder back as a tar."""
    with tempfile.TemporaryDirectory(prefix="btdm-synth-") as tmp:
        staging = Path(tmp)
        job_path = staging / "job.json"
        job_path.write_text(json.dumps(job), encoding="utf-8")
        proc = subprocess.run(_shard_command(job_path, staging, threads), capture_output=True, text=True,
                              preexec_fn=die_with_parent)
        if proc.returncode != 0:
            log = staging / "logs" / f"{job['sequence_id']}.log"
            detail = (proc.stdout[-500:] + proc.stderr[-_LOG_TAIL:] + (_tail(log) if log.is_file() else ""))
            how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with status {proc.returncode}"
            raise RuntimeError(f"worker process {how} on {os.uname().nodename}:\n{detail}")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(staging / "sequences" / job["sequence_id"], arcname=job["sequence_id"])
        return buf.getvalue()


# ------------------------------------------------------------------------------ the build
def build_dataset(
    preset: Preset,
    out: str | os.PathLike[str],
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = True,
    only: Sequence[str] | None = None,
) -> BuildReport:
    """Build (or resume) ``preset`` into ``out``; see the module docstring.

    Args:
        workers: concurrent shards (local processes or Ray tasks in flight); default
            :func:`default_workers` locally, the cluster's CPU count / 2 on Ray.
        ray_address: a Ray cluster address (``"auto"``, ``"ray://host:10001"``, ``"local"`` to
            start one here); None runs local processes.
        progress: show a tqdm bar with the ETA.
        only: build just these sequence ids (others stay pending).

    Raises:
        BuildFailed: listing the shards that failed (the rest are in the dataset).
    """
    from tqdm import tqdm  # lazy: btdm --help imports this module (synthetic_data.command) and stays light

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards = plan(preset)
    by_id = {s.sequence_id: s for s in shards}
    if only is not None:
        unknown = [i for i in only if i not in by_id]
        if unknown:
            raise SpecError(f"unknown sequence id(s) {', '.join(unknown)}; this preset has {', '.join(list(by_id)[:6])} ...")
    if workers is not None and workers < 1:
        raise SpecError(f"workers must be >= 1, got {workers}")
    lock = _Lock(out)
    with lock:
        records = _load_existing(out, preset)
        report = BuildReport(out)
        seq_root = out / "sequences"
        seq_root.mkdir(exist_ok=True)
        # 1. What is finished: in the manifest with its files, or renamed in but not yet listed.
        for s in shards:
            folder = seq_root / s.sequence_id
            rec = records.get(s.sequence_id)
            if rec is not None and folder.is_dir() and _folder_complete(folder, rec):
                continue
            records.pop(s.sequence_id, None)
            if folder.is_dir():
                try:
                    records[s.sequence_id] = _record_from_folder(out, s)
                except ValueError:
                    shutil.rmtree(folder)  # damaged since it was finished: rebuild it
        _write_manifest(out, preset, shards, records)
        # 2. Nothing half-written survives from an interrupted run.
        staging = out / STAGING
        if (staging / "sequences").exists():
            shutil.rmtree(staging / "sequences")
        todo = [s for s in shards if s.sequence_id not in records and (only is None or s.sequence_id in only)]
        report.skipped = [s.sequence_id for s in shards if s.sequence_id in records]
        if not todo:
            report.seconds = time.perf_counter() - t0
            return report
        bar = tqdm(total=len(todo), unit="seq", desc=f"synth {preset.name}", disable=not progress, smoothing=0.1,
                   bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} seq [{elapsed}<{remaining}]")
        state_lock = threading.Lock()
        fractions: dict[str, float] = {}

        def on_progress(seq_id: str, done: int, total: int) -> None:
            with state_lock:
                fractions[seq_id] = done / max(total, 1)
                bar.n = len(report.built) + len(report.failed) + sum(fractions.values())
                bar.refresh()

        def finish(shard: Shard) -> None:
            record = _record_from_folder(staging, shard)
            os.replace(staging / "sequences" / shard.sequence_id, seq_root / shard.sequence_id)
            with state_lock:
                records[shard.sequence_id] = record
                report.built.append(shard.sequence_id)
                fractions.pop(shard.sequence_id, None)
                _write_manifest(out, preset, shards, records)

        def fail(shard: Shard, reason: str) -> None:
            with state_lock:
                fractions.pop(shard.sequence_id, None)
                log = sequence_paths(staging, shard.sequence_id)["log"]
                report.failed.append(ShardFailure(shard.sequence_id, reason.splitlines()[0] + f" (log: {log})", _tail(log)))
            bar.write(f"synth: shard {shard.sequence_id} failed: {reason.splitlines()[0]}")

        try:
            if ray_address is None:
                _run_all_local(todo, staging, workers or default_workers(), on_progress, finish, fail)
            else:
                _run_all_ray(todo, staging, ray_address, workers, on_progress, finish, fail)
        finally:
            bar.n = len(report.built) + len(report.failed)
            bar.refresh()
            bar.close()
        if not report.failed:
            shutil.rmtree(staging, ignore_errors=True)
        report.seconds = time.perf_counter() - t0
        if report.failed:
            raise BuildFailed(report.failed, out)
        return report


def _threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def _run_all_local(todo: Sequence[Shard], staging: Path, workers: int, on_progress, finish, fail) -> None:
    threads = _threads_per_worker(workers)
    procs: dict[str, subprocess.Popen] = {}

    def one(shard: Shard) -> None:
        try:
            _run_local(shard, staging, threads, on_progress, procs)
        except RuntimeError as exc:
            fail(shard, str(exc))
            return
        try:
            finish(shard)
        except ValueError as exc:  # the folder broke the layout: a bug, report it as a failure
            fail(shard, f"finished but invalid: {exc}")

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synth-shard")
    try:
        futures = [pool.submit(one, s) for s in todo]
        for f in as_completed(futures):
            f.result()
    except BaseException:
        # Interrupted: stop the workers we started; their staging folders are discarded next run.
        for proc in list(procs.values()):
            proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _run_all_ray(todo: Sequence[Shard], staging: Path, address: str, workers: int | None, on_progress, finish, fail) -> None:
    import ray  # lazy: ray is optional (the [ray] extra) and heavy

    started_here = ray_connect(address)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 2))
        in_flight = workers or max(1, cpus // 2)
        threads = max(1, cpus // in_flight) if address == "local" else 0
        # max_retries=0: a dead worker is reported, not silently retried; rerunning builds it.
        task = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        pending = list(todo)
        running: dict[Any, Shard] = {}
        while pending or running:
            while pending and len(running) < in_flight:
                s = pending.pop(0)
                running[task.remote(s.to_job(), threads)] = s
                on_progress(s.sequence_id, 0, 1)
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            shard = running.pop(ref)
            try:
                data = ray.get(ref)
            except Exception as exc:  # Ray wraps task errors and worker deaths in its own types
                fail(shard, f"Ray task failed: {exc}")
                continue
            dest = staging / "sequences"
            dest.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
                tar.extractall(dest, filter="data")
            try:
                finish(shard)
            except ValueError as exc:
                fail(shard, f"finished but invalid: {exc}")
    finally:
        if started_here:
            ray.shutdown()


class _Lock:
    """One build per dataset folder at a time (a pid file; a stale one from a dead build is taken over)."""

    def __init__(self, out: Path):
        self.path = out / ".build.lock"

    def __enter__(self) -> _Lock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or "0")
                except (OSError, ValueError):
                    pid = 0
                if pid and pid_alive(pid):
                    raise SpecError(f"{self.path}: another build (pid {pid}) is writing this dataset") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self
        raise SpecError(f"{self.path}: could not take the build lock")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


