"""``GET /metrics``: the service in Prometheus' text format (the ``prometheus-client`` package).

One :class:`ServiceMetrics` per app, with its own ``CollectorRegistry`` (two apps in one process, as
in the tests, never share a metric). What a scrape reads:

- from the job store, at scrape time: ``btdm_jobs{state}`` (jobs by state) and ``btdm_queue_depth``
  (queued jobs), ``btdm_store_ok`` (0 while the store's last write failed);
- from the workers, at scrape time: ``btdm_workers`` (started), ``btdm_workers_up`` (threads alive),
  ``btdm_workers_busy`` (running a job);
- counted by the workers as they go (this process's lifetime): ``btdm_frames_generated_total{model,
  method}`` (every frame written), ``btdm_seconds_per_frame{model, method}`` (a histogram: each
  succeeded run's wall time over the frames it wrote), ``btdm_job_runs_total{state}`` (runs ended,
  by the state they ended in).

The workers report through :meth:`frame_written` and :meth:`run_ended` (the worker holds a
``metrics`` attribute, None without an app), so :mod:`.worker` needs no Prometheus import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from btdm_engine.service.schemas import FINAL_STATES

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text exposition format, which every Prometheus scrapes."""

SECONDS_PER_FRAME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0)


class _Live(Collector):
    """The gauges read when scraped: the store's counts and the workers' states."""

    def __init__(self, store: Any, workers: Callable[[], list[dict[str, Any]]], store_error: Callable[[], Any]) -> None:
        self.store, self.workers, self.store_error = store, workers, store_error

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("btdm_jobs", "jobs in the store by state", labels=["state"])
        try:
            counts = self.store.counts()
            readable = True
        except Exception as exc:  # a broken store is what a scrape must show, not a 500
            logger.warning("metrics: the job store cannot be read: %s", exc)
            counts, readable = {}, False
        for state in ("queued", "running", *FINAL_STATES):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily("btdm_queue_depth", "jobs waiting for a worker", value=counts.get("queued", 0))
        yield GaugeMetricFamily("btdm_store_ok", "1 while the job store reads and writes; 0 after a failed write",
                                value=1 if readable and self.store_error() is None else 0)
        health = self.workers()
        yield GaugeMetricFamily("btdm_workers", "workers this server started", value=len(health))
        yield GaugeMetricFamily("btdm_workers_up", "worker threads alive", value=sum(h["alive"] for h in health))
        yield GaugeMetricFamily("btdm_workers_busy", "workers running a job",
                                value=sum(h["state"] == "running" for h in health))


class ServiceMetrics:
    """The metrics of one app (see the module docstring)."""

    def __init__(self, store: Any, workers: Callable[[], list[dict[str, Any]]],
                 store_error: Callable[[], Any] = lambda: None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.frames = Counter("btdm_frames_generated", "frames written by the workers (this process)",
                              ["model", "method"], registry=self.registry)
        self.seconds_per_frame = Histogram("btdm_seconds_per_frame", "a succeeded run's wall seconds over the frames "
                                           "it wrote", ["model", "method"], buckets=SECONDS_PER_FRAME_BUCKETS,
                                           registry=self.registry)
        self.runs = Counter("btdm_job_runs", "job runs ended (this process), by the state they ended in", ["state"],
                            registry=self.registry)
        self.registry.register(_Live(store, workers, store_error))

    # -- what the workers report
    def frame_written(self, model: str, method: str) -> None:
        self.frames.labels(model, method).inc()

    def run_ended(self, state: str, model: str, method: str, seconds: float, frames: int) -> None:
        self.runs.labels(state).inc()
        if state == "succeeded" and frames > 0:
            self.seconds_per_frame.labels(model, method).observe(seconds / frames)

    def render(self) -> bytes:
        return generate_latest(self.registry)


__all__ = ["CONTENT_TYPE", "ServiceMetrics"]
