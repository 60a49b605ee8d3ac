"""``btdm animate --engine URL``: the same job sent to a running ``btdm serve`` through the stdlib client
(:mod:`btdm_bridge.engine_client`, the add-on's too); :mod:`.animate` hands its arguments here.

The command line means what it means locally (same seed, same frames): pose maps are rendered
by the server from the clip (or the ``--posemaps`` PNGs are zipped and sent), the appearance image
and its IUV map are uploaded, frames are downloaded into ``OUT/frames`` as the server writes them,
plates into ``OUT/plates`` with ``--plate``, and ``--mp4`` fetches the server's video. Ctrl-C
cancels the job on the server.
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from btdm_bridge.engine_client import EngineClient, EngineError
from btdm_engine.cli import CliError
from btdm_engine.commands.common import Progress, parse_frames, read_picture, view_frames
from btdm_engine.commands.serve import read_token
from btdm_engine.fileio import StagedRun, atomic_write_bytes
from btdm_engine.posemaps.export import posemap_files


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {
        "steps": args.steps, "seed": args.seed, "finetune_steps": args.finetune_steps,
        "finetune_lr": args.finetune_lr, "sampler": args.sampler, "eta": args.eta, "noise": args.noise,
        "iuv_order": args.iuv_order,
        "video": bool(args.mp4),
    }
    optional = {"model": args.model, "sr_steps": args.sr_steps, "max_batch": args.max_batch, "fps": args.fps,
                "appearance_frame": args.appearance_frame}
    params.update({key: value for key, value in optional.items() if value is not None})
    if args.clip is not None:
        params["plate"] = bool(args.plate)
    return params


def _zip_posemaps(folder: Path, span: tuple[int, int] | None = None) -> bytes:
    """The folder's IUV PNGs as a zip: the frames a local run reads (``posemap_files``: with ``span``,
    ``--frames``, exactly start..stop-1; without, the whole sequence with no hole), refused as locally."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed already
        for path in posemap_files(folder, span).values():
            archive.write(path, path.name)
    return buf.getvalue()


_PNG = b"\x89PNG\r\n\x1a\n"


def _picture(path: str | None, flag: str) -> Path | bytes | None:
    """A picture of the person to upload: a PNG as it is; another image a local run reads (a JPEG, turned
    upright) as the PNG of the pixels that run reads (:func:`read_picture`), since the service takes PNGs only."""
    if path is None:
        return None
    rgb = read_picture(Path(path), flag)  # a missing file or a bad image is refused as a local run refuses it
    with open(path, "rb") as fh:
        if fh.read(len(_PNG)) == _PNG:
            return Path(path)
    import cv2  # lazy: cv2

    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok, path
    return png.tobytes()


def animate_remote(args: argparse.Namespace) -> int:
    """Run ``btdm animate`` on the engine at ``args.engine``; returns the exit status."""
    if args.device is not None:
        raise CliError("--device applies to the server (btdm serve --device); drop it with --engine")
    if args.threads is not None:
        raise CliError("--threads applies to the server (btdm serve --threads); drop it with --engine")
    if args.precision != "auto":
        raise CliError("--precision applies to the server, which samples as `auto` does; drop it with --engine")
    if args.frames is not None and args.posemaps is None:
        raise CliError("--frames needs --posemaps (a clip is cut with btdm posemaps --start/--end)")
    span = parse_frames(args.frames)
    if args.plate and args.clip is None:
        raise CliError("--plate needs --clip (the shot camera comes with the motion clip)")
    out = Path(args.out)
    existing = sorted((out / "frames").glob("[0-9]*.png")) if (out / "frames").is_dir() else []
    if existing and not args.overwrite:
        raise CliError(f"{out / 'frames'} already holds {len(existing)} frames; "
                       "pass --overwrite or choose another --out")
    try:
        client = EngineClient(args.engine, token=read_token(args))
        files: dict[str, Any] = {"appearance": _picture(args.appearance, "--appearance"),
                                 "appearance_iuv": args.appearance_iuv}
        if args.view:  # --view K IMG: the views zip, one picture per job frame K
            files["views"] = {k: _picture(image, f"--view {k}") for k, (_, image) in zip(view_frames(args.view), args.view)}
        if args.clip is not None:
            files["motion"] = Path(args.clip)
        else:
            files["posemaps"] = _zip_posemaps(Path(args.posemaps), span)
        job = client.submit(**{k: v for k, v in files.items() if v is not None}, params=_params(args))
    except EngineError as exc:
        raise CliError(f"engine {args.engine}: {exc.message}" + (f" [{exc.field}]" if exc.field else "")) from None
    job_id = job["id"]
    print(f"engine job {job_id} queued at {args.engine}", file=sys.stderr)
    # As a local run: written to OUT/incomplete/, published over an earlier run only when complete.
    run = StagedRun(out, subdirs=("frames", "plates"), files=("animation.mp4",))
    staging, removed = run.begin()
    if removed:
        print(f"note: removed {staging} left by an interrupted earlier run", file=sys.stderr)
    frames_dir = staging / "frames"
    frames_dir.mkdir()
    bars = Progress(not args.no_progress)
    fetched = 0

    def follow(state: dict[str, Any]) -> None:
        nonlocal fetched
        if state["state"] == "running" and state["stage"] is not None:
            bars(state["stage"], state["step"], state["total"])
        while fetched < state["frames_done"]:  # frames appear in order; fetch each once
            atomic_write_bytes(frames_dir / f"{fetched:06d}.png", client.frame(job_id, fetched))
            if state["has_plates"]:
                atomic_write_bytes(staging / "plates" / f"{fetched:06d}.png", client.plate(job_id, fetched))
            fetched += 1

    try:
        final = client.wait(job_id, callback=follow)
        if final["state"] != "succeeded":
            raise CliError(f"engine job {job_id} {final['state']}" + (f": {final['error']}" if final["error"] else ""))
        video = None
        if args.mp4:
            video = atomic_write_bytes(staging / "animation.mp4", client.video(job_id))
    except KeyboardInterrupt:
        try:
            client.cancel(job_id)
            print(f"engine job {job_id}: cancel sent", file=sys.stderr)
        except EngineError:
            pass
        raise
    except EngineError as exc:
        raise CliError(f"engine job {job_id}: {exc.message}") from None
    finally:
        bars.close()
    run.publish(fetched, {"seed": final["params"]["seed"], "steps": final["params"]["steps"], "engine_job": job_id})
    frames_dir = out / "frames"
    video = None if video is None else out / "animation.mp4"
    size = final["width"]
    print(f"frames: {fetched} in {frames_dir} ({size}x{size}, engine job {job_id})")
    if final["has_plates"]:
        print(f"plates: {fetched} in {out / 'plates'} ({final['plate_width']}x{final['plate_height']} RGBA)")
    if video is not None:
        print(f"video:  {video}")
    return 0
