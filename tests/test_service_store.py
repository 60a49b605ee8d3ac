"""The engine service's job store and inputs, as plain Python (no server, no HTTP)."""

from __future__ import annotations

import io
import sqlite3
import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from btdm_engine.service.errors import PayloadTooLarge, ServiceError
from btdm_engine.service.inputs import extract_posemaps, png_size, save_upload
from btdm_engine.service.store import MAX_ATTEMPTS, JobStore, new_job_id


def test_store_wal_transitions_and_recovery(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    assert sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    a, b, c = (store.create(new_job_id(), params={"n": i}, source="motion", inputs={})["id"] for i in range(3))
    assert store.counts()["queued"] == 3
    assert store.claim_next()["id"] == a  # oldest first
    assert store.cancel_queued(a) is None  # running: not cancellable as queued
    assert store.cancel_queued(c)["state"] == "cancelled"
    store.update(a, attempts=MAX_ATTEMPTS)
    store.claim_next()  # b
    store.close()
    # A crash leaves a and b running: b goes back to the queue, a has used its attempts.
    store = JobStore(tmp_path)
    assert store.recover() == [b]
    assert store.get(a)["state"] == "failed" and "3 runs" in store.get(a)["error"]
    assert store.get(b)["state"] == "queued" and store.get(b)["params"] == {"n": 1}
    assert [j["id"] for j in store.list()] == [c, b, a]  # newest first
    with pytest.raises(KeyError):
        store.update(b, id="x")
    with pytest.raises(ValueError):
        store.job_dir("../x")


def test_finished_jobs_expire_with_their_folders_and_nothing_else(tmp_path: Path) -> None:
    import time

    store = JobStore(tmp_path)
    ids = {name: store.create(new_job_id(), params={}, source="motion", inputs={})["id"]
           for name in ("old_done", "old_failed", "new_done", "running", "queued")}
    for job_id in ids.values():
        (store.job_dir(job_id) / "frames").mkdir(parents=True)
        (store.job_dir(job_id) / "frames" / "000000.png").write_bytes(b"png")
    now = time.time()
    store.transition(ids["old_done"], "succeeded", finished=now - 8 * 86400)
    store.transition(ids["old_failed"], "failed", finished=now - 8 * 86400)
    store.transition(ids["new_done"], "succeeded", finished=now - 86400)
    store.transition(ids["running"], "running", started=now - 30 * 86400)  # old but not finished: kept
    (tmp_path / "jobs" / "notes.txt").write_text("kept")
    gone = store.expire(7 * 86400, now=now)
    assert sorted(gone) == sorted([ids["old_done"], ids["old_failed"]])
    assert {j["id"] for j in store.list()} == {ids["new_done"], ids["running"], ids["queued"]}
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == sorted(
        [ids["new_done"], ids["running"], ids["queued"], "notes.txt"])
    assert store.expire(7 * 86400, now=now) == []


def test_store_one_writer_under_threads(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    ids = [store.create(new_job_id(), params={}, source="motion", inputs={})["id"] for _ in range(8)]

    def hammer(job_id: str) -> None:
        for step in range(50):
            store.update(job_id, step=step)
            store.get(job_id)

    threads = [threading.Thread(target=hammer, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(store.get(i)["step"] == 49 for i in ids)
    assert store.version(ids[0]) == 51


def zip_members(members: dict[str, bytes]) -> bytes:
    """A zip of ``{name: bytes}`` (also the views and pose-map zips of tests/test_service.py)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _iuv_png(size: int = 8, part: int = 1) -> bytes:
    iuv = np.zeros((size, size, 3), np.uint8)
    iuv[2:5, 2:5] = (part, 10, 20)
    return cv2.imencode(".png", np.ascontiguousarray(iuv[..., ::-1]))[1].tobytes()


def test_posemap_zip_rules(tmp_path: Path) -> None:
    good = tmp_path / "good.zip"
    good.write_bytes(zip_members({"maps/000010.png": _iuv_png(), "maps/2.png": _iuv_png(part=2)}))
    info = extract_posemaps(good, tmp_path / "out", "btdm")
    assert info == {"frames": 2, "width": 8, "height": 8}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["000000.png", "000001.png"]
    bad = {
        "traversal": {"../000000.png": _iuv_png()},
        "absolute": {"/000000.png": _iuv_png()},
        "name": {"frame.png": _iuv_png()},
        "duplicate": {"a/1.png": _iuv_png(), "b/01.png": _iuv_png()},
        "size": {"0.png": _iuv_png(8), "1.png": _iuv_png(16)},
        "labels": {"0.png": cv2.imencode(".png", np.full((8, 8, 3), 99, np.uint8))[1].tobytes()},
        "not png": {"0.png": b"GIF89a"},
    }
    for label, members in bad.items():
        path = tmp_path / f"{label}.zip"
        path.write_bytes(zip_members(members))
        with pytest.raises(ServiceError) as exc:
            extract_posemaps(path, tmp_path / label, "btdm")
        assert exc.value.field == "posemaps", label
        assert not (tmp_path / label).exists(), label
        if label in ("traversal", "absolute"):
            assert "points outside the zip" in str(exc.value), (label, str(exc.value))


def test_upload_limits_and_png_header(tmp_path: Path) -> None:
    with pytest.raises(PayloadTooLarge):
        save_upload(io.BytesIO(b"\0" * (16 << 20 | 1)), tmp_path / "a.png", "appearance")
    assert not list(tmp_path.iterdir())  # nothing half-written stays
    with pytest.raises(ServiceError, match="empty"):
        save_upload(io.BytesIO(b""), tmp_path / "a.png", "appearance")
    huge = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\x0dIHDR" + (100000).to_bytes(4, "big") * 2
    with pytest.raises(ServiceError, match="each side"):
        png_size(huge, "appearance")
    assert png_size(_iuv_png(8), "x") == (8, 8)
