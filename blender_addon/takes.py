"""Takes: every Generate keeps its plate in its own folder of the shot's output folder. No bpy here.

Layout of a shot's output folder (``//previs/<blend>_<scene>_<camera>/`` or the panel's Output)::

    take_001/000001.png ...     the plates of take 1 (scene frame numbers)
    take_001/.btdm-frames.json  which shot owns them and which frames the add-on wrote (:mod:`.jobs`)
    take_001/take.json          what made it: seed, model, steps, method, job id, frames, when
    take_002/...
    take_003/Alice/000001.png ...   several characters in one Generate: a folder each (each with its own
    take_003/Bob/000001.png ...     .btdm-frames.json) and one take.json listing them ("characters")

A take is a ``take_NNN`` folder holding a ``take.json`` this add-on wrote. A new take gets the
next number after the highest one of this folder (a folder left empty by a cancelled run is reused
or removed). Deleting a take removes only the files the add-on wrote there (the frames its record
lists, the two records, its temporary files) and the folder when nothing else is left in it.
Another shot's takes in the same folder are never listed, switched to, written over or deleted:
:func:`check_takes` refuses the folder before any work, as ``jobs.check_output_folder`` does for
one folder.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass

from .jobs import WRITTEN_FILE, RunFailed, _owner, _read_record, _written, check_output_folder
from .pngio import atomic_write_bytes

__all__ = ["RECORD", "Take", "check_takes", "delete_take", "discard", "list_takes", "new_take_dir", "write_group_take",
           "write_take"]

RECORD = "take.json"
TAKE_DIR = re.compile(r"^take_(\d{3,})$")
_TEMP_FILE = re.compile(r"^\.btdm\..+\.tmp$")


@dataclass(frozen=True)
class Take:
    number: int
    folder: str  # absolute
    record: dict  # take.json

    @property
    def characters(self) -> list[dict]:
        """Several characters' take: ``[{"name", "folder", "seed", "job_id", "depths", ...}]`` ([] for one)."""
        found = self.record.get("characters")
        return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []

    @property
    def label(self) -> str:
        r = self.record
        method = " texture" if r.get("method") == "texture" else ""
        if self.characters:
            seeds = ", ".join(str(c.get("seed", "?")) for c in self.characters)
            return f"Take {self.number}: {len(self.characters)} characters, seeds {seeds}, {r.get('model', '?')}{method}"
        return f"Take {self.number}: seed {r.get('seed', '?')}, {r.get('model', '?')}{method}"

    def character_folder(self, character: dict) -> str | None:
        """A character's folder inside the take (None for a name that would leave it)."""
        name = str(character.get("folder", ""))
        if not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name):
            return None
        return os.path.join(self.folder, name)


def take_dir(out: str, number: int) -> str:
    return os.path.join(out, f"take_{number:03d}")


