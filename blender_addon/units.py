"""Which length unit makes a person of a rig: the rule that motion files and live armatures share.

A rest skeleton's height picks the unit (metres, centimetres, millimetres or inches) that puts it
nearest an adult's, refusing when none makes a person of it. ``btdm_engine.motion.retarget.
detect_units`` applies this rule to BVH, FBX and skeleton files whose units are unknown (a test
checks that the two agree height for height); the add-on applies it to a live armature whose height
in the scene's units is not a person's (a Mixamo BVH imported at Blender's default scale is about
176 units, so 176 m, tall in a metre scene). Standard library and numpy only, no bpy: the add-on
and the engine can both load it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PLAUSIBLE", "POSSIBLE", "TYPICAL_HEIGHT", "UNITS", "UnitsError", "armature_scale", "nearest_unit",
           "rest_height"]

UNITS: dict[str, float] = {"m": 1.0, "cm": 0.01, "mm": 0.001, "in": 0.0254}
"""Metres per unit of the length units that rigs and mocap files use."""
UNIT_WORDS = {"m": "metres", "cm": "centimetres", "mm": "millimetres", "in": "inches"}
TYPICAL_HEIGHT = 1.65
"""Metres: a rest skeleton (lowest to highest bone end) of an adult is about this tall."""
PLAUSIBLE = (0.9, 2.4)
"""Metres: a person's height, said without a word."""
POSSIBLE = (0.45, 3.6)
"""Metres: outside these, no unit is assumed (the rig is refused)."""


class UnitsError(ValueError):
    """No unit makes a person of the rig; the message names it and its height."""


def nearest_unit(height: float) -> str:
    """The unit (a key of :data:`UNITS`) that makes ``height`` units nearest :data:`TYPICAL_HEIGHT`."""
    return min(UNITS, key=lambda u: abs(math.log(height * UNITS[u] / TYPICAL_HEIGHT)))


def rest_height(rest: np.ndarray, tails: np.ndarray) -> float:
    """The rest skeleton's height in its own units: the extent of its bone ends along the axis it stands
    along (Blender's Z, or Y for a rig lying in Blender's world the way a Y-up file stands).

    ``rest``: (NB, 4, 4) rest matrices (heads in the last column); ``tails``: (NB, 3).
    """
    points = np.concatenate([np.asarray(rest, dtype=np.float64)[:, :3, 3], np.asarray(tails, dtype=np.float64)])
    return float(max(np.ptp(points[:, 1]), np.ptp(points[:, 2])))


def _units(value: float) -> str:
    return f"{value:.3g}" if value < 1000 else f"{value:.0f}"


def armature_scale(height: float, stated: float, name: str) -> tuple[float, str | None]:
    """Metres per Blender unit for armature ``name``, ``height`` units tall in a scene of ``stated`` metres per unit.

    A person's height at the scene's unit scale keeps it. Otherwise the height, read in the
    scene's units, gets the unit that makes a person of it (as a motion file's would): a rig 176
    units tall in a metre scene is taken as centimetres. Returns (metres per unit, a note saying what
    was assumed, or None); raises :class:`UnitsError` when no unit makes a person of it.
    """
    metres = height * stated
    if not (math.isfinite(metres) and metres > 0):
        raise UnitsError(f"armature {name!r} has no height (its bones lie flat): the body cannot be sized to it")
    if PLAUSIBLE[0] <= metres <= PLAUSIBLE[1]:
        return stated, None
    where = f"{_units(height)} units tall" + (f" ({_units(metres)} m at the scene's unit scale)" if stated != 1 else "")
    unit = nearest_unit(metres)
    person = metres * UNITS[unit]
    if not POSSIBLE[0] <= person <= POSSIBLE[1]:
        raise UnitsError(f"armature {name!r} is {where}, which is no person's height in metres, centimetres, "
                         "millimetres or inches; scale the armature object to the character's real size (or set "
                         "the scene's Unit Scale to its units)")
    if unit == "m":
        return stated, (f"armature {name!r} is {where}, {person:.2f} m: an unusual height for a person; scale the "
                        "armature object if that is wrong")
    return stated * UNITS[unit], (f"armature {name!r} is {where}: taken as {UNIT_WORDS[unit]} ({person:.2f} m); "
                                  "set the scene's Unit Scale if that is wrong")
