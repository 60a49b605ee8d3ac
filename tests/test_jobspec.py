"""One job specification (btdm_engine/jobspec.py): the job's cross-field rules live in JobSpec.fault,
in every caller's words: ``btdm animate``'s flags, the service's params and files, the Animator's arguments."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from btdm_engine.cli import main
from btdm_engine.commands.animate import _FLAGS
from btdm_engine.jobspec import RULES, JobFault, JobSpec

# the service's words (service/schemas.JobParams): files by their form field, params as params.<key>
SERVICE = {"appearance": "appearance", "appearance_iuv": "appearance_iuv", "appearance_frame": "params.appearance_frame",
           "frame_start": "frame_start", "finetune_steps": "params.finetune_steps", "method": "params.method",
           "sr_steps": "params.sr_steps", "views": "views"}
NONE = {"appearance": False, "appearance_iuv": False}
APP = {"appearance": True, "appearance_iuv": False}
BOTH = {"appearance": True, "appearance_iuv": True}
PLAIN = {"model": "model plain", "has_sr3": False, "texture_prior": False}
WARP = {"model": "model default", "has_sr3": True, "texture_prior": True}


class Refused(ValueError):
    pass


# (spec, facts, rule, the field and a piece of the message in the service's words (tests/test_service_api_matrix.py
# asks these of POST /v1/jobs), in the flags' words (btdm animate) and in the Animator's (None: it takes no K))
CASES = [
    (JobSpec(), {**NONE, "appearance_iuv": True}, "iuv_without_appearance",
     ("appearance_iuv", "appearance_iuv needs appearance (it is the appearance image's IUV map)"),
     ("--appearance-iuv", "--appearance-iuv needs --appearance (it is the appearance image's IUV map)"),
     ("appearance_iuv", "appearance_iuv needs appearance")),
    (JobSpec(), {**BOTH, **PLAIN}, "iuv_unused",
     ("appearance_iuv", "only used by fine-tuning with model plain"),
     ("--appearance-iuv", "set --finetune-steps > 0 or drop it"),
     ("appearance_iuv", "set finetune_steps > 0 or drop it")),
    (JobSpec(), {**NONE, "appearance_frame": 1}, "frame_without_appearance",
     ("params.appearance_frame", "send that image (appearance)"),
     ("--appearance-frame", "--appearance-frame K says which frame --appearance shows"), None),
    (JobSpec(), {**BOTH, "appearance_frame": 1}, "frame_and_iuv",
     ("appearance_iuv", "send appearance_iuv or params.appearance_frame, not both"),
     ("--appearance-iuv", "--appearance-frame K says which frame"), None),
    (JobSpec(finetune_steps=1), NONE, "finetune_without_iuv",
     ("params.finetune_steps", "params.finetune_steps > 0 needs appearance and appearance_iuv or "
      "params.appearance_frame K"),
     ("--finetune-steps", "needs --appearance and --appearance-iuv or --appearance-frame K (g(c)"),
     ("finetune_steps", "needs both appearance and appearance_iuv")),
    (JobSpec(finetune_steps=1), APP, "finetune_without_iuv",
     ("params.finetune_steps", "needs appearance"), ("--finetune-steps", "needs --appearance"),
     ("finetune_steps", "needs both appearance and appearance_iuv")),
    (JobSpec(method="texture"), APP, "texture_without_iuv",
     ("params.method", "params.method texture moves the appearance's pixels through its IUV map"),
     ("--method", "give --appearance with --appearance-iuv, or --appearance-frame K"),
     ("method", "give appearance with appearance_iuv")),
    (JobSpec(method="texture", finetune_steps=2), BOTH, "texture_finetune",
     ("params.finetune_steps", "no network to fine-tune; drop params.finetune_steps"),
     ("--finetune-steps", "--method texture has no network to fine-tune"), ("finetune_steps", "no network")),
    # the first rule broken is the one named: fine-tuning's needs come before the texture method's
    (JobSpec(method="texture", finetune_steps=2), NONE, "finetune_without_iuv",
     ("params.finetune_steps", "needs appearance"), ("--finetune-steps", "needs --appearance"),
     ("finetune_steps", "needs both")),
    (JobSpec(sr_steps=2), {**NONE, **PLAIN}, "sr_steps_without_sr3",
     ("params.sr_steps", "params.sr_steps given but model plain has no SR3 stage"),
     ("--sr-steps", "--sr-steps given but model plain has no SR3 stage"), ("sr_steps", "no SR3 model")),
    (JobSpec(), {"appearance_frame": 3, "frames": 3}, "frame_outside",
     ("params.appearance_frame",
      "params.appearance_frame 3 is not one of the job's 3 frames (0..2, counted from frame_start)"),
     ("--appearance-frame", "--appearance-frame 3 is not one of the job's 3 frames (0..2)"), None),
    # further views of the person (the add-on's renders at several frames) join c's UV texture
    (JobSpec(), {**APP, **WARP, "view_frames": (2,)}, "views_without_iuv",
     ("views", "views: further views join the appearance's UV texture, which starts from appearance and its IUV map: give "
      "appearance with appearance_iuv or params.appearance_frame K too"),
     ("--view", "--view: further views join the appearance's UV texture, which starts from --appearance and its IUV map"),
     ("views", "give appearance with appearance_iuv too")),
    (JobSpec(), {**NONE, "own_appearance": True, "view_frames": (2,)}, "views_without_iuv",
     ("views", "give appearance with"), ("--view", "give --appearance with"), ("views", "give appearance with")),
    (JobSpec(), {**APP, "appearance_frame": 0, **PLAIN, "view_frames": (1,)}, "views_unused",
     ("views", "views: further views feed the texture-transfer prior, which model plain does not take; use "
      "params.method texture"),
     ("--view", "use --method texture, or a model that takes it, or drop them"), None),
    (JobSpec(method="texture"), {**APP, "appearance_frame": 0, "frames": 4, "view_frames": (1, 4)}, "view_outside",
     ("views", "views: frame 4 is not one of the job's 4 frames (0..3, counted from frame_start)"),
     ("--view", "--view: frame 4 is not one of the job's 4 frames (0..3)"), None),
]


@pytest.mark.parametrize(("spec", "facts", "rule", "service", "flags", "animator"), CASES)
def test_each_rule_in_each_callers_words(spec: JobSpec, facts: dict, rule: str, service: tuple, flags: tuple,
                                         animator: tuple | None) -> None:
    words = [(SERVICE, service), (_FLAGS, flags)] + ([] if animator is None else [(None, animator)])
    for names, (field, says) in words:
        fault = spec.fault(names, **facts)
        assert fault is not None and (fault.rule, fault.field) == (rule, field), fault
        assert says in fault.message, fault.message
        with pytest.raises(Refused) as info:
            spec.check_inputs(Refused, names, **facts)
        assert str(info.value) == fault.message


def test_every_rule_is_tested_and_listed_in_order() -> None:
    assert {case[2] for case in CASES} == set(RULES)
    assert RULES.index("finetune_without_iuv") < RULES.index("texture_without_iuv") < RULES.index("texture_finetune")


@pytest.mark.parametrize(("spec", "facts"), [
    (JobSpec(), {}),  # nothing known yet: nothing to refuse
    (JobSpec(), BOTH | WARP),  # the texture-transfer prior reads g(c)
    (JobSpec(sr_steps=2), APP | PLAIN | {"has_sr3": True}),
    (JobSpec(finetune_steps=1), BOTH | PLAIN),
    (JobSpec(finetune_steps=1), APP | {"appearance_frame": 0, "frames": 1}),  # frame 0's pose map is g(c)
    (JobSpec(finetune_steps=1), NONE | {"own_appearance": True}),  # the model's own appearance and IUV map
    (JobSpec(method="texture"), NONE | {"own_appearance": True}),
    (JobSpec(method="texture"), BOTH | PLAIN),  # the texture method reads g(c) whatever the model
    (JobSpec(sr_steps=2), NONE | WARP),
    (JobSpec(sr_steps=2, finetune_steps=1), {}),  # the model's facts and the inputs are not known yet
    (JobSpec(), {"appearance_frame": 5}),  # the frame count is not known yet
    (JobSpec(), BOTH | WARP | {"view_frames": (3, 7)}),  # views feed the warp-conditioned model's prior
    (JobSpec(method="texture"), APP | PLAIN | {"appearance_frame": 0, "frames": 8, "view_frames": (0, 7)}),
    (JobSpec(), {"view_frames": (9,)}),  # nothing else known yet
])
def test_what_the_rules_accept(spec: JobSpec, facts: dict) -> None:
    assert spec.fault(SERVICE, **facts) is None
    assert spec.check_inputs(Refused, _FLAGS, **facts) is spec


def test_a_fault_is_a_named_tuple_the_service_maps_to_its_status() -> None:
    fault = JobSpec().fault(SERVICE, appearance=False, appearance_iuv=True)
    assert isinstance(fault, JobFault) and fault == ("iuv_without_appearance", "appearance_iuv", fault.message)


# ---------------------------------------------------------------------------- btdm animate says them in its flags
def _png(path: Path, image: np.ndarray) -> str:
    assert cv2.imwrite(str(path), image)
    return str(path)


def test_btdm_animate_refuses_in_its_flags_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = _png(tmp_path / "app.png", np.full((32, 32, 3), 128, np.uint8))
    maps = tmp_path / "maps"
    maps.mkdir()
    for n in range(2):
        _png(maps / f"{n:06d}.png", np.zeros((32, 32, 3), np.uint8))

    def refused(*argv: str) -> str:
        assert main(["animate", *argv, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
        return capsys.readouterr().err

    said = refused("--clip", "x.npz", "--model", str(tmp_path), "--appearance-iuv", app)
    assert "--appearance-iuv needs --appearance (it is the appearance image's IUV map)" in said
    said = refused("--clip", "x.npz", "--model", str(tmp_path), "--appearance", app, "--finetune-steps", "3")
    assert "--finetune-steps > 0 needs --appearance and --appearance-iuv or --appearance-frame K" in said
    said = refused("--clip", "x.npz", "--method", "texture", "--appearance", app, "--appearance-iuv", app,
                   "--finetune-steps", "3")
    assert "--method texture has no network to fine-tune; drop --finetune-steps" in said
    said = refused("--clip", "x.npz", "--steps", "0")  # each value alone, JobSpec.check's words
    assert "--steps must be an int in [1, " in said
    # the frame count is known once the pose maps are read: K must be one of them, counted from --frames START
    said = refused("--posemaps", str(maps), "--method", "texture", "--appearance", app, "--appearance-frame", "2")
    assert "--appearance-frame 2 is not one of the job's 2 frames (0..1)" in said
    said = refused("--posemaps", str(maps), "--frames", "1:2", "--method", "texture", "--appearance", app,
                   "--appearance-frame", "1")
    assert "--appearance-frame 1 is not one of the job's 1 frames (0..0, counted from --frames START)" in said
    # --view K IMG: K a job frame, at most 16 pictures, of the person the appearance shows (not the model's own)
    said = refused("--posemaps", str(maps), "--method", "texture", "--appearance", app, "--appearance-frame", "0",
                   "--view", "2", app)
    assert "--view: frame 2 is not one of the job's 2 frames (0..1)" in said
    assert "K must be a job frame number (zero-based), got 'one'" in refused("--posemaps", str(maps), "--view", "one", app)
    assert "over the views limit of 16" in refused("--posemaps", str(maps), *["--view", "1", app] * 17)
    assert "frame 1 has a picture already (one --view per frame)" in refused("--posemaps", str(maps), "--view", "1", app,
                                                                            "--view", "1", app)
    said = refused("--posemaps", str(maps), "--view", "1", app)
    assert "--view: further views join the appearance's UV texture, which starts from --appearance" in said


def test_btdm_animate_names_sr_steps_for_a_model_without_sr3(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The model's facts are known once it is loaded, before the pose maps are rendered (no clip is read)."""
    from btdm_engine.weights import DEFAULT_MODEL_DIR

    model = tmp_path / "no_sr3"
    (model / "btunet").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (model / "btunet" / name).write_bytes((DEFAULT_MODEL_DIR / "btunet" / name).read_bytes())
    argv = ["animate", "--clip", str(tmp_path / "missing.npz"), "--model", str(model), "--out", str(tmp_path / "o"),
            "--sr-steps", "2", "--device", "cpu", "--no-progress"]
    assert main(argv) == 2
    assert f"--sr-steps given but model {model} has no SR3 stage" in capsys.readouterr().err
