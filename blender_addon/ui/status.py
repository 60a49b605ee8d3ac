"""The engine's state as the panels and the add-on's preferences draw it (no network: ``MANAGER.status``).

Its own module so the preferences can draw it without importing the panels (which import the
operators and ``prepare``, which reads the preferences): the add-on's imports point one way.
"""

from __future__ import annotations

from ..engine import MANAGER

__all__ = ["draw_engine_status", "wrap"]


def draw_engine_status(layout, hint: str | None = None) -> None:
    """Connected (where, device, models) or why not; ``hint`` (what to do on a first run) while not connected."""
    s = MANAGER.status
    col = layout.column(align=True)
    if s.checking:
        col.label(text=s.reason or "connecting...", icon="SORTTIME")
    elif s.connected:
        col.label(text=f"Connected: {s.url}", icon="CHECKMARK")
        col.label(text=f"Device: {s.device_name or s.device}" + (" (started here)" if s.local_child else ""))
        for m in s.models:
            preset = f", {m.get('preset')}" if m.get("preset") else ""
            col.label(text=f"Model {m.get('name')}{preset}, {m.get('resolution')} px"
                      + (", SR3" if m.get("has_sr3") else ""))
    else:
        col.label(text="Not connected", icon="ERROR")
        for line in wrap(s.reason, 48):
            col.label(text=line)
        if hint and hint.lower() not in s.reason.lower():
            for n, line in enumerate(wrap(hint, 48)):
                col.label(text=line, icon="INFO" if n == 0 else "NONE")


def wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters (a word longer than that gets a line of its own)."""
    words, lines, line = (text or "").split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    if line:
        lines.append(line)
    return lines
