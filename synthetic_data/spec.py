"""What a synthetic character is, as plain data: body shape, skin, hair, garments, lights, camera.

Following kubric's idea, everything that decides how a character looks is a frozen dataclass that
round-trips through JSON and is drawn from one seed by :func:`sample_character`. Nothing here
imports Blender; :mod:`synthetic_data.blender_scene` is the thin layer that mirrors a spec into
``bpy`` objects, so the spec can be checked (and diffed, and stored in ``meta.json``) without it.

Colours are sRGB triples in [0, 1] (what a person would pick in a colour picker); the Blender
layer converts them to linear light. Lengths are metres in SMPL's world (Y up, body facing +Z).
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from btdm_engine import dataconfig
from btdm_engine.body.skeleton import NUM_BETAS
from btdm_engine.dataconfig import check_bool, check_choice, check_int, check_number, check_numbers
from btdm_engine.errors import BtdmError

__all__ = [
    "CLOTH_MATERIALS",
    "GARMENT_FAMILIES",
    "GARMENT_KINDS",
    "HAIR_STYLES",
    "LOGO_SHAPES",
    "OUTFITS",
    "PATTERNS",
    "SPEC_VERSION",
    "CameraSpec",
    "CharacterSpec",
    "ClothSpec",
    "GarmentSpec",
    "HairSpec",
    "LightSpec",
    "LightingSpec",
    "LogoSpec",
    "SpecError",
    "TextureSpec",
    "character_seed",
    "sample_character",
]

SPEC_VERSION = 1

# Garment kind -> family. The families are the three: skirts and dresses, tops (loose
# shirts, open jackets), legwear (trousers, shorts).
GARMENT_FAMILIES: dict[str, str] = {
    "skirt": "skirt",
    "dress": "skirt",
    "shirt": "top",
    "jacket": "top",
    "trousers": "legwear",
    "shorts": "legwear",
}
GARMENT_KINDS: tuple[str, ...] = tuple(GARMENT_FAMILIES)

# Geometry parameters of each kind and their sampling ranges (uniform). Names are documented in
# synthetic_data.garments, which turns them into meshes.
GARMENT_PARAMS: dict[str, dict[str, tuple[float, float]]] = {
    "skirt": {"ease": (0.012, 0.025), "length": (0.30, 0.62), "flare": (0.10, 0.45)},
    "dress": {"ease": (0.015, 0.03), "length": (0.45, 0.85), "flare": (0.12, 0.45)},
    "shirt": {"ease": (0.02, 0.035), "sleeve": (0.25, 0.95), "hem": (0.10, 0.24)},
    "jacket": {"ease": (0.03, 0.045), "sleeve": (0.75, 1.0), "hem": (0.14, 0.3), "opening": (0.04, 0.09)},
    "trousers": {"ease": (0.012, 0.022), "leg": (0.85, 0.97), "cuff_flare": (0.0, 0.04)},
    "shorts": {"ease": (0.014, 0.025), "leg": (0.22, 0.45), "cuff_flare": (0.0, 0.03)},
}

# Outfits: which garments a character wears, outermost last (a top is drawn over the legwear).
OUTFITS: tuple[tuple[str, ...], ...] = (
    ("dress",),
    ("skirt", "shirt"),
    ("trousers", "shirt"),
    ("trousers", "jacket"),
    ("shorts", "shirt"),
    ("skirt", "jacket"),
)

PATTERNS: tuple[str, ...] = ("stripes", "checks", "dots", "print")
LOGO_SHAPES: tuple[str, ...] = ("disc", "shield", "diamond", "star")
HAIR_STYLES: tuple[str, ...] = ("buzz", "short", "bob", "long", "bun", "ponytail")

# Cloth materials after Blender's own presets (vertex mass kg, stiffnesses, air damping); the
# sampled spec jitters them by up to 20 %.
CLOTH_MATERIALS: dict[str, dict[str, float]] = {
    "cotton": {"mass": 0.3, "tension": 15.0, "shear": 5.0, "bending": 0.5, "air_damping": 1.0},
    "denim": {"mass": 1.0, "tension": 40.0, "shear": 40.0, "bending": 10.0, "air_damping": 1.0},
    "silk": {"mass": 0.15, "tension": 5.0, "shear": 5.0, "bending": 0.05, "air_damping": 1.0},
    "leather": {"mass": 0.4, "tension": 80.0, "shear": 80.0, "bending": 150.0, "air_damping": 1.0},
}
# Which materials suit which kind (a denim dress is fine, a leather skirt too; silk trousers less so).
_KIND_MATERIALS: dict[str, tuple[str, ...]] = {
    "skirt": ("cotton", "denim", "silk"),
    "dress": ("cotton", "silk"),
    "shirt": ("cotton", "silk"),
    "jacket": ("denim", "leather", "cotton"),
    "trousers": ("denim", "cotton"),
    "shorts": ("denim", "cotton"),
}

# Skin tones spanning light to deep (sRGB), after the Monk skin tone scale.
SKIN_TONES: tuple[tuple[float, float, float], ...] = (
    (0.965, 0.929, 0.894), (0.953, 0.906, 0.859), (0.969, 0.918, 0.816), (0.918, 0.855, 0.729),
    (0.843, 0.741, 0.588), (0.627, 0.494, 0.337), (0.510, 0.361, 0.263), (0.376, 0.255, 0.180),
    (0.227, 0.192, 0.165), (0.161, 0.141, 0.141),
)
HAIR_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.05, 0.04, 0.035), (0.16, 0.10, 0.06), (0.35, 0.22, 0.12), (0.60, 0.45, 0.25),
    (0.85, 0.72, 0.45), (0.55, 0.20, 0.08), (0.75, 0.75, 0.75), (0.20, 0.25, 0.55),
)


class SpecError(BtdmError, ValueError):
    """A character spec (or its JSON) is invalid; the message names the field and the value."""


Colour = tuple[float, float, float]


# ------------------------------------------------------------------------------ validation
def _colour(value: Any, where: str) -> Colour:
    return check_numbers(value, where, SpecError, length=3, lo=0.0, hi=1.0)  # type: ignore[return-value]


def _number(value: Any, where: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    return check_number(value, where, SpecError, lo=lo, hi=hi)


def _choice(value: Any, allowed: Sequence[str], where: str) -> str:
    return check_choice(value, where, allowed, SpecError)


def _r(x: float, digits: int = 4) -> float:
    """Round sampled numbers so the JSON form is short and stable across platforms."""
    return float(round(float(x), digits))


def _rgb(c: Sequence[float]) -> Colour:
    return (_r(c[0]), _r(c[1]), _r(c[2]))


# ------------------------------------------------------------------------------ dataclasses
@dataclass(frozen=True)
class LogoSpec:
    """A logo-like mark printed on a garment: a filled shape with a letter cut in its colours.

    ``size`` is the mark's width in metres; ``offset`` moves it (x, y metres) from the garment's
    anchor (chest centre for tops and dresses, left thigh or hip for skirts and legwear).
    """

    shape: str
    glyph: str
    colour: Colour
    glyph_colour: Colour
    size: float
    offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        _choice(self.shape, LOGO_SHAPES, "logo.shape")
        if not (isinstance(self.glyph, str) and len(self.glyph) == 1 and self.glyph.isalnum() and self.glyph.isascii()):
            raise SpecError(f"logo.glyph: expected one ASCII letter or digit, got {self.glyph!r}")
        object.__setattr__(self, "colour", _colour(self.colour, "logo.colour"))
        object.__setattr__(self, "glyph_colour", _colour(self.glyph_colour, "logo.glyph_colour"))
        _number(self.size, "logo.size", 0.02, 0.3)
        if not (isinstance(self.offset, (list, tuple)) and len(self.offset) == 2):
            raise SpecError(f"logo.offset: expected (x, y) metres, got {self.offset!r}")
        object.__setattr__(
            self, "offset", tuple(_number(v, f"logo.offset[{i}]", -0.3, 0.3) for i, v in enumerate(self.offset))
        )


@dataclass(frozen=True)
class TextureSpec:
    """A procedural print with high-frequency detail, so texture drift is visible and measurable.

    ``pattern``: stripes (parallel bands), checks (two-colour squares), dots (a polka grid) or
    print (a cellular, floral-like motif). ``frequency`` is repeats per metre on the garment's
    rest surface; ``angle`` (degrees) turns stripes and checks; ``accent`` is the second colour.
    """

    pattern: str
    base: Colour
    accent: Colour
    frequency: float
    angle: float = 0.0
    logo: LogoSpec | None = None

    def __post_init__(self) -> None:
        _choice(self.pattern, PATTERNS, "texture.pattern")
        object.__setattr__(self, "base", _colour(self.base, "texture.base"))
        object.__setattr__(self, "accent", _colour(self.accent, "texture.accent"))
        _number(self.frequency, "texture.frequency", 1.0, 200.0)
        _number(self.angle, "texture.angle", -180.0, 180.0)
        if self.logo is not None and not isinstance(self.logo, LogoSpec):
            raise SpecError(f"texture.logo: expected a LogoSpec or None, got {type(self.logo).__name__}")


@dataclass(frozen=True)
class ClothSpec:
    """Cloth simulation parameters (Blender's cloth modifier units).

    ``self_collision`` is on where folds meet themselves (skirts, dresses, open jackets);
    ``pin_stiffness`` holds the pinned band (waistband, shoulders) to the body.
    """

    material: str
    mass: float
    tension: float
    shear: float
    bending: float
    air_damping: float
    self_collision: bool
    pin_stiffness: float = 1.0

    def __post_init__(self) -> None:
        _choice(self.material, tuple(CLOTH_MATERIALS), "cloth.material")
        _number(self.mass, "cloth.mass", 0.01, 10.0)
        for name in ("tension", "shear", "bending", "air_damping"):
            _number(getattr(self, name), f"cloth.{name}", 0.0, 10000.0)
        check_bool(self.self_collision, "cloth.self_collision", SpecError)
        _number(self.pin_stiffness, "cloth.pin_stiffness", 0.0, 50.0)


@dataclass(frozen=True)
class GarmentSpec:
    """One garment: its kind (family member), geometry parameters, cloth and texture."""

    kind: str
    params: Mapping[str, float]
    cloth: ClothSpec
    texture: TextureSpec

    def __post_init__(self) -> None:
        _choice(self.kind, GARMENT_KINDS, "garment.kind")
        allowed = GARMENT_PARAMS[self.kind]
        dataconfig.check_keys(self.params, allowed, SpecError, where=f"garment.params ({self.kind})", required=allowed)
        clean = {}
        for name, (lo, hi) in allowed.items():
            clean[name] = _number(self.params[name], f"garment.params.{name} ({self.kind})", lo, hi)
        object.__setattr__(self, "params", dict(sorted(clean.items())))

    @property
    def family(self) -> str:
        return GARMENT_FAMILIES[self.kind]


@dataclass(frozen=True)
class HairSpec:
    """Hair: a style (shape), a colour and a volume scale (how far it stands off the scalp)."""

    style: str
    colour: Colour
    volume: float

    def __post_init__(self) -> None:
        _choice(self.style, HAIR_STYLES, "hair.style")
        object.__setattr__(self, "colour", _colour(self.colour, "hair.colour"))
        _number(self.volume, "hair.volume", 0.5, 2.0)


@dataclass(frozen=True)
class LightSpec:
    """An area light placed around the body, relative to the camera's viewing direction.

    ``azimuth`` (degrees) 0 = from the camera, positive = to the camera's right; ``elevation``
    above the horizon; ``energy`` in watts; ``size`` the square light's edge, metres.
    """

    azimuth: float
    elevation: float
    distance: float
    energy: float
    size: float
    colour: Colour

    def __post_init__(self) -> None:
        _number(self.azimuth, "light.azimuth", -180.0, 180.0)
        _number(self.elevation, "light.elevation", -30.0, 89.0)
        _number(self.distance, "light.distance", 0.5, 20.0)
        _number(self.energy, "light.energy", 0.0, 1e5)
        _number(self.size, "light.size", 0.01, 10.0)
        object.__setattr__(self, "colour", _colour(self.colour, "light.colour"))


@dataclass(frozen=True)
class LightingSpec:
    """Key, fill and rim lights plus a uniform world (ambient) colour and strength."""

    key: LightSpec
    fill: LightSpec
    rim: LightSpec
    world_colour: Colour
    world_strength: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "world_colour", _colour(self.world_colour, "lighting.world_colour"))
        _number(self.world_strength, "lighting.world_strength", 0.0, 10.0)


@dataclass(frozen=True)
class CameraSpec:
    """Per-character camera variation around the motion's default framing.

    ``yaw`` turns the viewing direction about the vertical (degrees, positive = camera moves to
    the body's left), ``elevation`` looks down on the body, ``fov`` is the vertical field of
    view, ``margin`` the free border (fraction of the image). The camera stays static over a
    sequence and frames every frame of it (btdm_engine.motion.camera.default_camera).
    """

    yaw: float
    elevation: float
    fov: float
    margin: float

    def __post_init__(self) -> None:
        _number(self.yaw, "camera.yaw", -90.0, 90.0)
        _number(self.elevation, "camera.elevation", -20.0, 45.0)
        _number(self.fov, "camera.fov", 10.0, 90.0)
        _number(self.margin, "camera.margin", 0.0, 0.3)


@dataclass(frozen=True)
class CharacterSpec:
    """Everything that makes one synthetic person; one seed reproduces it exactly.

    ``garments`` are ordered inner to outer. ``render_seed`` seeds Cycles' sampling pattern.
    """

    character_id: str
    seed: int
    betas: tuple[float, ...]
    skin: Colour
    hair: HairSpec
    shoes: Colour
    garments: tuple[GarmentSpec, ...]
    lighting: LightingSpec
    camera: CameraSpec
    render_seed: int
    spec_version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        cid = self.character_id
        if not isinstance(cid, str) or not cid or not cid.replace("_", "").replace("-", "").isalnum():
            raise SpecError(f"character_id: expected letters, digits, '_' or '-', got {self.character_id!r}")
        for name in ("seed", "render_seed"):
            check_int(getattr(self, name), name, SpecError, lo=0, hi=2**63 - 1)
        if not (isinstance(self.betas, (list, tuple)) and len(self.betas) == NUM_BETAS):
            raise SpecError(f"betas: expected {NUM_BETAS} numbers, got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(_number(b, f"betas[{i}]", -5.0, 5.0) for i, b in enumerate(self.betas)))
        object.__setattr__(self, "skin", _colour(self.skin, "skin"))
        object.__setattr__(self, "shoes", _colour(self.shoes, "shoes"))
        if not self.garments:
            raise SpecError("garments: a character wears at least one garment")
        kinds = tuple(g.kind for g in self.garments)
        if kinds not in OUTFITS:
            raise SpecError(f"garments: outfit {kinds} is not one of {', '.join('+'.join(o) for o in OUTFITS)}")
        object.__setattr__(self, "garments", tuple(self.garments))
        if self.spec_version != SPEC_VERSION:
            raise SpecError(f"spec_version: {self.spec_version!r} is not supported (expected {SPEC_VERSION})")

    # -------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return dataconfig.to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, doc: Any) -> CharacterSpec:
        """Rebuild a spec from :meth:`to_dict`'s output, validating every field."""
        return dataconfig.from_dict(cls, doc, SpecError, where="character")

    @classmethod
    def from_json(cls, text: str) -> CharacterSpec:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"character spec: invalid JSON at line {exc.lineno}: {exc.msg}") from exc
        return cls.from_dict(doc)


# ------------------------------------------------------------------------------ sampling
def character_seed(base_seed: int, index: int) -> int:
    """The seed of character ``index`` of a dataset seeded with ``base_seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def _jitter_colour(rng: np.random.Generator, c: Colour, amount: float) -> Colour:
    return _rgb(np.clip(np.asarray(c) * (1.0 + rng.uniform(-amount, amount, 3)), 0.0, 1.0))


def _hsv_colour(rng: np.random.Generator, value: tuple[float, float], sat: tuple[float, float]) -> Colour:
    h = rng.uniform(0.0, 1.0)
    return _rgb(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*value)))


def _contrasting(rng: np.random.Generator, base: Colour) -> Colour:
    """A second colour whose luminance differs clearly from ``base`` (so the print is visible)."""
    lum = 0.2126 * base[0] + 0.7152 * base[1] + 0.0722 * base[2]
    value = (0.05, 0.3) if lum > 0.45 else (0.8, 1.0)
    return _hsv_colour(rng, value, (0.0, 0.8))


def _texture(rng: np.random.Generator, kind: str) -> TextureSpec:
    base = _hsv_colour(rng, (0.25, 0.95), (0.2, 0.9))
    accent = _contrasting(rng, base)
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    freq = {"stripes": (8.0, 22.0), "checks": (6.0, 16.0), "dots": (8.0, 18.0), "print": (5.0, 12.0)}[pattern]
    angle = float(rng.choice([0.0, 90.0, 45.0, -45.0])) + rng.uniform(-8.0, 8.0)
    logo = None
    if kind in ("shirt", "jacket", "dress") or rng.uniform() < 0.35:
        logo = LogoSpec(
            shape=LOGO_SHAPES[int(rng.integers(len(LOGO_SHAPES)))],
            glyph=str(rng.choice(list("ABCDEFGHKLMNPRSTUXYZ23457"))),
            colour=_contrasting(rng, base),
            glyph_colour=base,
            size=_r(rng.uniform(0.07, 0.12)),
            offset=(_r(rng.uniform(-0.05, 0.05)), _r(rng.uniform(-0.03, 0.03))),
        )
    return TextureSpec(pattern=pattern, base=base, accent=accent, frequency=_r(rng.uniform(*freq), 2),
                       angle=_r(angle, 2), logo=logo)


def _garment(rng: np.random.Generator, kind: str) -> GarmentSpec:
    params = {name: _r(rng.uniform(lo, hi)) for name, (lo, hi) in GARMENT_PARAMS[kind].items()}
    options = _KIND_MATERIALS[kind]
    material = options[int(rng.integers(len(options)))]
    base = CLOTH_MATERIALS[material]
    j = {k: _r(v * rng.uniform(0.8, 1.2)) for k, v in base.items()}
    cloth = ClothSpec(
        material=material, mass=j["mass"], tension=j["tension"], shear=j["shear"], bending=j["bending"],
        air_damping=j["air_damping"], self_collision=kind in ("skirt", "dress", "jacket"),
        pin_stiffness=_r(rng.uniform(1.0, 3.0)),
    )
    return GarmentSpec(kind=kind, params=params, cloth=cloth, texture=_texture(rng, kind))


def _light(rng: np.random.Generator, az: tuple[float, float], el: tuple[float, float], energy: tuple[float, float],
           warmth: float) -> LightSpec:
    t = rng.uniform(-warmth, warmth)  # warm (positive) or cool (negative) tint
    colour = _rgb(np.clip([1.0 + 0.5 * t, 1.0, 1.0 - 0.5 * t], 0.0, 1.0) / max(1.0, 1.0 + 0.5 * abs(t)))
    azimuth = (rng.uniform(*az) + 180.0) % 360.0 - 180.0
    return LightSpec(azimuth=_r(azimuth, 2), elevation=_r(rng.uniform(*el), 2), distance=_r(rng.uniform(3.0, 4.5), 3),
                     energy=_r(rng.uniform(*energy), 1), size=_r(rng.uniform(0.8, 2.0), 3), colour=colour)


def sample_character(seed: int, character_id: str | None = None) -> CharacterSpec:
    """Draw a character from ``seed``: same seed, same spec (and hence the same rendered person).

    Body shapes use the first betas most (they carry height and girth); the outfit is one of
    :data:`OUTFITS`, each garment with its own geometry, cloth material and print.
    """
    check_int(seed, "seed", SpecError, lo=0, numpy=True)
    rng = np.random.default_rng(int(seed))
    scale = np.array([1.2, 1.0, 0.6, 0.5, 0.4, 0.3, 0.3, 0.3, 0.3, 0.3])
    betas = tuple(_r(b) for b in np.clip(rng.normal(size=NUM_BETAS) * scale, -2.5, 2.5))
    skin = _jitter_colour(rng, SKIN_TONES[int(rng.integers(len(SKIN_TONES)))], 0.04)
    hair = HairSpec(style=HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))],
                    colour=_jitter_colour(rng, HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))], 0.1),
                    volume=_r(rng.uniform(0.8, 1.25)))
    shoes = _hsv_colour(rng, (0.05, 0.7), (0.0, 0.6))
    outfit = OUTFITS[int(rng.integers(len(OUTFITS)))]
    garments = tuple(_garment(rng, kind) for kind in outfit)
    lighting = LightingSpec(
        key=_light(rng, (-60.0, 60.0), (20.0, 55.0), (150.0, 350.0), 0.3),
        fill=_light(rng, (-120.0, 120.0), (0.0, 30.0), (40.0, 120.0), 0.3),
        rim=_light(rng, (140.0, 220.0) if rng.uniform() < 0.5 else (-220.0, -140.0), (20.0, 60.0), (100.0, 300.0), 0.2),
        world_colour=_jitter_colour(rng, (0.85, 0.87, 0.9), 0.1),
        world_strength=_r(rng.uniform(0.2, 0.45)),
    )
    camera = CameraSpec(yaw=_r(rng.uniform(-25.0, 25.0), 2), elevation=_r(rng.uniform(-3.0, 12.0), 2),
                        fov=_r(rng.uniform(30.0, 45.0), 2), margin=_r(rng.uniform(0.04, 0.1)))
    render_seed = int(rng.integers(0, 2**31 - 1))
    return CharacterSpec(
        character_id=character_id if character_id is not None else f"char{int(seed) % 10**8:08d}",
        seed=int(seed), betas=betas, skin=skin, hair=hair, shoes=shoes, garments=garments,
        lighting=lighting, camera=camera, render_seed=render_seed,
    )
