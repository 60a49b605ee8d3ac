"""Library code logs (``logging``); the ``btdm`` command shows those messages as plain lines on stderr."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from btdm_engine.cli import cli_logging


def test_cli_logging_shows_the_project_messages_and_other_libraries_warnings(capsys: pytest.CaptureFixture) -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    with cli_logging():
        logging.getLogger("training.trainer").info("resuming with 2 processes")
        logging.getLogger("btdm_engine.motion.retarget").debug("a detail")
        logging.getLogger("some_library").info("chatter")
        logging.getLogger("some_library").warning("a warning")
    logging.getLogger("training.trainer").info("after the command")
    assert capsys.readouterr().err == "resuming with 2 processes\na warning\n"
    assert (root.level, root.handlers) == before  # an in-process command leaves logging as it found it


def test_the_trainer_tells_the_cli_user_through_logging(tmp_path: Path, capsys: pytest.CaptureFixture, one_thread) -> None:
    from training.config import TrainConfig
    from training.toy_data import write_toy_dataset
    from training.trainer import train

    toy = write_toy_dataset(tmp_path / "toy", num_characters=2, num_frames=4, size=16)
    micro = {"resolution": 16, "model_channels": 8, "channel_mult": [1, 2], "attention_resolutions": [8],
             "norm_groups": 8, "pose_encoder_channels": 8, "appearance_encoder_channels": 8}  # fmt: skip
    config = TrainConfig(kind="btunet", data=str(toy), model_overrides=micro, steps=1, batch_size=2, checkpoint_every=1,
                         sample_every=0)  # fmt: skip
    train(config, tmp_path / "run", progress=False)
    capsys.readouterr()
    with cli_logging():  # as in `btdm train ... --resume`
        assert train(config, tmp_path / "run", resume=True, progress=False).step == 1
    captured = capsys.readouterr()
    assert captured.err == f"{tmp_path / 'run'}: already at step 1 >= steps 1; nothing to do\n" and captured.out == ""
