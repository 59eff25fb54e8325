"""``nn.Linear`` whose fp32 matrix products on the CPU run through oneDNN.

Why hand-written: torch sends fp32 ``Linear`` on the CPU to MKL, which runs its AVX2 code on
AMD processors even when they have AVX-512; oneDNN (bundled with every x86 torch build)
uses AVX-512 wherever the CPU has it. On a 2-core AMD EPYC (Zen 5),
``python scripts/benchmark.py --epochs 2 --rounds 2`` trained the default model about 20 %
faster with it than with ``model.onednn_linear=false`` (docs/speed.md).
torch exposes oneDNN's fp32 linear only as ``torch.ops.mkldnn._linear_pointwise`` (what
Inductor calls), with no autograd formula, so the backward pass is written here: three
matrix products, all fp32.
No library offers this for training. Everything else (GPU, other dtypes, autocast,
``torch.compile``, builds without oneDNN) takes ``nn.Linear``'s own path, and the parameters
and state dict are ``nn.Linear``'s, so checkpoints are the same either way.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _find_onednn_linear():
    try:
        op = torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


_ONEDNN_LINEAR = _find_onednn_linear()


def _matmul_t(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None):
    """a [M, K] @ b.T [K, N] (+ bias [N]) by oneDNN, fp32: [M, N]. Strided inputs are fine."""
    return _ONEDNN_LINEAR(a, b, bias, "none", [], "")


class _OneDNNLinearFunction(torch.autograd.Function):
    """y = x W^T + b with x [B, in], W [out, in], b [out] or None."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _matmul_t(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = _matmul_t(grad, weight.t()) if need_x else None  # [B, out] @ [out, in]
        grad_w = _matmul_t(grad.t(), x.t()) if need_w else None  # [out, B] @ [B, in]
        grad_b = grad.sum(0) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b


class OneDNNLinear(nn.Linear):
    """A drop-in ``nn.Linear``: same parameters and results (to fp32 rounding); 2-d fp32 CPU
    inputs are multiplied by oneDNN, everything else by ``nn.Linear.forward``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            _ONEDNN_LINEAR is not None
            and x.dim() == 2
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
        ):
            return _OneDNNLinearFunction.apply(x, self.weight, self.bias)
        return super().forward(x)
