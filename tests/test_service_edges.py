"""The service's memory and network edges (issue 23): decompression bombs, params that used to give
a 500, limits enforced while a body streams, slow uploads, Host / Origin in the no-token mode.

Real servers: `btdm serve` subprocesses on loopback (test_service.Server), and for the checks that
need shorter time limits than a server's minute, the real app under a real uvicorn in this process
with those limits lowered. Nothing asserts a duration.
"""

from __future__ import annotations

import http.client
import io
import json
import select
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from test_service import FAST, TOKEN, Server

from btdm_bridge.engine_client import EngineClient, _multipart
from btdm_engine.service import limits
from btdm_engine.service.errors import PayloadTooLarge, ServiceError
from btdm_engine.service.inputs import check_npz, extract_posemaps


# ---------------------------------------------------------------------------- files that declare more than they hold
def npy_header_only(shape: tuple[int, ...], descr: object, payload: bytes = b"\0" * 64) -> bytes:
    """An .npy member whose header declares ``shape`` of ``descr`` but that holds only ``payload``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def npz_of(members: dict[str, bytes], real: dict[str, np.ndarray] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, array in (real or {}).items():
            member = io.BytesIO()
            np.save(member, array, allow_pickle=False)
            z.writestr(f"{name}.npy", member.getvalue())
        for name, data in members.items():
            z.writestr(f"{name}.npy", data)
    return buf.getvalue()


def zero_png(width: int, height: int, depth: int = 8, colour: int = 2) -> bytes:
    """A real, valid all-zero PNG, compressed row block by row block (a 16-bit 4096 px one is ~100 KB)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row = b"\0" * (1 + width * channels * depth // 8)
    comp = zlib.compressobj(9)
    block = row * 64
    idat = b"".join(comp.compress(block) for _ in range(height // 64)) + comp.compress(row * (height % 64))
    idat += comp.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_npz_declared_sizes_are_refused_from_the_headers(tmp_path: Path) -> None:
    cases = {
        # the 1.8 MiB motion: poses (T, 24, 3200000)
        "poses": ("motion", {"poses": npy_header_only((60, 24, 3_200_000), "<f4")}),
        "240 GB": ("motion", {"poses": npy_header_only((1_000_000, 24, 10_000), "<f8")}),
        # a scalar typed |V400000000 is 400 MB though it has one element
        "void fps": ("skeleton", {"fps": npy_header_only((), "|V400000000")}),
        "structured": ("skeleton", {"frames": npy_header_only((1000,), [("m", "<f8", (1000, 1000))])}),
        "sub-array": ("motion", {"trans": npy_header_only((10,), "(5000,5000)<f8")}),
        "together": ("motion", {f"a{i}": npy_header_only((40 * limits.MiB,), "|u1") for i in range(8)}),
    }
    for label, (field, members) in cases.items():
        path = tmp_path / f"{label}.npz"
        path.write_bytes(npz_of(members))
        with pytest.raises(PayloadTooLarge) as info:
            check_npz(path, field)
        assert info.value.field == field and info.value.status == 413, label
        assert "array" in info.value.message and ("MiB" in info.value.message or "bytes" in info.value.message), label
    obj = tmp_path / "object.npz"
    obj.write_bytes(npz_of({"poses": npy_header_only((3,), "|O")}))
    with pytest.raises(ServiceError, match="Python objects") as info:
        check_npz(obj, "motion")
    assert info.value.status == 400
    ok = tmp_path / "ok.npz"
    ok.write_bytes(npz_of({}, {"poses": np.zeros((30, 24, 3), np.float32)}))
    assert check_npz(ok, "motion") == 30 * 24 * 3 * 4


def test_pose_map_zips_are_budgeted_from_the_png_headers(tmp_path: Path) -> None:
    # ten all-background 4096 px maps in a small zip: refused at the first header, nothing decoded
    big = zero_png(4096, 4096)
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n in range(10):
            z.writestr(f"{n:06d}.png", big)
    with pytest.raises(ServiceError, match="each side must be 1..1024") as info:
        extract_posemaps(path, tmp_path / "out", "btdm")
    assert info.value.field == "posemaps" and not (tmp_path / "out").exists()
    # maps of an allowed side whose total decoded size is over the budget
    side = limits.MAX_POSEMAP_SIDE
    many = limits.MAX_POSEMAPS_DECODED_BYTES // (side * side * 4) + 1
    small = zero_png(side, side, colour=6)
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for n in range(many):
            z.writestr(f"{n:06d}.png", small)
    with pytest.raises(PayloadTooLarge, match="decode to more than") as info:
        extract_posemaps(path, tmp_path / "out", "btdm")
    assert info.value.field == "posemaps" and not (tmp_path / "out").exists()


def test_a_zip_of_countless_entries_is_refused_from_its_end_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # zipfile makes an object per directory entry while it opens a zip: a small upload of empty entries
    # would cost seconds and memory before any member count could refuse it. The directory's size, from
    # the end record, refuses it first. (A lowered limit, so that the zip is small: 400 folder entries.)
    monkeypatch.setattr(limits, "MAX_POSEMAP_MEMBERS", 2)
    path = tmp_path / "folders.zip"
    with zipfile.ZipFile(path, "w") as z:
        for n in range(400):
            z.writestr(zipfile.ZipInfo(f"{n:04d}/" + "x" * 200 + "/"), b"")
        z.writestr("000000.png", zero_png(8, 8))
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", lambda self: opened.append(self))
    with pytest.raises(PayloadTooLarge, match=r"posemaps: the zip's directory is [\d,]+ bytes, more than 69,632 for at "
                                              r"most 2 files") as info:
        extract_posemaps(path, tmp_path / "out", "btdm")
    assert info.value.field == "posemaps" and opened == [] and not (tmp_path / "out").exists()


def test_the_directory_size_is_read_from_the_zip64_end_record_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from btdm_engine.service.inputs import _directory_size

    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 4)  # zipfile writes ZIP64 end records past this count
    path = tmp_path / "z64.zip"
    with zipfile.ZipFile(path, "w") as z:
        for n in range(6):
            z.writestr(f"{n:06d}.png", b"")
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    assert data.rfind(b"PK\x06\x06") >= 0 and data.rfind(b"PK\x06\x07") >= 0  # ZIP64 end record and locator
    size = struct.unpack_from("<L", data, end + 12)[0]
    assert _directory_size(path) == size == 6 * (46 + 10)
    struct.pack_into("<L", data, end + 12, 0xFFFFFFFF)  # the old record defers to the ZIP64 one, as big archives do
    path.write_bytes(bytes(data))
    assert _directory_size(path) == size
    (tmp_path / "nothing.zip").write_bytes(b"not a zip at all")
    assert _directory_size(tmp_path / "nothing.zip") is None


# ---------------------------------------------------------------------------- against a real server
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = Server(tmp_path_factory.mktemp("serve-edges") / "data").start()
    yield srv
    srv.stop()


def post(url: str, headers: dict[str, str] | None = None, **files: bytes | str) -> tuple[int, dict]:
    fields = {k: v for k, v in files.items() if isinstance(v, str)}
    blobs = {k: (f"{k}.bin", v, "application/octet-stream") for k, v in files.items() if isinstance(v, bytes)}
    body, ctype = _multipart(fields, blobs)
    request = urllib.request.Request(url + "/v1/jobs", data=body, method="POST",
                                     headers={"Content-Type": ctype, **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(url: str, path: str, headers: dict[str, str]) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url + path, headers=headers), timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_bombs_and_bad_params_get_a_4xx_naming_the_field(server: Server, clip_file: Path) -> None:
    motion = clip_file.read_bytes()
    skeleton_fps = npz_of({"fps": npy_header_only((), "|V400000000")})
    cases = [
        ({"motion": npz_of({"poses": npy_header_only((60, 24, 3_200_000), "<f4")})}, 413, "motion", "'poses'"),
        ({"motion": npz_of({"poses": npy_header_only((1_000_000, 24, 10_000), "<f8")})}, 413, "motion", "TiB"),
        ({"skeleton": skeleton_fps}, 413, "skeleton", "'fps' declares elements of 400,000,000 bytes"),
        ({"motion": motion, "appearance": zero_png(4096, 4096, depth=16)}, 413, "appearance", "8-bit"),
        ({"motion": motion, "params": "[" * 20_000 + "]" * 20_000}, 422, "params", "nested"),
        ({"motion": motion, "params": '{"seed": ' + "7" * 5000 + "}"}, 422, "params", "digits"),
        ({"motion": motion, "params": '{"eta": ' + "7" * 4000 + "}"}, 422, "params.eta", "out of range"),
        ({"motion": motion, "params": '{"bone_map": ' + '{"a":' * 3000 + "1" + "}" * 3000 + "}"}, 422, "params",
         "nested"),
    ]
    before = server.client().health()["queue"]
    for files, status, field, words in cases:
        code, body = post(server.url, **files)
        label = {k: (v[:30] if isinstance(v, str) else f"{len(v)} bytes") for k, v in files.items()}
        assert (code, body["error"]["field"]) == (status, field), (label, body)
        assert words in body["error"]["message"], (label, body)
    assert server.client().health()["queue"] == before
    # the server is whole: a valid job still runs
    assert server.client().wait(server.client().submit(motion=clip_file, params=FAST)["id"])["state"] == "succeeded"


def test_host_and_origin_in_the_no_token_mode(server: Server, clip_file: Path) -> None:
    port = server.port
    refused = [
        {"Host": "rebind.evil.example"},
        {"Host": f"rebind.evil.example:{port}"},
        {"Host": f"127.0.0.1:{port + 1}"},
        {"Origin": "http://evil.example"},
        {"Origin": f"http://127.0.0.1:{port + 1}"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ]
    jobs = len(server.client().jobs())
    for headers in refused:
        for path in ("/v1/health", "/v1/jobs"):
            code, body = get(server.url, path, headers)
            assert code == 403 and body["error"]["field"] in ("Host", "Origin"), (headers, path, body)
        code, body = post(server.url, headers, motion=clip_file.read_bytes(), params=json.dumps(FAST))
        assert code == 403, (headers, body)
    assert len(server.client().jobs()) == jobs
    for headers in ({"Host": f"localhost:{port}"}, {"Host": f"[::1]:{port}"}, {"Origin": f"http://127.0.0.1:{port}"},
                    {"Origin": f"http://localhost:{port}", "Sec-Fetch-Site": "same-origin"}):
        code, body = get(server.url, "/v1/jobs", headers)
        assert code == 200, (headers, body)
    assert EngineClient(server.url).health()["auth"] is False  # the add-on's client sends neither


def _raw_request(port: int, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(head.encode("latin-1"))
    return sock


def _response(sock: socket.socket) -> tuple[int, dict]:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, json.loads(response.read())


def test_the_token_is_checked_before_the_body_is_read(tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", token=TOKEN).start()
    try:
        # 100 MiB announced, 1 MiB sent: the 401 comes without the rest
        sock = _raw_request(srv.port, f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
                            "Content-Type: multipart/form-data; boundary=x\r\n"
                            f"Content-Length: {100 << 20}\r\n\r\n")
        sock.sendall(b"\0" * (1 << 20))
        status, body = _response(sock)
        sock.close()
        assert status == 401 and body["error"]["code"] == "unauthorized"
        assert list((srv.data / "jobs").iterdir()) == []
    finally:
        srv.stop()


def test_a_chunked_upload_over_its_field_limit_is_refused_as_it_streams(server: Server) -> None:
    limit = limits.MAX_UPLOAD_BYTES["motion"]
    sock = _raw_request(server.port, f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                        "Content-Type: multipart/form-data; boundary=xyz\r\nTransfer-Encoding: chunked\r\n\r\n")
    head = b'--xyz\r\nContent-Disposition: form-data; name="motion"; filename="m.npz"\r\n\r\n'
    sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
    block = b"\0" * (1 << 20)
    sent = 0
    answered = False
    while sent < 250 << 20:
        sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
        sent += len(block)
        if select.select([sock], [], [], 0)[0]:
            answered = True
            break
    if not answered:  # the answer may be under way as the last block went out
        answered = bool(select.select([sock], [], [], 30)[0])
    assert answered and sent < 250 << 20, "no answer while the body streamed"
    status, body = _response(sock)
    sock.close()
    assert status == 413 and body["error"]["field"] == "motion", body
    assert sent >= limit  # refused at the field's limit, not at the body's
    assert server.client().health()["status"] in ("ok", "degraded")


# ---------------------------------------------------------------------------- the real app, short time limits
class _InProcess:
    """The real app (no worker) under a real uvicorn on a loopback port, in a thread of this process."""

    def __init__(self, tmp_path: Path, **app_kw: object) -> None:
        import uvicorn

        from btdm_engine.service.app import create_app
        from btdm_engine.service.store import JobStore
        from btdm_engine.service.worker import ModelRegistry, Worker

        self.store = JobStore(tmp_path / "data")
        registry = ModelRegistry.with_default("cpu")
        app = create_app(self.store, Worker(self.store, registry), registry, start_worker=False, **app_kw)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.store.close()


def test_stalled_and_trickling_uploads_are_cut_and_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "BODY_IDLE_S", 3.0)
    monkeypatch.setattr(limits, "BODY_DEADLINE_S", 4.0)
    monkeypatch.setattr(limits, "MAX_CONCURRENT_UPLOADS", 2)
    srv = _InProcess(tmp_path)
    head = (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
            f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {1 << 20}\r\n\r\n--x\r\n")
    try:
        stalled = [_raw_request(srv.port, head) for _ in range(2)]
        time.sleep(1.0)  # both bodies are being read (no assertion on time: the order is what matters)
        third = _raw_request(srv.port, head)
        status, body = _response(third)
        assert status == 503 and body["error"]["code"] == "busy"
        for sock in stalled:  # silent: cut off
            status, body = _response(sock)
            assert status == 408 and body["error"]["code"] == "timeout", body
            sock.close()
        trickle = _raw_request(srv.port, head)
        status = None
        for _ in range(600):  # a byte every 50 ms: never idle, but far too slow
            if select.select([trickle], [], [], 0)[0]:
                status, body = _response(trickle)
                break
            trickle.sendall(b"a")
            time.sleep(0.05)
        trickle.close()
        assert status == 408, "a trickling upload was never cut off"
        assert list((srv.store.data / "jobs").iterdir()) == []
    finally:
        srv.close()
