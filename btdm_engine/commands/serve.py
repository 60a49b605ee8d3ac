"""``btdm serve``: the engine as an HTTP job service (API v1, :mod:`btdm_engine.service`).

Loopback without a token is the default; any other address needs a token (``--token`` or
``--token-file``), and the server refuses to start without one. Job state lives in SQLite under
``--data`` (default ``$BTDM_CACHE_DIR/serve``, i.e. ``~/.cache/btdm/serve``); a restart resumes
interrupted jobs. With ``--parent-pid`` the server ends with that process (:mod:`btdm_engine.service.lifeline`).
Heavy imports happen in :func:`run`.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from btdm_engine.cli import CliError
from btdm_engine.constants import THREADS_HELP
from btdm_engine.limits import DEFAULTS, JOB_LIMITS
from btdm_engine.service import limits
from btdm_engine.service.lifeline import ParentWatch

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_QUEUED = 100
DEFAULT_KEEP_DAYS = 7.0
MIN_TOKEN_CHARS = 16
MAX_WORKERS = 64


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand to the ``btdm`` dispatcher."""
    p = subparsers.add_parser(
        "serve",
        help="run the engine as an HTTP job service (for the Blender add-on, batches, remote GPUs)",
        description=(
            "Run the engine service (API v1): POST /v1/jobs with a motion clip, skeleton animation or pose "
            "maps; follow GET /v1/jobs/{id}/events; fetch frames, pose maps, plates and the video. One worker "
            "per device keeps the model loaded. Jobs survive restarts. See /openapi.json on the running server."
        ),
    )
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}; anything but loopback needs a token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token", default=None,
                       help="the admin bearer token (named 'admin': may do everything) every endpoint but /v1/health "
                       "requires (prefer --token-file: a command line is visible to other users)")
    token.add_argument("--token-file", default=None, metavar="FILE",
                       help="the tokens, from FILE: one token alone (the admin token), or one 'NAME ROLE TOKEN' line "
                       "per token, ROLE read (GET only: dashboards, metrics), submit (also submit, and cancel, retry, "
                       "delete its own jobs) or admin; '#' comments. A job records its token's NAME, never the token")
    p.add_argument("--read-token", default=None, metavar="TOKEN",
                   help="a read-only token (named 'read'), besides --token or --token-file: a dashboard can watch "
                   "the jobs and scrape /metrics but not submit, cancel or delete")
    p.add_argument("--ssl-certfile", default=None, metavar="PEM",
                   help="serve HTTPS with this certificate (chain) file, with --ssl-keyfile; for a box reached from "
                   "other machines (or put a TLS reverse proxy in front: docs/service.md)")
    p.add_argument("--ssl-keyfile", default=None, metavar="PEM", help="the certificate's private key (unencrypted)")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="job store and job files (default $BTDM_CACHE_DIR/serve, i.e. ~/.cache/btdm/serve)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda or cuda:N, or several CUDA devices 'cuda:0,cuda:1' (one worker on each, each "
                   "holding its models; default: cuda when available, else cpu)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the jobs on the Ray cluster at ADDRESS (host:port of its head, or 'auto'): one actor per "
                   "GPU holding the models, one per CPU node where there is no GPU; a node lost mid-job: the job "
                   "resumes on another (instead of --device / --workers; needs the ray extra)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="workers per device sharing the one queue (default 1). On the CPU the threads (--threads, "
                   "else every core) are split among them: a job uses fewer cores, more jobs run at once")
    p.add_argument("--max-queued", type=int, default=DEFAULT_MAX_QUEUED, metavar="N",
                   help=f"queued jobs beyond which POST /v1/jobs answers 429 (default {DEFAULT_MAX_QUEUED})")
    p.add_argument("--keep-days", type=float, default=DEFAULT_KEEP_DAYS, metavar="D",
                   help=f"remove finished jobs (inputs, frames, plates) D days after they ended; 0 keeps them "
                        f"(default {DEFAULT_KEEP_DAYS:g})")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help=THREADS_HELP)
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                   help="offer another model folder (btunet/ + its SR3 stages) under NAME; repeatable. The embedded "
                   "model is always offered as 'default'")
    p.add_argument("--preload", action="append", default=None, metavar="NAME",
                   help="load model NAME while the server starts (repeatable); default: the first offered ('default'); "
                   "'none': each model loads with the first job that asks for it")
    p.add_argument("--limit", action="append", default=[], metavar="NAME=N",
                   help="raise an engine limit on what uploads are read with (repeatable; names as for the other "
                        f"commands: frames, pixels, ...). A job's own limits are fixed: at most {limits.MAX_FRAMES} "
                        f"frames, {JOB_LIMITS['steps'][1]:g} steps, {JOB_LIMITS['finetune_steps'][1]:g} fine-tuning "
                        f"steps, {DEFAULTS['views']} further views (btdm_engine/limits.py, GET /v1/limits), "
                        f"{limits.MAX_REQUEST_BYTES >> 20} MiB per request "
                        "(btdm_engine/service/limits.py)")
    p.add_argument("--parent-pid", type=int, default=None, metavar="PID",
                   help="end with process PID (the Blender add-on passes its own): when it is gone, killed or "
                        "not, cancel the jobs, remove the running job's partial files and exit")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses; False for anything else (0.0.0.0, names, ...)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        path = Path(args.token_file)
        if not path.is_file():
            raise CliError(f"--token-file {path}: no such file")
        lines = path.read_text(encoding="utf-8").splitlines()
        token = lines[0].strip() if lines else ""
    else:
        token = args.token
    if token is None:
        return None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise CliError(f"the token must be at least {MIN_TOKEN_CHARS} characters without spaces "
                       "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return token


def read_tokens(args: argparse.Namespace) -> list[Any]:
    """The server's tokens with their roles (``btdm_engine.service.auth``) from ``--token`` / ``--token-file`` and
    ``--read-token``; empty: a server without tokens."""
    # lazy: service.auth pulls pydantic (service.schemas, a tenth of a second) into `btdm --help`
    from btdm_engine.service.auth import ApiToken, TokenError, Tokens, parse_token_file

    tokens: list[ApiToken] = []
    try:
        if args.token_file is not None:
            path = Path(args.token_file)
            if not path.is_file():
                raise CliError(f"--token-file {path}: no such file")
            try:
                tokens += parse_token_file(path.read_text(encoding="utf-8"))
            except TokenError as exc:
                raise CliError(f"--token-file {path}: {exc}") from None
        elif args.token is not None:
            tokens.append(ApiToken("admin", "admin", args.token))
        if getattr(args, "read_token", None) is not None:
            tokens.append(ApiToken("read", "read", args.read_token))
        Tokens(tokens)  # names and tokens each once
    except TokenError as exc:
        where = f"--token-file {args.token_file}: " if args.token_file is not None else ""
        raise CliError(f"{where}{exc}") from None
    if tokens and not any(t.role != "read" for t in tokens):
        raise CliError("only read-only tokens: nobody could submit a job; add --token or a submit/admin line to "
                       "--token-file")
    return tokens


def check_tls(args: argparse.Namespace) -> dict[str, str]:
    """``--ssl-certfile`` / ``--ssl-keyfile`` as uvicorn's ``ssl_*`` keywords (both or neither; the files
    must load as a pair); empty without TLS."""
    cert, key = args.ssl_certfile, args.ssl_keyfile
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        raise CliError("--ssl-certfile and --ssl-keyfile go together (the certificate and its private key)")
    import ssl  # lazy: ssl costs 40 ms at every `btdm --help`

    for flag, path in (("--ssl-certfile", cert), ("--ssl-keyfile", key)):
        if not Path(path).is_file():
            raise CliError(f"{flag} {path}: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise CliError(f"--ssl-certfile {cert} / --ssl-keyfile {key}: not a certificate and its key ({exc})") from None
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def parse_devices(spec: str, torch: Any) -> list[Any]:
    """``--device``: ``cpu``, ``cuda``, ``cuda:N`` or several CUDA devices ``cuda:0,cuda:1`` (each once)."""
    devices = []
    for part in spec.split(","):
        try:
            device = torch.device(part.strip())
        except RuntimeError:
            raise CliError(f"--device {part.strip()!r}: expected cpu, cuda or cuda:N") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise CliError(f"--device {spec}: CUDA is not available")
            device = torch.device("cuda", device.index or 0)
            if device.index >= torch.cuda.device_count():
                raise CliError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        elif device.type != "cpu":
            raise CliError(f"--device must be cpu, cuda or cuda:N, got {part.strip()}")
        devices.append(device)
    if len(set(devices)) != len(devices):
        raise CliError(f"--device {spec}: a device is named twice (--workers N puts N workers on each)")
    if len({d.type for d in devices}) > 1 or (devices[0].type == "cpu" and len(devices) > 1):
        raise CliError(f"--device {spec}: several devices are CUDA devices; for several CPU workers use --workers")
    return devices


def default_data_dir() -> Path:
    return Path(os.environ.get("BTDM_CACHE_DIR", Path.home() / ".cache" / "btdm")) / "serve"


def run(args: argparse.Namespace) -> int:
    """Run ``btdm serve`` until SIGINT / SIGTERM; returns the exit status."""
    tokens = read_tokens(args)
    if not tokens and not is_loopback(args.host):
        raise CliError(f"refusing to listen on {args.host} without a token: anyone who reaches this port could run "
                       "jobs; pass --token-file FILE (or --token), or listen on 127.0.0.1")
    tls = check_tls(args)
    if not 0 <= args.port <= 65535:
        raise CliError(f"--port must be 0..65535, got {args.port}")
    if args.max_queued < 1:
        raise CliError(f"--max-queued must be >= 1, got {args.max_queued}")
    if not args.keep_days >= 0:
        raise CliError(f"--keep-days must be >= 0, got {args.keep_days}")
    if args.threads is not None and args.threads < 1:
        raise CliError(f"--threads must be >= 1, got {args.threads}")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise CliError(f"--workers must be 1..{MAX_WORKERS}, got {args.workers}")
    if args.ray is not None and (args.device is not None or args.workers != 1):
        raise CliError("--ray runs the jobs on the cluster's actors (one per GPU or CPU node); drop --device / --workers")
    if args.ray is not None and importlib.util.find_spec("ray") is None:
        raise CliError("--ray needs Ray: pip install 'btdm-previs[ray]'")
    watch = None
    if args.parent_pid is not None:
        def parent_gone() -> None:
            worker.abandon()
            server.should_exit = True

        try:
            watch = ParentWatch(args.parent_pid, parent_gone)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    extra = {}
    for spec in args.model:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise CliError(f"--model {spec!r}: expected NAME=DIR")
        extra[name] = Path(folder)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr, force=True)  # replaces the plain lines btdm_engine.cli sets up
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    # lazy, all of these: the service stack stays out of `btdm --help`
    import torch  # lazy: torch
    import uvicorn  # lazy: uvicorn

    from btdm_engine.pipeline import default_device  # lazy: torch
    from btdm_engine.service.app import create_app  # lazy: fastapi
    from btdm_engine.service.schemas import MODEL_NAME_PATTERN  # lazy: pydantic
    from btdm_engine.service.store import JobStore  # lazy: pydantic
    from btdm_engine.service.worker import ModelRegistry, Worker, WorkerPool  # lazy: pydantic, torch when run

    for name in extra:
        if not re.match(MODEL_NAME_PATTERN, name) or name == "default":
            raise CliError(f"--model {name}: a name is 1..64 of A-Z a-z 0-9 _ . - and not 'default'")
    offered = ModelRegistry.with_default("cpu", extra).names()  # reads the model configs; loads nothing
    preload = tuple(offered[:1]) if args.preload is None else () if args.preload == ["none"] else tuple(args.preload)
    for name in preload:
        if name not in offered:
            raise CliError(f"--preload {name}: no such model; offered: {', '.join(offered) or 'none'} (or 'none' alone)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = [] if args.ray else parse_devices(args.device or str(default_device()), torch)
    count = len(devices) * args.workers
    threads = None  # one worker: torch's threads as set above, as before
    if args.ray:
        device_name = ""
    elif devices[0].type == "cuda":
        device_name = ", ".join(dict.fromkeys(torch.cuda.get_device_name(d) for d in devices))
    else:
        total = torch.get_num_threads()
        if count > 1:
            threads = max(1, total // count)
        device_name = f"CPU ({total} threads" + (f", {count} workers of {threads}" if count > 1 else "") + ")"
    device = "ray" if args.ray else ",".join(str(d) for d in devices)
    data = Path(args.data) if args.data else default_data_dir()
    store = JobStore(data)
    store.recover()
    keep_s = args.keep_days * 86400 if args.keep_days > 0 else None
    members: list[Any] = []
    if args.ray:
        from btdm_engine.service.raypool import start_ray_workers  # lazy: pydantic stays out of `btdm --help`

        api_registry = ModelRegistry.with_default("cpu", extra)  # reads the model configs; never loads a model here
        try:
            members, device_name = start_ray_workers(args.ray, store, api_registry, extra, keep_s=keep_s)
        except Exception as exc:  # no cluster at the address, no room for an actor, ...
            store.close()
            raise CliError(f"--ray {args.ray}: {exc}") from None
        count = len(members)
    for n, (dev, _) in enumerate((d, k) for d in devices for k in range(args.workers)):
        # each worker its own registry: its own copy of each model on its device, nothing shared between threads
        members.append(Worker(store, ModelRegistry.with_default(str(dev), extra), keep_s=keep_s if n == 0 else None,
                              name="btdm-worker" if count == 1 else f"btdm-worker-{n}", threads=threads))
    worker = members[0] if count == 1 and not args.ray else WorkerPool(members)
    registry = members[0].registry
    app = create_app(store, worker, registry, tokens=tokens, tls=bool(tls), max_queued=args.max_queued, device=device,
                     device_name=device_name, preload=preload)
    logger = logging.getLogger("btdm_engine.service")
    logger.info("btdm serve: data %s, device %s (%s), %d worker(s), models %s, auth %s", data, device, device_name,
                count,
                ", ".join(registry.names()) or "none",
                ", ".join(f"{t.name} ({t.role})" for t in tokens) if tokens else "none (loopback only)")
    if tls:
        logger.info("btdm serve: HTTPS with %s", tls["ssl_certfile"])
    elif not is_loopback(args.host):
        logger.warning("btdm serve: plain HTTP on %s: tokens and uploads cross the network unencrypted; pass "
                       "--ssl-certfile/--ssl-keyfile or put a TLS reverse proxy in front (docs/service.md)", args.host)
    # Idle keep-alive connections close; past MAX_CONNECTIONS open at once, uvicorn answers 503 (the
    # app's guard cuts slow bodies and caps uploads: btdm_engine.service.guard).
    config = uvicorn.Config(app, host=args.host, port=args.port, log_config=None, access_log=False,
                            timeout_graceful_shutdown=5, lifespan="on", timeout_keep_alive=limits.KEEP_ALIVE_S,
                            limit_concurrency=limits.MAX_CONNECTIONS, **tls)
    server = _server(config, app, worker)
    if watch is not None:
        watch.start()
    try:
        server.run()
    finally:
        if watch is not None:
            watch.stop()
        worker.stop()  # already stopped by the app's lifespan unless startup failed (port in use, ...)
        store.close()
        if args.ray:
            import ray  # lazy: optional (the ray extra)

            ray.shutdown()  # the actors are not detached: they end with the server
    if not server.started:
        raise CliError(f"could not listen on {args.host}:{args.port} (see the log above)")
    return 0


def _server(config: Any, app: Any, worker: Any) -> Any:
    """uvicorn's server, but one that at SIGINT / SIGTERM interrupts the running job and ends the event
    streams at once, not only once the open connections have drained (up to
    ``timeout_graceful_shutdown``, 5 s, in which a job would run on, even to its end, and a following
    client's stream held the shutdown): the job goes back to the queue, the server exits in moments."""
    import uvicorn  # lazy: uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.stopping.set()
            worker.signal_stop()
            super().handle_exit(sig, frame)

    return Server(config)
