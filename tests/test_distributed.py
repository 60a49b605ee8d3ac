"""DistributedDataParallel training: two CPU processes launched by torchrun (gloo over loopback)
keep identical weights, rank 0 alone writes the run folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from btdm_engine.checkpoints import load_checkpoint
from training.toy_data import write_toy_dataset

_WORKER = """
import json, os, sys
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from training.config import TrainConfig
from training.trainer import train

out = sys.argv[1]
config = TrainConfig.from_dict(json.loads(sys.argv[2]))
result = train(config, os.path.join(out, "run"), progress=False)
rank = dist.get_rank()
save_file({k: v.contiguous() for k, v in result.model.state_dict().items()}, os.path.join(out, f"rank{rank}.safetensors"))
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"backend": dist.get_backend(), "world_size": dist.get_world_size(), "step": result.step}, f)
dist.destroy_process_group()
"""


def test_two_gloo_processes_keep_identical_weights(tmp_path: Path) -> None:
    toy = write_toy_dataset(tmp_path / "toy", num_characters=3, num_frames=6, size=16)
    config = {
        "kind": "btunet", "data": str(toy), "steps": 3, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 3,
        "sample_every": 0, "log_every": 1, "seed": 5,
        "model_overrides": {"resolution": 16, "model_channels": 16, "channel_mult": [1, 2], "attention_resolutions": [8],
                            "norm_groups": 8, "pose_encoder_channels": 8, "appearance_encoder_channels": 8},
    }  # fmt: skip
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path), json.dumps(config)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(i == {"backend": "gloo", "world_size": 2, "step": 3} for i in info)
    w0, w1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert w0.keys() == w1.keys()
    for name in w0:
        assert torch.equal(w0[name], w1[name]), f"{name} differs between ranks"

    # Training happened (the weights moved away from the shared initialisation)...
    from btdm_engine.models import build_model
    from training.config import TrainConfig
    from training.trainer import model_config

    torch.manual_seed(5)
    init = build_model("btunet", model_config(TrainConfig.from_dict(config)).to_dict()).state_dict()
    assert any(not torch.equal(init[k], w0[k]) for k in w0)
    # ...and rank 0 alone wrote the run folder, with the EMA checkpoint of step 3.
    _, _, meta = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert meta["extra"]["training"]["step"] == 3
    assert len(list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))) == 1
    rows = (tmp_path / "run" / "log.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
