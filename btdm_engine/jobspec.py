"""One generation job's parameters: their defaults, written once, their one validator and the
job's cross-field rules.

``btdm animate`` (its flags' defaults and checks), the engine service's request model
(``service/schemas.JobParams``: defaults and bounds; ``GET /v1/limits`` serves both) and the
``Animator`` (its argument checks) all read :class:`JobSpec`; the bounds are
:data:`btdm_engine.limits.JOB_LIMITS`. :meth:`JobSpec.check` checks each value alone;
:meth:`JobSpec.fault` / :meth:`JobSpec.check_inputs` check the values against each other and
against the facts of the job's inputs and model (:data:`RULES`), in each caller's words.
Standard library only, so ``btdm --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from btdm_engine import limits
from btdm_engine.constants import DEFAULT_NOISE, IUV_ORDERS, NOISE_MODES, SAMPLERS
from btdm_engine.dataconfig import ErrorClass, check_choice, check_int, check_number, is_int, to_dict

__all__ = ["METHODS", "RULES", "JobFault", "JobSpec", "limits_document"]

METHODS: tuple[str, ...] = ("diffusion", "texture")

RULES: tuple[str, ...] = (
    "iuv_without_appearance",  # an IUV map g(c) comes with no appearance image c
    "iuv_unused",  # g(c) given, but nothing reads it: no fine-tuning, no texture-transfer prior, no texture method
    "frame_without_appearance",  # the appearance frame K names the frame an image shows, and none comes
    "frame_and_iuv",  # g(c) from two places: frame K's pose map and an IUV map
    "finetune_without_iuv",  # fine-tuning (Y = {c}, S = {g(c)}) with no c or no g(c)
    "texture_without_iuv",  # the texture method moves c's pixels through g(c): none
    "texture_finetune",  # the texture method has no network to fine-tune
    "sr_steps_without_sr3",  # SR3 steps for a model without an SR3 stage
    "frame_outside",  # the appearance frame K is not one of the job's frames
    "views_without_iuv",  # further views join c's texture: no c, or no g(c) to start it from
    "views_unused",  # further views feed the texture-transfer prior: nothing reads it
    "view_outside",  # a view shows a frame K that is not one of the job's frames
)
"""The job's cross-field rules, in the order :meth:`JobSpec.fault` checks them (the first broken one
is named)."""


class JobFault(NamedTuple):
    """The first cross-field rule a job breaks: which (one of :data:`RULES`), the field at fault in
    the caller's words, and the message, in the caller's words too."""

    rule: str
    field: str
    message: str


@dataclass(frozen=True)
class JobSpec:
    """What a generation job asks for, beyond its inputs (motion or pose maps, appearance, model)."""

    steps: int = 50  # BTU-Net denoising steps (the paper's 50)
    sr_steps: int | None = None  # SR3 denoising steps (None: steps)
    seed: int = 0
    finetune_steps: int = 0  # single-image fine-tuning iterations (0: none; the paper: 300)
    finetune_lr: float = 1e-5
    sampler: str = "bidirectional"
    eta: float = 0.0  # 0 = DDIM, 1 = ancestral sampling
    noise: str = DEFAULT_NOISE  # noise across frames, both stages: one draw every frame shares, or one per frame
    max_batch: int | None = None  # frames per network call (None: all)
    method: str = "diffusion"
    iuv_order: str = "btdm"
    fps: float | None = None  # video frame rate (None: the clip's, 30 for pose maps)

    def check(self, error: ErrorClass, names: Mapping[str, str] | None = None,
              table: Mapping[str, tuple[float, float]] | None = None) -> JobSpec:
        """Every value against its type, choices and :func:`limits.job_limits`; returns self.

        ``names`` maps a field to what the caller calls it in messages (``--finetune-steps``);
        ``table`` replaces the limits (the service passes the static :data:`limits.JOB_LIMITS`).
        """
        table = limits.job_limits() if table is None else table
        name = {f.name: f.name for f in dataclasses.fields(self)} | dict(names or {})
        for field, limit in limits.JOB_OVERRIDES.items():  # a --limit NAME=N raises these: say so
            value, hi = getattr(self, field), table[field][1]
            if is_int(value) and value > hi:
                raise error(f"{name[field]}: {value:g} is over the {limit} limit of {hi:g} "
                            f"(raise it with --limit {limit}=N if you mean it)")
        for field in ("steps", "seed", "finetune_steps"):
            lo, hi = table[field]
            check_int(getattr(self, field), name[field], error, lo=int(lo), hi=int(hi))
        for field in ("sr_steps", "max_batch"):
            if getattr(self, field) is not None:
                lo, hi = table[field]
                check_int(getattr(self, field), name[field], error, lo=int(lo), hi=int(hi))
        lo, hi = table["finetune_lr"]
        check_number(self.finetune_lr, name["finetune_lr"], error, lo=lo, hi=hi, lo_open=True)
        lo, hi = table["eta"]
        check_number(self.eta, name["eta"], error, lo=lo, hi=hi)
        if self.fps is not None:  # the words of limits.check_fps, which every other command's --fps uses
            lo, hi = table["fps"]
            fps = check_number(self.fps, name["fps"], error)
            if not lo <= fps <= hi:
                raise error(f"{name['fps']}: fps {fps:g} is outside {lo:g}..{hi:g}")
        check_choice(self.sampler, name["sampler"], SAMPLERS, error)
        check_choice(self.noise, name["noise"], NOISE_MODES, error)
        check_choice(self.method, name["method"], METHODS, error)
        check_choice(self.iuv_order, name["iuv_order"], IUV_ORDERS, error)
        return self

    def fault(
        self,
        names: Mapping[str, str] | None = None,
        *,
        appearance: bool | None = None,
        appearance_iuv: bool | None = None,
        appearance_frame: int | None = None,
        own_appearance: bool = False,
        frames: int | None = None,
        model: str = "this model",
        has_sr3: bool | None = None,
        texture_prior: bool | None = None,
        view_frames: Sequence[int] = (),
    ) -> JobFault | None:
        """The first of the job's cross-field rules (:data:`RULES`) these values and facts break, or None.

        The facts: ``appearance`` (an appearance image c comes with the job), ``appearance_iuv``
        (its IUV map g(c) comes as a file or array), ``appearance_frame`` (K: c shows the body as
        job frame K does, so frame K's pose map is g(c); None: not given), ``own_appearance`` (the
        model's own appearance image and IUV map stand in for the missing c and g(c)), ``frames``
        (how many frames the job generates), ``model`` (how messages call the model: ``model
        plain``, ``this model``), ``has_sr3`` (it has an SR3 stage), ``texture_prior`` (its
        networks read the texture-transfer prior, so g(c) is used without fine-tuning),
        ``view_frames`` (the job frames that further views of the person show, one per view,
        each with that frame's pose map as its IUV map; they join c's UV texture). A fact
        left None is not known yet (the CLI reads its model after the flags, and its frames after
        the pose maps): the rules that need it are not checked, so a caller checks again as it
        learns more.

        ``names`` maps a field or input (``appearance``, ``appearance_iuv``, ``appearance_frame``,
        ``finetune_steps``, ``method``, ``sr_steps``, ``views``) to what the caller calls it, as in
        :meth:`check`; ``frame_start`` to what the caller counts job frames from. A caller that
        names no ``appearance_frame`` (the Animator, which takes g(c) as an array) is not offered
        it as a source of g(c).
        """
        name = {"appearance": "appearance", "appearance_iuv": "appearance_iuv", "views": "views",
                **{f.name: f.name for f in dataclasses.fields(self)}, **dict(names or {})}
        by_frame = "appearance_frame" in name  # the caller takes an appearance frame K
        frame, iuv, app = name.get("appearance_frame", "appearance_frame"), name["appearance_iuv"], name["appearance"]
        texture = self.method == "texture"
        known = appearance is not None and appearance_iuv is not None
        has_iuv = bool(appearance_iuv) or appearance_frame is not None or own_appearance

        def fault(rule: str, field: str, message: str) -> JobFault:
            return JobFault(rule, name.get(field, field), message)

        if known and appearance_iuv and not appearance:
            return fault("iuv_without_appearance", "appearance_iuv",
                         f"{iuv} needs {app} (it is the appearance image's IUV map)")
        if appearance_iuv and self.finetune_steps == 0 and texture_prior is False and not texture:
            return fault("iuv_unused", "appearance_iuv",
                         f"{iuv} is only used by fine-tuning with {model} (it takes no texture-transfer prior); "
                         f"set {name['finetune_steps']} > 0 or drop it")
        if known and appearance_frame is not None and not appearance:
            return fault("frame_without_appearance", "appearance_frame",
                         f"{frame} K says which frame {app} shows (job frame K's pose map is then its IUV map): "
                         f"send that image ({app})")
        if known and appearance_frame is not None and appearance_iuv:
            return fault("frame_and_iuv", "appearance_iuv",
                         f"{frame} K says which frame {app} shows and job frame K's pose map is then its IUV map: "
                         f"send {iuv} or {frame}, not both")
        if known and self.finetune_steps > 0 and not has_iuv:
            sources = (f"needs {app} and {iuv} or {frame} K (g(c), the appearance's IUV map;" if by_frame
                       else f"needs both {app} and {iuv} (")
            return fault("finetune_without_iuv", "finetune_steps",
                         f"{name['finetune_steps']} > 0 {sources} paper sec. 3.3: Y = {{c}}, S = {{g(c)}})")
        if known and texture and not has_iuv:
            sources = f"{iuv}, or {frame} K" if by_frame else iuv
            return fault("texture_without_iuv", "method",
                         f"{name['method']} texture moves the appearance's pixels through its IUV map: give {app} "
                         f"with {sources}")
        if texture and self.finetune_steps > 0:
            return fault("texture_finetune", "finetune_steps",
                         f"{name['method']} texture has no network to fine-tune; drop {name['finetune_steps']}")
        if self.sr_steps is not None and has_sr3 is False:
            return fault("sr_steps_without_sr3", "sr_steps",
                         f"{name['sr_steps']} given but {model} has no SR3 stage (no SR3 model: its frames are "
                         "the BTU-Net's)")
        if appearance_frame is not None and frames is not None and not 0 <= appearance_frame < frames:
            counted = f", counted from {name['frame_start']}" if "frame_start" in name else ""
            return fault("frame_outside", "appearance_frame",
                         f"{frame} {appearance_frame} is not one of the job's {frames} frames "
                         f"(0..{frames - 1}{counted})")
        if view_frames:
            views = name["views"]
            if known and not (appearance and (appearance_iuv or appearance_frame is not None)):
                sources = f"{iuv} or {frame} K" if by_frame else iuv
                return fault("views_without_iuv", "views",
                             f"{views}: further views join the appearance's UV texture, which starts from {app} and its IUV map: "
                             f"give {app} with {sources} too")
            if not texture and texture_prior is False:
                return fault("views_unused", "views",
                             f"{views}: further views feed the texture-transfer prior, which {model} does not take; use "
                             f"{name['method']} texture, or a model that takes it, or drop them")
            outside = [k for k in view_frames if frames is not None and not 0 <= k < frames]
            if outside:
                counted = f", counted from {name['frame_start']}" if "frame_start" in name else ""
                return fault("view_outside", "views",
                             f"{views}: frame {outside[0]} is not one of the job's {frames} frames "
                             f"(0..{frames - 1}{counted})")
        return None

    def check_inputs(self, error: ErrorClass, names: Mapping[str, str] | None = None, **facts: Any) -> JobSpec:
        """:meth:`fault` raising ``error(message)`` for the first rule broken; returns self."""
        found = self.fault(names, **facts)
        if found is not None:
            raise error(found.message)
        return self


def limits_document() -> dict[str, Any]:
    """What ``GET /v1/limits`` answers: every job parameter's default and (lowest, highest) value, and
    how many further views (``views``) a job may send."""
    return {
        "defaults": to_dict(JobSpec()),
        "limits": {**{name: {"min": lo, "max": hi} for name, (lo, hi) in limits.JOB_LIMITS.items()},
                   "views": {"min": 0, "max": limits.DEFAULTS["views"]}},  # pictures in the views zip
        "choices": {"sampler": list(SAMPLERS), "noise": list(NOISE_MODES), "method": list(METHODS),
                    "iuv_order": list(IUV_ORDERS)},
    }
