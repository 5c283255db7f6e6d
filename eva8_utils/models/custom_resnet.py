"""The "ResNet9" of the course (after D. Page's DAWNBench network).

prep 64 -> layer1: conv 128 + max-pool + residual block -> layer2: conv 256 + max-pool
-> layer3: conv 512 + max-pool + residual block -> global max-pool -> linear.
On a 32x32 input the maps are 32, 16, 8 and 4 pixels wide.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .norm import make_norm


def conv_norm_relu(cin: int, cout: int, norm: str, groups: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [make_norm(norm, cout, groups), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ResLayer(nn.Module):
    """X = conv-pool-norm-relu(x); out = X + (conv-norm-relu x2)(X)."""

    def __init__(self, cin: int, cout: int, norm: str, groups: int, residual: bool):
        super().__init__()
        self.conv = conv_norm_relu(cin, cout, norm, groups, pool=True)
        self.res = nn.Sequential(conv_norm_relu(cout, cout, norm, groups),
                                 conv_norm_relu(cout, cout, norm, groups)) if residual else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x + self.res(x) if self.res is not None else x


class CustomResNet(nn.Module):
    """Input (N, 3, H, W); output (N, num_classes) logits."""

    cam_layer = "layer2"  # 8x8 on 32x32 inputs

    def __init__(self, num_classes: int = 10, norm: str = "batch", groups: int = 8, dropout: float = 0.0):
        super().__init__()
        self.prep = conv_norm_relu(3, 64, norm, groups)
        self.layer1 = ResLayer(64, 128, norm, groups, residual=True)
        self.layer2 = ResLayer(128, 256, norm, groups, residual=False)
        self.layer3 = ResLayer(256, 512, norm, groups, residual=True)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(512, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.prep(x))))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


def custom_resnet(num_classes: int = 10, norm: str = "batch", groups: int = 8, dropout: float = 0.0) -> CustomResNet:
    return CustomResNet(num_classes, norm, groups, dropout)
