"""Plates on the Video Sequencer: image-sequence strips on a free channel, replaced on regeneration.

Blender 4.2 keeps strips in ``sequence_editor.sequences`` / ``sequences_all``; 5.0 renamed them
``strips`` / ``strips_all``. Everything here goes through :func:`strips` and :func:`all_strips`.
A strip made here carries custom properties (``btdm_key``, ``btdm_kind``, ``btdm_seed``,
``btdm_model``, ``btdm_job_id``) so a redo knows what it was made from; they are plain data, so
removing the add-on leaves the .blend intact.
"""

from __future__ import annotations

import os

import bpy

__all__ = ["all_strips", "find_strips", "place_image_strip", "place_layered_strips", "strips"]

MAX_CHANNEL = 128


def strips(editor):
    """The top-level strip collection (has ``new_image`` and ``remove``)."""
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def all_strips(editor):
    """Every strip, meta strips' contents included."""
    return editor.strips_all if hasattr(editor, "strips_all") else editor.sequences_all


def find_strips(scene, key: str, kind: str) -> list:
    editor = scene.sequence_editor
    if editor is None:
        return []
    return [s for s in all_strips(editor) if s.get("btdm_key") == key and s.get("btdm_kind") == kind]


def blend_relative(path: str) -> str:
    """``//...`` for a path under the .blend's folder (the project can move with its plates), else ``path``."""
    blend = bpy.data.filepath
    if not blend:
        return path
    base = os.path.dirname(os.path.abspath(blend))
    try:
        inside = os.path.commonpath([base, os.path.abspath(path)]) == base
    except ValueError:  # another drive
        return path
    return bpy.path.relpath(path) if inside else path


def _channel_free(editor, channel: int, start: int, end: int) -> bool:
    return not any(s.channel == channel and s.frame_final_start < end and start < s.frame_final_end for s in all_strips(editor))


def free_channel(editor, start: int, end: int, prefer: int | None = None) -> int:
    """The preferred channel if nothing overlaps ``[start, end)`` there, else the lowest free one."""
    if prefer is not None and _channel_free(editor, prefer, start, end):
        return prefer
    for channel in range(1, MAX_CHANNEL + 1):
        if _channel_free(editor, channel, start, end):
            return channel
    raise RuntimeError(f"no free sequencer channel for frames {start}..{end - 1}")


def free_channels(editor, start: int, end: int, count: int, prefer: int | None = None) -> int:
    """The lowest channel ``c`` (``prefer`` first) with channels ``c .. c+count-1`` all free over ``[start, end)``."""
    candidates = ([prefer] if prefer is not None else []) + list(range(1, MAX_CHANNEL - count + 2))
    for channel in candidates:
        if channel + count - 1 <= MAX_CHANNEL and all(_channel_free(editor, channel + k, start, end)
                                                      for k in range(count)):
            return channel
    raise RuntimeError(f"no {count} free sequencer channels for frames {start}..{end - 1}")


def _new_strip(editor, folder: str, start: int, end: int, channel: int, name: str, fit: str):
    files = [f"{frame:06d}.png" for frame in range(start, end)]
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise RuntimeError(f"{folder}: {len(missing)} of {len(files)} frames are missing (first: {missing[0]})")
    strip = strips(editor).new_image(name=name, filepath=blend_relative(os.path.join(folder, files[0])),
                                     channel=channel, frame_start=start, fit_method=fit)
    for f in files[1:]:
        strip.elements.append(f)
    return strip


def place_layered_strips(scene, layers, segments, *, key: str, kind: str, above: bool = True, fit: str = "FIT",
                         mute: bool = False) -> list:
    """Several characters' plates, stacked by ``segments`` (``[(start, end, order)]``, scene frames, ``order``
    indexing ``layers`` farthest first; see :mod:`.layers`): per segment one image strip per character, the
    nearer on the higher channel, so it covers the farther (alpha over). ``layers`` are ``(folder, name, props)``;
    every strip carries ``btdm_key``, ``btdm_kind``, ``btdm_character`` and the layer's props. Earlier strips with
    this key and kind go first (their lowest channel is reused when free). Returns the strips."""
    editor = scene.sequence_editor or scene.sequence_editor_create()
    old = find_strips(scene, key, kind)
    prefer = min((s.channel for s in old), default=None)
    for strip in old:
        strips(editor).remove(strip)
    first, end = min(seg[0] for seg in segments), max(seg[1] for seg in segments)
    base = free_channels(editor, first, end, len(layers), prefer)
    made = []
    for start, stop, order in segments:
        for rank, index in enumerate(order):
            folder, name, props = layers[index]
            label = name if len(segments) == 1 else f"{name} {start}-{stop - 1}"
            strip = _new_strip(editor, folder, start, stop, base + rank, label, fit)
            if above:
                strip.blend_type = "ALPHA_OVER"
            strip.mute = mute
            strip["btdm_key"], strip["btdm_kind"] = key, kind
            for k, v in props.items():
                strip[f"btdm_{k}"] = v
            made.append(strip)
    return made


def place_image_strip(scene, folder: str, frame_start: int, count: int, *, name: str, key: str, kind: str,
                      props: dict, above: bool = True, fit: str = "FIT", mute: bool = False):
    """An image strip of ``folder/NNNNNN.png`` (scene frames ``frame_start .. frame_start+count-1``).

    An earlier strip with the same ``key`` and ``kind`` is removed first and its channel reused
    when free. Plates blend over the channels below (alpha over). ``fit`` is how the pictures fill
    the frame (``FIT``: plates, which have the frame's aspect; ``FILL``: pose maps, square pictures of
    the whole camera view whose middle band is the frame). A ``mute`` strip is kept but not shown
    nor rendered. Returns the strip.
    """
    editor = scene.sequence_editor or scene.sequence_editor_create()
    old = find_strips(scene, key, kind)
    prefer = old[0].channel if old else None
    for strip in old:
        strips(editor).remove(strip)
    end = frame_start + count
    channel = free_channel(editor, frame_start, end, prefer)
    files = [f"{frame_start + n:06d}.png" for n in range(count)]
    missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise RuntimeError(f"{folder}: {len(missing)} of {count} frames are missing (first: {missing[0]})")
    strip = strips(editor).new_image(name=name, filepath=blend_relative(os.path.join(folder, files[0])),
                                     channel=channel, frame_start=frame_start, fit_method=fit)
    for f in files[1:]:
        strip.elements.append(f)
    if above:
        strip.blend_type = "ALPHA_OVER"
    strip.mute = mute
    strip["btdm_key"] = key
    strip["btdm_kind"] = kind
    for k, v in props.items():
        strip[f"btdm_{k}"] = v
    return strip
