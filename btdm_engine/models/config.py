"""Frozen-dataclass configs shared by the networks: JSON round trip, strict validation, presets.

A config is born from the constructor's arguments (diffusers' habit) and saved as
``config.json`` beside the weights; ``from_dict`` refuses anything it does not know, so a
checkpoint can never silently load into a differently shaped network.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from btdm_engine import dataconfig
from btdm_engine.errors import BtdmError

C = TypeVar("C", bound="ModelConfig")


class ModelConfigError(BtdmError, ValueError):
    """A network config has an unknown key, a missing key or a bad value (names which)."""


class ModelConfig:
    """Mixin for the frozen config dataclasses: ``to_dict``/``from_dict``/``preset``/``replace``.

    Subclasses are ``@dataclass(frozen=True)`` and define ``PRESET_FIELDS: ClassVar[dict[str, dict]]``
    holding each preset's field values (the config objects themselves are built lazily).
    """

    PRESET_FIELDS: ClassVar[dict[str, dict[str, Any]]] = {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists) that ``from_dict`` turns back into ``self``."""
        return dataconfig.to_dict(self)

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """Build a config from ``to_dict``'s output (e.g. a checkpoint's ``config.json``).

        Raises ModelConfigError naming unknown or missing keys and bad values.
        """
        return dataconfig.from_dict(cls, d, ModelConfigError, where=cls.__name__, noun="key", listing=str)

    @classmethod
    def preset(cls: type[C], name: str) -> C:
        """The named preset; unknown names raise ModelConfigError listing the allowed ones."""
        if name not in cls.PRESET_FIELDS:
            raise ModelConfigError(
                f"{cls.__name__}: unknown preset {name!r}; allowed: {sorted(cls.PRESET_FIELDS)}"
            )
        return cls(**cls.PRESET_FIELDS[name])

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed (validated like a fresh config)."""
        names = [f.name for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        dataconfig.check_keys(changes, names, ModelConfigError, where=type(self).__name__, noun="key", listing=str)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


# --- field validators (used from __post_init__) -------------------------------------------


def check_int(owner: str, field: str, value: Any, minimum: int = 1) -> None:
    dataconfig.check_int(value, f"{owner}.{field}", ModelConfigError, lo=minimum)


def check_float(owner: str, field: str, value: Any, lo: float, hi: float) -> None:
    dataconfig.check_number(value, f"{owner}.{field}", ModelConfigError, lo=lo, hi=hi)


def check_bool(owner: str, field: str, value: Any) -> None:
    dataconfig.check_bool(value, f"{owner}.{field}", ModelConfigError)


def check_int_tuple(owner: str, field: str, value: Any, *, allow_empty: bool = False) -> None:
    if (
        not isinstance(value, tuple)
        or (not value and not allow_empty)
        or any(not dataconfig.is_int(v) or v < 1 for v in value)
    ):
        raise ModelConfigError(
            f"{owner}.{field}: expected a list of positive ints, got {value!r}"
        )


def check_warp_channels(owner: str, value: Any) -> None:
    """``warp_channels``: 0 (no texture-transfer prior) or 4 (w_t and its confidence)."""
    if value not in (0, 4) or isinstance(value, bool):
        raise ModelConfigError(f"{owner}.warp_channels: expected 0 (none) or 4 (w_t RGB + confidence), got {value!r}")


def check_divisible(owner: str, field: str, value: int, divisor: int, divisor_name: str) -> None:
    if value % divisor:
        raise ModelConfigError(
            f"{owner}.{field}: {value} channels are not divisible by {divisor_name}={divisor}"
        )


def level_resolutions(owner: str, resolution: int, channel_mult: tuple[int, ...]) -> list[int]:
    """Feature resolution of each U-Net level (halved between levels); must stay integral."""
    levels = len(channel_mult)
    if resolution % (2 ** (levels - 1)):
        raise ModelConfigError(
            f"{owner}.resolution: {resolution} is not divisible by 2**{levels - 1} "
            f"(channel_mult has {levels} levels)"
        )
    return [resolution // 2**i for i in range(levels)]


def check_unet_levels(
    owner: str,
    resolution: int,
    channel_mult: tuple[int, ...],
    attention_resolutions: tuple[int, ...],
    model_channels: int,
    norm_groups: int,
    num_heads: int,
) -> list[int]:
    """The checks every U-Net config shares; returns the level resolutions.

    Attention must sit at feature sizes the U-Net has, and every level's width must split into
    ``norm_groups`` groups and ``num_heads`` heads.
    """
    levels = level_resolutions(owner, resolution, channel_mult)
    bad = [r for r in attention_resolutions if r not in levels]
    if bad:
        raise ModelConfigError(
            f"{owner}.attention_resolutions: {bad} are not feature sizes of this U-Net; allowed: {levels}"
        )
    for mult in channel_mult:
        ch = model_channels * mult
        check_divisible(owner, "model_channels*channel_mult", ch, norm_groups, "norm_groups")
        check_divisible(owner, "model_channels*channel_mult", ch, num_heads, "num_heads")
    return levels
