"""The `btdm` dispatcher: every subcommand is reachable and documents itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

from btdm_engine.cli import build_parser, main

SUBCOMMANDS = ("demo", "motion", "posemaps", "animate", "finetune", "train", "eval", "synth")


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
