"""A faster CPU backward for 3x3 convolutions on small maps (bf16).

On a CPU with native bf16 (AMX), oneDNN's kernel for the *weight* gradient of a 3x3
convolution is slow when the maps are small: for fastnet's 256-channel layers on 6x6 and
3x3 maps it ran at about a third of the rate of a plain matrix product on the Xeon (one
thread), and those layers' weight gradients are a large part of a training step.
The same gradient is a sum over the 9 filter taps of ``grad_out^T @ shifted input``.
:func:`conv3x3_weight_grad` computes it as three matrix products (one per row of taps):
the input padded by a zero row above and below each image, its three column shifts laid
side by side (an im2col along the width only), so each row of taps is one contiguous
slice of rows. The forward pass and the input gradient stay oneDNN's.

Only the order of the sums changes (fp32 accumulation in both; the relative difference
of the weight gradient is about 1e-4 in bf16), so a run's last digits differ from one
computed with oneDNN's kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Maps of at most this many pixels (8x8) take the matrix-product weight gradient; on larger
# maps (fastnet's 12x12 and 15x15) oneDNN's kernel measured faster.
MAX_PIXELS = 64


def conv3x3_weight_grad(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """The weight gradient of a 3x3 convolution with padding 1, stride 1, no groups.

    Args:
        x: the convolution's input (N, C, H, W).
        grad_out: the gradient of its output (N, Co, H, W), same dtype as ``x``.

    Returns:
        (Co, C, 3, 3) in ``x``'s dtype (fp32 accumulation inside each product).
    """
    n, c, h, w = x.shape
    co = grad_out.shape[1]
    hp = h + 2
    xn = x.permute(0, 2, 3, 1)  # (N, H, W, C): a free view of a channels_last tensor
    # Only the borders are zeroed: in a profile of a `fast` step, zero-filling these whole buffers took about 3% of it.
    cols = x.new_empty(n, hp, w, 3, c)
    cols[:, 0].zero_()  # one zero row above and below each image
    cols[:, h + 1].zero_()
    cols[:, 1:h + 1, 0, 0].zero_()  # tap column 0 reads the pixel to the left: zero in the first column
    cols[:, 1:h + 1, 1:, 0] = xn[:, :, :w - 1]
    cols[:, 1:h + 1, :, 1] = xn
    cols[:, 1:h + 1, :w - 1, 2] = xn[:, :, 1:]
    cols[:, 1:h + 1, w - 1, 2].zero_()  # tap column 2 reads the pixel to the right: zero in the last column
    cols = cols.view(n * hp * w, 3 * c)
    g = grad_out.new_empty(n, hp, w, co)  # the gradient on the same padded grid, zero in the two rows below
    g[:, :h] = grad_out.permute(0, 2, 3, 1)
    g[:, h:].zero_()
    g_t = g.view(n * hp * w, co).t()
    rows = n * hp * w
    out = x.new_empty(co, 3, 3, c)
    for di in range(3):  # tap row di reads the input di rows below the output row
        off = di * w
        out[:, di] = (g_t[:, :rows - off] @ cols[off:]).view(co, 3, c)
    return out.permute(0, 3, 1, 2)


class _Conv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, padding=1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False,
                                                         [0, 0], 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_w = conv3x3_weight_grad(x, grad_out)
        return grad_x, grad_w


def _cpu_autocast_dtype() -> torch.dtype | None:
    try:
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    except (TypeError, AttributeError):  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def conv3x3_gemm_wgrad(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """A 3x3 'same' convolution without bias whose weight gradient is :func:`conv3x3_weight_grad`.

    Returns None where that does not apply (so the caller runs its usual convolution):
    not on the CPU, no gradient to compute, not in bf16 (autocast's or the tensors' own), a
    map larger than :data:`MAX_PIXELS`, or not a 3x3 filter bank.
    """
    if (x.device.type != "cpu" or not torch.is_grad_enabled() or not weight.requires_grad or x.dim() != 4
            or x.shape[-1] * x.shape[-2] > MAX_PIXELS or tuple(weight.shape[2:]) != (3, 3)):
        return None
    dtype = _cpu_autocast_dtype() or x.dtype
    if dtype != torch.bfloat16:
        return None
    return _Conv3x3.apply(x.to(dtype), weight.to(dtype))


def use_gemm_wgrad(model: torch.nn.Module, on: bool = True) -> int:
    """Switch the matrix-product weight gradient on (or off) in every module that offers it
    (those with a ``gemm_wgrad`` attribute: fastnet's convolutions). Returns how many."""
    found = [m for m in model.modules() if hasattr(m, "gemm_wgrad")]
    for m in found:
        m.gemm_wgrad = bool(on)
    return len(found)
