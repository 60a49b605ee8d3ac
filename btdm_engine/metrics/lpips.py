"""LPIPS (Zhang et al. 2018) and tLPIPS (Chu et al. 2020) with user-provided weights.

The network is written here (no torchvision): the AlexNet or VGG16 ``features`` stack, tapped
after the ReLUs LPIPS uses, unit-normalised per channel, squared differences weighted by the
learnt 1x1 "lin" layers, averaged over space and summed over layers (LPIPS v0.1).

**Weight file layout** (one safetensors file, float32; the network kind is recognised from the
keys):

* ``features.{i}.weight`` / ``features.{i}.bias``: the convolutions of torchvision's
  ``alexnet().features`` (i in 0, 3, 6, 8, 10) or ``vgg16().features`` (i in 0, 2, 5, 7, 10, 12,
  14, 17, 19, 21, 24, 26, 28), with torchvision's own indices and shapes;
* ``lin{k}.weight`` (k = 0..4): LPIPS's 1x1 linear layers, shape (1, C_k, 1, 1), C = (64, 192,
  384, 256, 256) for alex and (64, 128, 256, 512, 512) for vgg.

To make it from the official releases (on a machine that has torchvision and the ``lpips``
repository's ``weights/v0.1/alex.pth``)::

    import torch, torchvision
    from safetensors.torch import save_file
    feats = torchvision.models.alexnet(weights="IMAGENET1K_V1").features.state_dict()
    lin = torch.load("lpips/weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    tensors = {f"features.{k}": v for k, v in feats.items()}
    tensors |= {f"lin{i}.weight": lin[f"lin{i}.model.1.weight"] for i in range(5)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, "lpips_alex.safetensors")

(for VGG: ``torchvision.models.vgg16(weights="IMAGENET1K_V1")`` and ``weights/v0.1/vgg.pth``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from btdm_engine.errors import UsageError
from btdm_engine.metrics.weights import MetricWeightsError, load_strict, read_safetensors

LPIPS_NETS = ("alex", "vgg")

# LPIPS ScalingLayer constants: the input normalisation its lin layers were calibrated with.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _alexnet_features() -> tuple[nn.Sequential, tuple[int, ...], tuple[int, ...]]:
    layers = [
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
    ]  # fmt: skip
    return nn.Sequential(*layers), (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)


def _vgg16_features() -> tuple[nn.Sequential, tuple[int, ...], tuple[int, ...]]:
    cfg = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
    layers: list[nn.Module] = []
    c_in = 3
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(item), kernel_size=3, padding=1), nn.ReLU()]
            c_in = int(item)
    # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
    return nn.Sequential(*layers), (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance. Build with :meth:`from_file`; a bare instance has random weights."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in LPIPS_NETS:
            raise UsageError(f"unknown LPIPS network {net!r}; allowed: {', '.join(LPIPS_NETS)}")
        self.net = net
        self.features, self.taps, channels = _alexnet_features() if net == "alex" else _vgg16_features()
        for k, c in enumerate(channels):
            self.add_module(f"lin{k}", nn.Conv2d(c, 1, kernel_size=1, bias=False))
        self.register_buffer("shift", rearrange(torch.tensor(_SHIFT), "c -> 1 c 1 1"), persistent=False)
        self.register_buffer("scale", rearrange(torch.tensor(_SCALE), "c -> 1 c 1 1"), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_file(cls, path: str | Path) -> LPIPS:
        """Load a weight file in the layout of the module docstring (network kind from its keys)."""
        tensors = read_safetensors(path)
        if "features.28.weight" in tensors:
            net = "vgg"
        elif "features.10.weight" in tensors:
            net = "alex"
        else:
            raise MetricWeightsError(
                f"{path}: not an LPIPS weight file: expected AlexNet (features.10.weight) or VGG16 "
                "(features.28.weight) convolutions plus lin0..lin4"
            )
        model = cls(net)
        load_strict(model, tensors, path)
        return model

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
            if i == self.taps[-1]:
                break
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per pair, shape (N,), for images (N,3,H,W) in [-1, 1]."""
        fa = self._taps((a - self.shift) / self.scale)
        fb = self._taps((b - self.shift) / self.scale)
        total = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
        for k, (xa, xb) in enumerate(zip(fa, fb)):
            # Unit-normalise along channels (LPIPS eq. 1), then the learnt per-channel weights.
            xa = xa / (xa.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            xb = xb / (xb.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{k}")((xa - xb) ** 2).mean(dim=(1, 2, 3))
        return total


def lpips_pairs(model: LPIPS, a: torch.Tensor, b: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """LPIPS between ``a`` and ``b`` (N,3,H,W) in [0, 1], in batches; returns (N,) float64."""
    out = []
    for i in range(0, a.shape[0], batch_size):
        out.append(model(a[i : i + batch_size] * 2 - 1, b[i : i + batch_size] * 2 - 1).double())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def tlpips_per_pair(model: LPIPS, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """tLPIPS terms ``|LPIPS(y_t, y_{t-1}) - LPIPS(g_t, g_{t-1})|`` (paper sec. 4.1), (T-1,) float64."""
    if pred.shape[0] < 2:
        return torch.zeros(0, dtype=torch.float64)
    d_pred = lpips_pairs(model, pred[1:], pred[:-1])
    d_gt = lpips_pairs(model, gt[1:], gt[:-1])
    return (d_pred - d_gt).abs()
