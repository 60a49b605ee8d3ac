"""The `btdm` dispatcher: every subcommand is reachable and documents itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from commandline import run_btdm

from btdm_engine.cli import build_parser, main

SUBCOMMANDS = ("demo", "motion", "posemaps", "animate", "finetune", "train", "eval", "synth", "serve", "addon", "previs")


def test_help_lists_every_subcommand() -> None:
    out = subprocess.run([sys.executable, "-m", "btdm_engine.cli", "--help"], capture_output=True, text=True, check=True).stdout
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in out, name


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: btdm {name}" in capsys.readouterr().out


def test_user_errors_are_one_line_with_status_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope"
    status = main(["train", "btunet", "--data", str(missing), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("btdm train: error:") and str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing half-made to trip over on the corrected rerun

    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    from training.toy_data import write_toy_dataset

    toy = write_toy_dataset(tmp_path / "toy", num_characters=2, num_frames=4, size=16)
    assert main(["train", "btunet", "--data", str(toy), "--out", str(tmp_path / "used"), "--no-progress"]) == 2
    assert "not empty; pass --resume" in capsys.readouterr().err

    clip = tmp_path / "walk.npz"
    assert main(["motion", "make", "walk", "--seconds", "0.2", "--out", str(clip)]) == 0
    assert oct(clip.stat().st_mode & 0o777) != oct(0o600)  # outputs are ordinary shared files
    assert main(["posemaps", str(clip), "--out", str(clip), "--size", "32", "--no-progress"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_in_process_runs_answer_as_the_installed_command(tmp_path) -> None:
    """``commandline.run_btdm`` (the tests' in-process ``btdm``) gives what the installed script gives:
    the same exit status, stdout and stderr for a success, a project error and an argparse error."""
    btdm = str(Path(sys.executable).with_name("btdm"))
    cases = (["motion", "make", "walk", "--seconds", "0.1", "--out", str(tmp_path / "w.npz")],
             ["motion", "import", str(tmp_path / "missing.bvh"), "--out", str(tmp_path / "m.npz")],
             ["motion", "make", "walk", "--fps", "lots", "--out", str(tmp_path / "f.npz")])
    for args, status in zip(cases, (0, 2, 2)):
        real = subprocess.run([btdm, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
        here = run_btdm(*args, cwd=tmp_path)
        assert real.returncode == status, (args, real.stderr)
        assert (here.returncode, here.stdout, here.stderr) == (real.returncode, real.stdout, real.stderr), args