def _numbers(out: str) -> list[tuple[int, str]]:
    try:
        names = os.listdir(out)
    except OSError:
        return []
    found = []
    for name in names:
        match = TAKE_DIR.match(name)
        path = os.path.join(out, name)
        if match and os.path.isdir(path) and not os.path.islink(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def _read_take(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, RECORD), encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _same_shot(folder: str, shot: dict | None, record: dict | None = None) -> bool:
    if shot is None:
        return True
    try:
        owner = _owner(_read_record(folder))
    except RunFailed:
        return False
    if owner is None and record is not None and isinstance(record.get("shot"), dict):
        owner = _owner(record)  # several characters: the take folder holds no frames of its own
    return owner is None or owner == {k: str(shot.get(k, "")) for k in owner}


def list_takes(out: str, shot: dict | None = None) -> list[Take]:
    """This shot's takes in ``out``, oldest first (another shot's are left out)."""
    takes = []
    for number, folder in _numbers(out):
        record = _read_take(folder)
        if record is not None and _same_shot(folder, shot, record):
            takes.append(Take(number=number, folder=folder, record=record))
    return takes


def check_takes(out: str, shot: dict | None) -> None:
    """Refuse (``RunFailed``) an output folder whose takes hold another shot's frames, or frames pre-vis did not write."""
    check_output_folder(out, None)  # plates of an older add-on lie in the folder itself: foreign files only
    for _number, folder in _numbers(out):
        check_output_folder(folder, shot)


def new_take_dir(out: str) -> str:
    """The folder for the next take: one past the highest take of ``out``; a folder a cancelled run left empty
    is reused. Not created here."""
    numbers = _numbers(out)
    taken = [n for n, folder in numbers if _read_take(folder) is not None or _has_files(folder)]
    return take_dir(out, (max(taken) if taken else 0) + 1)


def _has_files(folder: str) -> bool:
    try:
        return any(not name.startswith(".btdm-") for name in os.listdir(folder))
    except OSError:
        return True


def write_take(folder: str, number_of_frames: int, first_frame: int, params: dict, job_id: str, shot: dict | None,
               notes: tuple[str, ...] = ()) -> dict:
    """Write ``take.json`` for a committed take; returns the record."""
    record = {
        "take": int(TAKE_DIR.match(os.path.basename(folder)).group(1)),
        "job_id": job_id, "seed": params.get("seed", 0), "model": params.get("model", "default"),
        "steps": params.get("steps", 0), "sr_steps": params.get("sr_steps", 0),
        "method": params.get("method", "diffusion"), "finetune_steps": params.get("finetune_steps", 0),
        "skeleton": params.get("skeleton", "custom" if "bone_map" in params else ""),
        "first_frame": first_frame, "frames": number_of_frames,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "notes": list(notes),
        **({"shot": shot} if shot else {}),
    }
    atomic_write_bytes(os.path.join(folder, RECORD), (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    return record


def write_group_take(folder: str, requests, job_ids: list[str], notes: tuple[str, ...] = ()) -> dict:
    """Write ``take.json`` for a committed take of several characters (``requests``: one per character, each
    writing ``folder/<its folder>/``); returns the record."""
    first = requests[0]
    record = write_take(folder, first.num_frames, first.first_frame, first.params, job_ids[0], first.shot, notes)
    record["characters"] = [
        {"name": r.character, "folder": os.path.basename(r.out_dir), "seed": r.params.get("seed", 0), "job_id": job,
         "depths": [round(d, 4) for d in r.depths]}
        for r, job in zip(requests, job_ids, strict=True)]
    atomic_write_bytes(os.path.join(folder, RECORD), (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    return record


def discard(folder: str) -> None:
    """Remove what a run of several characters committed in ``folder`` before another character failed: only the
    frames the add-on wrote there and its record; the folder too when nothing else is left."""
    names = _written(folder) if os.path.isdir(folder) else set()
    for name in sorted(names):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not os.path.islink(path):
            os.unlink(path)
    record = os.path.join(folder, WRITTEN_FILE)
    if os.path.exists(record):
        os.unlink(record)
    remove_if_empty(folder)


def remove_if_empty(folder: str) -> bool:
    """Remove a take folder a failed or cancelled run left with nothing in it (nor in its characters' folders)."""
    try:
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)  # fails (and stops) when it holds anything
        os.rmdir(folder)
    except OSError:
        return False
    return True


def delete_take(take: Take, shot: dict | None) -> list[str]:
    """Remove the files the add-on wrote for ``take`` (several characters: in each one's folder too); returns the
    names of other files left (the folders go when none is left). Refuses another shot's take (``RunFailed``)."""
    folder = take.folder
    check_output_folder(folder, shot)
    subs = []
    for character in take.characters:
        sub = take.character_folder(character)
        if sub is not None and os.path.isdir(sub) and not os.path.islink(sub):
            check_output_folder(sub, shot)
            subs.append(sub)
    left = []
    for sub in subs:
        others = _remove_ours(sub)
        if others:
            left += [f"{os.path.basename(sub)}/{name}" for name in others]
        else:
            os.rmdir(sub)
    names = {os.path.basename(sub) for sub in subs}
    left += [name for name in _remove_ours(folder) if name not in names]
    if not left:
        os.rmdir(folder)
    return left


def _remove_ours(folder: str) -> list[str]:
    """Remove the files the add-on wrote in ``folder`` (its record last); returns the names of the others."""
    ours = _written(folder) | {RECORD, WRITTEN_FILE}
    left = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if (name in ours or _TEMP_FILE.match(name)) and os.path.isfile(path) and not os.path.islink(path):
            if name != WRITTEN_FILE:
                os.unlink(path)
        else:
            left.append(name)
    record = os.path.join(folder, WRITTEN_FILE)
    if os.path.exists(record):  # last: until the frames are gone it says they are ours
        os.unlink(record)
    return left
