"""Normalisation layers by name: the BN / GN / LN comparison of the course in one switch."""

from __future__ import annotations

import torch.nn as nn

from ..config import NORMS, one_of
from ..errors import ConfigError


def make_norm(kind: str, channels: int, groups: int = 8) -> nn.Module:
    """A 2-D normalisation layer for ``channels`` feature maps.

    Args:
        kind: ``batch`` (BatchNorm2d), ``group`` (GroupNorm with ``groups`` groups) or
            ``layer`` (GroupNorm with one group: normalises over C, H, W per sample).
        channels: number of channels.
        groups: groups for ``group``; must divide ``channels``.
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        if channels % groups:
            raise ConfigError(f"--groups {groups} does not divide a layer's {channels} channels; "
                              f"use a divisor such as 4, 8 or 16")
        return nn.GroupNorm(groups, channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    one_of("norm", kind, NORMS)
    raise AssertionError(kind)  # one_of raised: NORMS holds exactly the kinds above
