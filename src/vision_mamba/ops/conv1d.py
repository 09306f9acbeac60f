"""Depthwise causal conv1d on token-major tensors, and its anti-causal twin for the backward direction."""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor


def causal_conv1d_ref(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, reverse: bool = False) -> Tensor:
    """x: [B, L, E], weight: [E, 1, K], bias: [E] -> [B, L, E].

    forward:  y_t = bias + sum_k w[k] * x_{t - (K-1) + k}      (zero left padding: causal)
    reverse:  y_t = bias + sum_k w[k] * x_{t + (K-1) - k}      (the causal conv of the time-reversed sequence,
                                                                read back in the original order)
    """
    channels, kernel = weight.shape[0], weight.shape[-1]
    xt = x.transpose(1, 2)
    if reverse:
        y = F.conv1d(F.pad(xt, (0, kernel - 1)), weight.flip(-1), bias, groups=channels)
    else:
        y = F.conv1d(F.pad(xt, (kernel - 1, 0)), weight, bias, groups=channels)
    return y.transpose(1, 2)
