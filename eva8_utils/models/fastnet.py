"""fastnet: a small network built for time-to-accuracy on CIFAR-10.

In the spirit of the public CIFAR-10 speed records (hlb-cifar10, airbench): a frozen
2x2 patch-whitening convolution initialised from the training data, three conv groups
(conv -> max-pool -> norm -> GELU -> conv -> norm -> GELU) of widths 64/256/256,
global max-pooling and a bias-free linear head scaled by 1/9. BatchNorm keeps a
frozen unit scale (only its bias learns) and a high momentum; convolutions start
from a partial identity (Dirac) init. About 1.97M parameters at width 1.

On a 32x32 input the maps are 31 (whitening), 15, 7 and 3 pixels wide; the default
CAM layer is ``block3.conv1`` (7x7): on the shapes dataset its GradCAM points at the
object far more often than a fixed point or the CAM of a wrong class does (the 15x15
``block2.conv1`` is finer but less class-specific: its wrong-class CAM lands on the
object too; see benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .norm import make_norm


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose scale stays 1 (not trained); ``momentum`` is the running-stat keep rate."""

    def __init__(self, channels: int, momentum: float = 0.6, eps: float = 1e-12):
        super().__init__(channels, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class DiracConv(nn.Conv2d):
    """3x3 'same' convolution without bias, the first ``in_channels`` filters start as identity."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, kernel_size=3, padding=1, bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        nn.init.dirac_(w[: min(w.size(0), w.size(1))])


def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    return FrozenScaleBatchNorm(channels) if kind == "batch" else make_norm(kind, channels, groups)


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, norm: str, groups: int):
        super().__init__()
        self.conv1 = DiracConv(cin, cout)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _norm(norm, cout, groups)
        self.conv2 = DiracConv(cout, cout)
        self.norm2 = _norm(norm, cout, groups)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    """Input (N, 3, H, W) normalised images; output (N, num_classes) logits.

    ``whiten_bias_epochs`` > 0 trains the whitening bias for that many epochs and then
    freezes it (airbench94 uses 3); 0 trains it all run long. It learns at the base LR
    (:func:`fastnet_param_hints`), not at the raised LR of the other biases (under Muon it joins
    them, as airbench94_muon has it). ``whiten_bias_lr="linear"`` lets its LR fall from
    its start linearly to 0 over those epochs (airbench94_muon) instead of following the
    run's schedule (``"schedule"``, airbench94; see :meth:`lr_to_zero`).
    """

    cam_layer = "block3.conv1"

    def __init__(self, num_classes: int = 10, norm: str = "batch", groups: int = 8, dropout: float = 0.0,
                 width: float = 1.0, whiten_bias_epochs: int = 0, whiten_bias_lr: str = "schedule"):
        super().__init__()
        if whiten_bias_lr not in ("schedule", "linear") or (whiten_bias_lr == "linear" and whiten_bias_epochs < 1):
            raise ValueError(f"whiten_bias_lr={whiten_bias_lr!r} with whiten_bias_epochs={whiten_bias_epochs}: give "
                             f"'schedule', or 'linear' with whiten_bias_epochs >= 1")
        self.whiten_bias_epochs = int(whiten_bias_epochs)
        self.whiten_bias_lr = whiten_bias_lr
        w1, w2, w3 = (max(8, int(round(c * width / 8)) * 8) for c in (64, 256, 256))
        self.whiten = nn.Conv2d(3, 24, kernel_size=2, padding=0, bias=True)  # 2 x (3*2*2) filters
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        self.block1 = ConvGroup(24, w1, norm, groups)
        self.block2 = ConvGroup(w1, w2, norm, groups)
        self.block3 = ConvGroup(w2, w3, norm, groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(w3, num_classes, bias=False)
        self.scale = 1 / 9

    @torch.no_grad()
    def data_init(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from the 2x2 patch covariance of normalised training images.

        Args:
            images: (N, 3, H, W) normalised, un-augmented training images (a few thousand).
        """
        x = images.float().to(self.whiten.weight.device)
        c, (kh, kw) = x.shape[1], self.whiten.weight.shape[2:]
        patches = x.unfold(2, kh, 1).unfold(3, kw, 1).transpose(1, 3).reshape(-1, c * kh * kw)
        cov = (patches.T @ patches / patches.shape[0]).double()
        # A tiny ridge keeps eigh stable on degenerate data (e.g. flat-coloured images).
        cov += 1e-8 * torch.eye(cov.shape[0], dtype=cov.dtype) * cov.diagonal().mean().clamp_min(1e-12)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues, eigenvectors = eigenvalues.flip(0).float(), eigenvectors.T.flip(0).float()
        filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).view(-1, c, kh, kw)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))
        self.whiten.bias.zero_()

    def frozen_parameters(self, epoch: int) -> list[nn.Parameter]:
        """Parameters that do not learn in (1-based) ``epoch``: the whitening bias after its epochs."""
        if self.whiten_bias_epochs and epoch > self.whiten_bias_epochs:
            return [self.whiten.bias]
        return []

    def lr_to_zero(self) -> dict[str, int]:
        """Parameters whose LR falls linearly to 0 over their first N epochs: {name: N}."""
        return {"whiten.bias": self.whiten_bias_epochs} if self.whiten_bias_lr == "linear" else {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        x = self.block3(self.block2(self.block1(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.head(self.dropout(x)) * self.scale


def fastnet(num_classes: int = 10, norm: str = "batch", groups: int = 8, dropout: float = 0.0,
            width: float = 1.0, whiten_bias_epochs: int = 0, whiten_bias_lr: str = "schedule") -> FastNet:
    return FastNet(num_classes, norm, groups, dropout, width, whiten_bias_epochs, whiten_bias_lr)


def fastnet_callbacks(model: FastNet) -> list:
    """What fastnet's training needs from the loop: its whitening bias frozen after its epochs."""
    from ..engine.callbacks import FreezeParameters

    return [FreezeParameters(model.frozen_parameters)] if model.whiten_bias_epochs else []


def fastnet_param_hints(model: FastNet):
    """fastnet's LR rules for the optimizer: the whitening bias keeps the base LR, and with
    ``whiten_bias_lr="linear"`` its LR falls to 0 over its epochs."""
    from ..engine.optim import GroupHints

    return GroupHints(base_lr=("whiten.bias",), lr_to_zero=model.lr_to_zero())
