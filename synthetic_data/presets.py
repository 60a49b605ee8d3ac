"""Dataset recipes: which characters perform which motions, at what size and quality.

A :class:`Preset` is plain data; :func:`plan` expands it into shards, one per (character, motion),
each carrying everything its worker needs (so a shard can run on any machine and ``meta.json``
can rebuild it). Presets:

* ``tiny``: CI smoke set, 2 characters (1 train, 1 test) x 1 motion x 6 frames at 64 px.
* ``mini``: 6 characters (5 train, 1 test) x 4 motions x 48 frames at 128 px; builds on a 2-core
  machine in minutes and feeds the training issue and the default model.
* ``paper``: the paper's set (section 4.1, appendix D): 99 characters split 80/19, 32 s at
  30 fps, 512 px; a recipe for a render farm (``btdm synth build --ray ADDRESS``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from synthetic_data.spec import CharacterSpec, SpecError, character_seed, sample_character

__all__ = [
    "MotionSpec",
    "RenderSettings",
    "ClothSettings",
    "Preset",
    "Shard",
    "PRESETS",
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
        if self.source not in ("procedural", "bvh"):
            raise SpecError(f"motion.source {self.source!r}; allowed: procedural, bvh")
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise SpecError(f"motion.name {self.name!r}: use letters, digits, '_' or '-'")
        if self.source == "bvh" and not self.path:
            raise SpecError(f"motion {self.name!r}: a bvh motion needs a path")
        if self.source == "procedural" and self.path is not None:
            raise SpecError(f"motion {self.name!r}: a procedural motion takes no path")
        if not (np.isfinite(self.speed) and self.speed > 0):
            raise SpecError(f"motion.speed must be positive, got {self.speed!r}")


@dataclass(frozen=True)
class RenderSettings:
    """Cycles settings: ``device`` 'CPU' or 'GPU'; ``samples`` per pixel; OIDN denoising."""

    resolution: int = 256
    samples: int = 16
    denoise: bool = True
    device: str = "CPU"
    threads: int = 0  # 0 = Blender decides

    def __post_init__(self) -> None:
        if self.device not in ("CPU", "GPU"):
            raise SpecError(f"render.device {self.device!r}; allowed: CPU, GPU")
        if not 8 <= self.resolution <= 4096:
            raise SpecError(f"render.resolution {self.resolution} is outside [8, 4096]")
        if not 1 <= self.samples <= 4096:
            raise SpecError(f"render.samples {self.samples} is outside [1, 4096]")


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
        if not 1 <= self.quality <= 80:
            raise SpecError(f"cloth.quality {self.quality} is outside [1, 80]")
        if not 1 <= self.collision_quality <= 20:
            raise SpecError(f"cloth.collision_quality {self.collision_quality} is outside [1, 20]")
        if not 0.005 <= self.spacing <= 0.2:
            raise SpecError(f"cloth.spacing {self.spacing} is outside [0.005, 0.2]")
        if self.preroll < 2 or not 0 <= self.hold < self.preroll:
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
        if self.characters < 2 or not 1 <= self.test_characters < self.characters:
            raise SpecError(f"preset {self.name!r}: need at least one train and one test character, got "
                            f"{self.characters} characters with {self.test_characters} for test")
        if self.frames < 1:
            raise SpecError(f"preset {self.name!r}: frames must be >= 1, got {self.frames}")
        names = [m.name for m in self.motions]
        if not names or len(set(names)) != len(names):
            raise SpecError(f"preset {self.name!r}: motion names must be unique and non-empty, got {names}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Preset:
        d = dict(doc)
        try:
            d["motions"] = tuple(MotionSpec(**m) for m in d["motions"])
            d["render"] = RenderSettings(**d["render"])
            d["cloth"] = ClothSettings(**d["cloth"])
            return cls(**d)
        except (TypeError, KeyError) as exc:
            raise SpecError(f"preset: {exc}") from exc

    def with_overrides(self, **changes: Any) -> Preset:
        """A copy with top-level fields or ``render_*`` / ``cloth_*`` fields replaced."""
        render = {k[7:]: v for k, v in changes.items() if k.startswith("render_")}
        cloth = {k[6:]: v for k, v in changes.items() if k.startswith("cloth_")}
        top = {k: v for k, v in changes.items() if not k.startswith(("render_", "cloth_"))}
        unknown = set(top) - set(self.__dataclass_fields__)
        if unknown:
            raise SpecError(f"unknown preset field(s) {', '.join(sorted(unknown))}; allowed: {', '.join(self.__dataclass_fields__)}")
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
    "wide": Preset(
        name="wide", characters=64, test_characters=8,
        motions=(MotionSpec("walk"), MotionSpec("dance"), MotionSpec("jumping_jacks"), MotionSpec("turn")),
        frames=24, fps=30.0,
        render=RenderSettings(resolution=128, samples=16, denoise=False),
        cloth=ClothSettings(quality=4, collision_quality=2, spacing=0.045, preroll=16, hold=5),
        seed=4096,
    ),
    "paper": Preset(
        name="paper", characters=99, test_characters=19, motions=(MotionSpec("dance"),), frames=960, fps=30.0,
        render=RenderSettings(resolution=512, samples=64, denoise=True),
        cloth=ClothSettings(quality=8, collision_quality=3, spacing=0.022, preroll=45, hold=15),
        seed=2023,
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise SpecError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]


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
        return {
            "sequence_id": self.sequence_id,
            "split": self.split,
            "character": self.character.to_dict(),
            "motion": asdict(self.motion),
            "preset": self.preset.to_dict(),
        }

    @classmethod
    def from_job(cls, job: dict[str, Any]) -> Shard:
        try:
            return cls(
                sequence_id=job["sequence_id"], split=job["split"],
                character=CharacterSpec.from_dict(job["character"]),
                motion=MotionSpec(**job["motion"]), preset=Preset.from_dict(job["preset"]),
            )
        except KeyError as exc:
            raise SpecError(f"shard job: missing field {exc}") from exc


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
