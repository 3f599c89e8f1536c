"""Small building blocks: RMSNorm, the residual patch block and the gated feed-forward."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .kernel_forward import RMS_NORM_EPS


class Linear(nn.Linear):
    """``nn.Linear`` without its random initialisation where it is built on the meta device (``load_model``
    builds there, then assigns the checkpoint's tensors): torch 2.9 runs a meta tensor's ``uniform_`` through
    its decompositions, which import sympy (about 800 modules, 73 MB kept for the process's life; torch 2.13
    does not). Same parameters and forward; the fused paths treat it as a plain ``nn.Linear``."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


# The linear layers the fused paths may read directly (exactly these types: a subclass has its own forward)
PLAIN_LINEAR = (nn.Linear, Linear)


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * weight``, computed in float32."""

    def __init__(self, dim: int, eps: float = RMS_NORM_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class ResidualBlock(nn.Module):
    """``W_o relu(W_h u + b_h) + b_o + (W_r u + b_r)``: the patch embedding and the quantile head."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.hidden = Linear(in_dim, hidden_dim)
        self.output = Linear(hidden_dim, out_dim)
        self.residual = Linear(in_dim, out_dim)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.output(F.relu(self.hidden(u))) + self.residual(u)


class GatedFeedForward(nn.Module):
    """SwiGLU feed-forward without biases: ``W_down(silu(W_gate x) * (W_up x))``."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.gate = Linear(dim, hidden_dim, bias=False)
        self.up = Linear(dim, hidden_dim, bias=False)
        self.down = Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))
