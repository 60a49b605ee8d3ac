"""The engine's messages in the panel's words. No bpy here.

The engine speaks to its command line (``Pick another --skeleton or give a --bone-map JSON file``,
``raise it with --limit steps=N``) and to its HTTP API (``params.sr_steps``); an animator reads the
BTDM panel, where those are the Bone map, a custom map, SR steps. :func:`panel_words` rewrites every
engine message the add-on shows (refusals, failed jobs, lost connections): known sentences first,
then any remaining ``--flag`` and ``params.name`` by the panel's name for it, so no command-line flag
reaches the panel.
"""

from __future__ import annotations

import re

__all__ = ["FLAG_WORDS", "PARAM_WORDS", "panel_words"]

# What the panel (or Blender) calls the engine's command-line flags.
FLAG_WORDS = {
    "skeleton": "Bone map", "bone-map": "a custom bone map", "fit-shape": "Fit body shape", "steps": "Steps",
    "sr-steps": "SR steps", "seed": "Seed", "finetune-steps": "Fine-tuning steps", "model": "Model",
    "method": "Method", "appearance": "the appearance image", "appearance-iuv": "the appearance's IUV file",
    "iuv-order": "IUV channels", "fps": "the scene's frame rate", "scale": "the armature's scale",
    "up": "the up axis", "frames": "the frame range", "start": "the frame range's start",
    "end": "the frame range's end", "armature": "Armature", "camera": "Camera", "limit": "the engine's limit",
    "plate": "the shot camera's plates", "size": "the size", "out": "Output",
}
# What the panel calls the service's job parameters (``params.<name>`` in its refusals).
PARAM_WORDS = {
    "steps": "Steps", "sr_steps": "SR steps", "seed": "Seed", "finetune_steps": "Fine-tuning steps",
    "finetune_lr": "the fine-tuning rate", "skeleton": "Bone map", "bone_map": "the custom bone map",
    "fit_shape": "Fit body shape", "model": "Model", "method": "Method", "iuv_order": "IUV channels",
    "appearance_frame": "the appearance's frame", "fps": "the scene's frame rate",
    "frame_start": "the frame range's start", "frame_end": "the frame range's end",
    "plate": "the shot camera's plates", "use_default_appearance": "Appearance (Model's own)",
}
# Whole sentences, before the flag-by-flag rewrite (a regular expression and its panel words).
_SENTENCES = (
    (r"pick another --skeleton or give a --bone-map JSON file", "pick another Bone map or load a custom map"),
    (r"\(?raise it with --limit [a-z_]+=N if you mean it\)?",
     "(the engine's own limit: whoever runs the engine can raise it)"),
    (r"pass --scale and --up", "apply the armature's scale (Object > Apply > Scale) and stand it along Z"),
    (r"pass scale \(--scale, metres per unit\) or check the up axis \(--up\)",
     "apply the armature's scale (Object > Apply > Scale) or check that it stands along Z"),
    (r"pass --scale if that is wrong", "apply the armature's scale if that is wrong"),
    (r"assumed ([a-z]+), pass --scale to choose", r"assumed \1; apply the armature's scale to choose"),
    (r"pass --up or check the bone map", "check the Bone map"),
    (r"pass --up to override", "check that the armature stands along Z"),
    (r"pass --up [+-]?[XYZxyz], or leave --up out \(the up axis is then detected\)",
     "check that the armature stands along Z"),
    (r"check the bone map \(--bone-map\) or the file's rest pose", "check the Bone map or the armature's rest pose"),
    (r"--fit-shape ignored", "Fit body shape ignored"),
)
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)(?:[ =]([A-Za-z0-9_.:+-]+))?")
_PARAM = re.compile(r"\bparams\.([a-z_]+)\b")


def _sentence(pattern: str, words: str):
    regex = re.compile(pattern, re.IGNORECASE)

    def apply(text: str) -> str:
        def swap(match: re.Match) -> str:
            out = match.expand(words)
            return out[:1].upper() + out[1:] if match.group(0)[:1].isupper() else out

        return regex.sub(swap, text)

    return apply


_REWRITES = tuple(_sentence(p, w) for p, w in _SENTENCES)


def _flag(match: re.Match) -> str:
    name, value = match.group(1), match.group(2)
    words = FLAG_WORDS.get(name, name.replace("-", " "))
    if value is None:
        return words
    if name == "limit":
        return words
    return f"{words} {value}"


def panel_words(text: str | None) -> str:
    """``text`` (an engine's message) in the panel's words: no ``--flag`` and no ``params.name`` left."""
    text = text or ""
    for rewrite in _REWRITES:
        text = rewrite(text)
    text = _FLAG.sub(_flag, text)
    return _PARAM.sub(lambda m: PARAM_WORDS.get(m.group(1), m.group(1).replace("_", " ")), text)
