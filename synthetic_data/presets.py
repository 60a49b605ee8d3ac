"""Dataset recipes: which characters perform which motions, at what size and quality.

A :class:`Preset` is plain data; :func:`plan` expands it into shards, one per (character, motion),
each carrying everything its worker needs (so a shard can run on any machine and ``meta.json``
can rebuild it). Presets:

* ``tiny``: CI smoke set, 2 characters (1 train, 1 test) x 1 motion x 6 frames at 64 px.
* ``mini``: 6 characters (5 train, 1 test) x 4 motions x 48 frames at 128 px; builds on a 2-core
  machine in minutes and feeds the training issue and the default model.
* ``paper``: the paper's set (section 4.1, appendix D): 99 characters split 80/19, 32 s at
  30 fps, 512 px; a recipe for a render farm (``btdm synth build --ray ADDRESS``).
* ``wide``: many people rather than long clips: 64 characters (56 train, 8 test) x 4 motions x
  24 frames at 128 px.
* ``wide256``: the same people, motions and cloth as ``wide`` (same seed), rendered at 256 px: the
  truth that 256 px generation is scored against (``--only`` its test sequences).
* ``wide256-val``: ``wide256`` with 8 more people, c064..c071, whom no shipped network trained on
  and who are not the test split either: the validation people that a model's settings are chosen
  on (``--only c064-walk c064-dance ...``; they land in its ``train`` split), so the test people
  stay unseen by every choice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from btdm_engine import dataconfig
from btdm_engine.constants import CYCLES_DEVICES
from btdm_engine.dataconfig import check_choice, check_int, check_number
from synthetic_data.spec import CharacterSpec, SpecError, character_seed, sample_character

__all__ = [
    "PRESETS",
    "ClothSettings",
    "MotionSpec",
    "Preset",
    "RenderSettings",
    "Shard",
    "get_preset",
    "plan",
    "split_characters",
]


@dataclass(frozen=True)
class MotionSpec:
    """A motion every character performs.

    ``source`` 'procedural' uses ``btdm_engine.motion.make_motion(name, seconds, fps, speed,
    seed)``; 'bvh' loads ``path`` with ``btdm_engine.motion.load_bvh`` (``name`` is then only the
    label used in sequence ids). The clip is cut or generated to the preset's frame count.
    """

    name: str
    source: str = "procedural"
    speed: float = 1.0
    seed: int = 0
    path: str | None = None

    def __post_init__(self) -> None:
        check_choice(self.source, "motion.source", ("procedural", "bvh"), SpecError)
        if not isinstance(self.name, str) or not self.name.replace("_", "").replace("-", "").isalnum():
            raise SpecError(f"motion.name {self.name!r}: use letters, digits, '_' or '-'")
        if self.source == "bvh" and not self.path:
            raise SpecError(f"motion {self.name!r}: a bvh motion needs a path")
        if self.source == "procedural" and self.path is not None:
            raise SpecError(f"motion {self.name!r}: a procedural motion takes no path")
        if self.path is not None and not isinstance(self.path, str):
            raise SpecError(f"motion.path must be a string, got {self.path!r}")
        check_number(self.speed, "motion.speed", SpecError, lo=0.0, lo_open=True)
        check_int(self.seed, "motion.seed", SpecError, lo=0)


@dataclass(frozen=True)
class RenderSettings:
    """Cycles settings: ``device`` 'CPU' or 'GPU'; ``samples`` per pixel; OIDN denoising."""

    resolution: int = 256
    samples: int = 16
    denoise: bool = True
    device: str = "CPU"
    threads: int = 0  # 0 = Blender decides

    def __post_init__(self) -> None:
        check_choice(self.device, "render.device", CYCLES_DEVICES, SpecError)
        check_int(self.resolution, "render.resolution", SpecError, lo=8, hi=4096)
        check_int(self.samples, "render.samples", SpecError, lo=1, hi=4096)
        dataconfig.check_bool(self.denoise, "render.denoise", SpecError)
        check_int(self.threads, "render.threads", SpecError, lo=0)


@dataclass(frozen=True)
class ClothSettings:
    """Simulation quality: solver steps per frame, collision steps, distances (metres), garment
    ring spacing (metres; sets the cloth resolution), and the pre-roll.

    ``preroll`` frames precede the clip: the body blends from its rest pose into the first
    pose over ``preroll - hold`` frames and holds it for ``hold`` frames, so garments settle
    before the first recorded frame.
    """

    quality: int = 5
    collision_quality: int = 2
    distance: float = 0.006
    body_thickness: float = 0.006
    spacing: float = 0.035
    preroll: int = 24
    hold: int = 8
    self_collision: bool = True  # False turns it off for every garment (CI speed)

    def __post_init__(self) -> None:
        check_int(self.quality, "cloth.quality", SpecError, lo=1, hi=80)
        check_int(self.collision_quality, "cloth.collision_quality", SpecError, lo=1, hi=20)
        for name in ("distance", "body_thickness"):
            check_number(getattr(self, name), f"cloth.{name}", SpecError, lo=0.0)
        check_number(self.spacing, "cloth.spacing", SpecError, lo=0.005, hi=0.2)
        dataconfig.check_bool(self.self_collision, "cloth.self_collision", SpecError)
        check_int(self.preroll, "cloth.preroll", SpecError, lo=2)
        check_int(self.hold, "cloth.hold", SpecError, lo=0)
        if not self.hold < self.preroll:
            raise SpecError(f"cloth.preroll {self.preroll} / hold {self.hold}: need preroll >= 2 and 0 <= hold < preroll")


@dataclass(frozen=True)
class Preset:
    """A dataset recipe (see the module docstring)."""

    name: str
    characters: int
    test_characters: int
    motions: tuple[MotionSpec, ...]
    frames: int
    fps: float
    render: RenderSettings
    cloth: ClothSettings
    seed: int = 0
    body_model: str = "mannequin"

    def __post_init__(self) -> None:
        for name, low in (("characters", 0), ("test_characters", 0), ("frames", 1), ("seed", 0)):
            check_int(getattr(self, name), f"preset {self.name!r}: {name}", SpecError, lo=low)
        check_number(self.fps, f"preset {self.name!r}: fps", SpecError, lo=0.0, lo_open=True)
        if self.characters < 2 or not 1 <= self.test_characters < self.characters:
            raise SpecError(f"preset {self.name!r}: need at least one train and one test character, got "
                            f"{self.characters} characters with {self.test_characters} for test")
        names = [m.name for m in self.motions]
        if not names or len(set(names)) != len(names):
            raise SpecError(f"preset {self.name!r}: motion names must be unique and non-empty, got {names}")

    def to_dict(self) -> dict[str, Any]:
        return dataconfig.to_dict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Preset:
        """Inverse of :meth:`to_dict`; unknown or missing fields raise naming them."""
        return dataconfig.from_dict(cls, doc, SpecError, where="preset")

    def with_overrides(self, **changes: Any) -> Preset:
        """A copy with top-level fields or ``render_*`` / ``cloth_*`` fields replaced."""
        render = {k[7:]: v for k, v in changes.items() if k.startswith("render_")}
        cloth = {k[6:]: v for k, v in changes.items() if k.startswith("cloth_")}
        top = {k: v for k, v in changes.items() if not k.startswith(("render_", "cloth_"))}
        dataconfig.check_keys(top, self.__dataclass_fields__, SpecError, noun="preset field")
        return replace(self, render=replace(self.render, **render), cloth=replace(self.cloth, **cloth), **top)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny", characters=2, test_characters=1, motions=(MotionSpec("walk"),), frames=6, fps=30.0,
        render=RenderSettings(resolution=64, samples=4, denoise=False),
        cloth=ClothSettings(quality=3, collision_quality=1, spacing=0.045, preroll=10, hold=3, self_collision=False),
        seed=7,
    ),
    "mini": Preset(
        name="mini", characters=6, test_characters=1,
        motions=(MotionSpec("walk"), MotionSpec("dance"), MotionSpec("jumping_jacks"), MotionSpec("turn")),
        frames=48, fps=30.0,
        # OIDN costs ~0.7 s per frame to start on a CPU, more than 16 samples at 128 px take.
        render=RenderSettings(resolution=128, samples=16, denoise=False),
        cloth=ClothSettings(quality=4, collision_quality=2, spacing=0.045, preroll=16, hold=5),
        seed=2048,  # drawn so the six characters wear all six garment kinds and all four prints
    ),
    "paper": Preset(
        name="paper", characters=99, test_characters=19, motions=(MotionSpec("dance"),), frames=960, fps=30.0,
        render=RenderSettings(resolution=512, samples=64, denoise=True),
        cloth=ClothSettings(quality=8, collision_quality=3, spacing=0.022, preroll=45, hold=15),
        seed=2023,
    ),
    "wide": Preset(
        name="wide", characters=64, test_characters=8,
        motions=(MotionSpec("walk"), MotionSpec("dance"), MotionSpec("jumping_jacks"), MotionSpec("turn")),
        frames=24, fps=30.0,
        render=RenderSettings(resolution=128, samples=16, denoise=False),
        cloth=ClothSettings(quality=4, collision_quality=2, spacing=0.045, preroll=16, hold=5),
        seed=4096,
    ),
}
PRESETS["wide256"] = PRESETS["wide"].with_overrides(name="wide256", render_resolution=256)
# characters are drawn per index (character_seed), so c000..c063 are wide256's people and c064.. new ones
PRESETS["wide256-val"] = PRESETS["wide256"].with_overrides(name="wide256-val", characters=72)


def get_preset(name: str) -> Preset:
    return PRESETS[check_choice(name, "preset", PRESETS, SpecError)]


def split_characters(preset: Preset) -> dict[str, str]:
    """Character id -> 'train' or 'test': a seeded draw, so the split is by person."""
    ids = [character_id(i) for i in range(preset.characters)]
    order = np.random.default_rng(preset.seed).permutation(len(ids))
    test = {ids[i] for i in order[: preset.test_characters]}
    return {c: ("test" if c in test else "train") for c in ids}


def character_id(index: int) -> str:
    return f"c{index:03d}"


@dataclass(frozen=True)
class Shard:
    """One unit of work: one character performing one motion, rendered into one sequence."""

    sequence_id: str
    split: str
    character: CharacterSpec
    motion: MotionSpec
    preset: Preset

    def to_job(self) -> dict[str, Any]:
        """The JSON document a worker receives (and ``meta.json`` keeps)."""
        return dataconfig.to_dict(self)

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> Shard:
        return dataconfig.from_dict(cls, job, SpecError, where="shard job")


def plan(preset: Preset) -> list[Shard]:
    """All shards of a preset, character-major (every character performs every motion)."""
    split = split_characters(preset)
    shards = []
    for i in range(preset.characters):
        cid = character_id(i)
        spec = sample_character(character_seed(preset.seed, i), character_id=cid)
        for motion in preset.motions:
            shards.append(Shard(f"{cid}-{motion.name}", split[cid], spec, motion, preset))
    return shards
