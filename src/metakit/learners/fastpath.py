"""The MAML family's fast path on CPU: a functional, thread-safe forward and a task-parallel meta-step.

Two measured facts about the gradient-based learners on CPU drive this module (numbers are in
``benchmarks/maml_throughput.py``'s docstring):

- The per-task work is small (a 5-image support set, a 75-image query set) and much of it is
  memory-bound (BatchNorm, ReLU, max-pool and the first convolution on ``[n, 64, 28, 28]``
  activations), so the operations scale badly over threads. Running *tasks* in parallel, one per
  worker thread with single-threaded operations, uses the cores better than running one task's
  operations on all of them.
- ``torch.func.functional_call`` swaps a module's parameters in place for the duration of the
  call, so it cannot run in several threads on one module. :func:`forward` runs a plain
  ``nn.Sequential`` backbone layer by layer with explicit parameter tensors instead, which is
  thread-safe, and on the way picks faster but equivalent formulations on CPU: channels-last
  activations, ReLU after (not before) max-pooling, and the single-input-channel convolution as a
  matrix product.

Every operation is an ordinary differentiable ATen call, so inner gradients with
``create_graph=True`` and second-order meta-gradients stay exact, BatchNorm included (unlike
``torch.func.vmap``, whose batch-norm second derivatives are wrong). Backbones with layers outside
:data:`SUPPORTED` keep ``functional_call`` and the sequential per-task loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

#: Layers :func:`forward` knows how to run (their parameters, if any, are passed explicitly).
SUPPORTED = (
    nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, nn.Identity,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Sigmoid, nn.Hardtanh, nn.Softplus,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)


@dataclass(frozen=True)
class Layer:
    """One leaf layer of the backbone and the prefix of its parameter names (``"0.0."``)."""

    module: nn.Module
    prefix: str


def _leaves(module: nn.Module, prefix: str) -> list[Layer] | None:
    if module._forward_hooks or module._forward_pre_hooks:
        return None
    if isinstance(module, nn.Sequential):
        out: list[Layer] = []
        for name, child in module.named_children():
            sub = _leaves(child, f"{prefix}{name}.")
            if sub is None:
                return None
            out += sub
        return out
    return [Layer(module, prefix)] if type(module) in SUPPORTED else None


def plan(backbone: nn.Module) -> list[Layer] | None:
    """The backbone's layers in order if :func:`forward` can run it, else ``None``.

    Runnable: nested ``nn.Sequential`` of the :data:`SUPPORTED` layers, with every BatchNorm
    normalising by batch statistics (no running statistics, as
    :func:`~metakit.learners.gradient.use_batch_statistics` leaves them) and convolutions
    zero-padded.
    """
    layers = _leaves(backbone, "")
    if not layers:
        return None
    for layer in layers:
        m = layer.module
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            return None
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            return None
    return layers


def forward(layers: Sequence[Layer], params: dict[str, torch.Tensor], x: torch.Tensor, once: bool = False) -> torch.Tensor:
    """The backbone's output for ``x`` with parameter tensors ``params`` (keyed by name in the backbone).

    The same function as the modules' own forward; on CPU it computes it faster (channels-last
    activations, ReLU moved after max-pooling — ``relu(maxpool(x)) == maxpool(relu(x))`` exactly,
    gradients included — and single-channel convolutions as a matrix product).

    ``once=True`` promises that the result is differentiated at most once (no ``create_graph``
    through it): the image layer may then run as the fused :class:`ConvBNReLUPool`.
    """
    cpu = x.device.type == "cpu"
    h = x.contiguous(memory_format=torch.channels_last) if cpu and x.dim() == 4 else x
    i = 0
    while i < len(layers):
        m, p = layers[i].module, layers[i].prefix
        if isinstance(m, nn.Conv2d):
            weight, bias = params[p + "weight"], params.get(p + "bias")
            if cpu and once and not h.requires_grad and _fusable(layers[i:i + 4], h):
                norm = layers[i + 1]
                h = conv_bn_relu_pool(h, m, weight, bias, params[norm.prefix + "weight"], params[norm.prefix + "bias"], norm.module.eps)
                i += 4
                continue
            if cpu and _gemm_conv_fits(m, h):
                h = _gemm_conv(m, h, weight, bias)
            else:
                if cpu and h.dim() == 4:
                    weight = weight.contiguous(memory_format=torch.channels_last)
                h = F.conv2d(h, weight, bias, m.stride, m.padding, m.dilation, m.groups)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            h = F.batch_norm(h, None, None, params.get(p + "weight"), params.get(p + "bias"), True, 0.0, m.eps)
        elif isinstance(m, nn.Linear):
            h = F.linear(h, params[p + "weight"], params.get(p + "bias"))
        elif isinstance(m, nn.Flatten):
            h = h.flatten(m.start_dim, m.end_dim)
        elif isinstance(m, nn.ReLU) and i + 1 < len(layers) and isinstance(layers[i + 1].module, nn.MaxPool2d):
            h = F.relu(layers[i + 1].module(h))  # pool first: a quarter of the elements through ReLU
            i += 1
        else:
            h = m(h)
        i += 1
    return h


def _gemm_conv_fits(m: nn.Conv2d, h: torch.Tensor) -> bool:
    """Whether to run ``m`` as unfold + matrix product: few input channels (the image layer)."""
    return (
        h.dim() == 4 and m.groups == 1 and isinstance(m.padding, tuple)
        and m.in_channels * m.kernel_size[0] * m.kernel_size[1] <= 9
    )


def _gemm_conv(m: nn.Conv2d, h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.conv2d`` for few input channels as ``unfold(x) @ W``, with a channels-last result.

    oneDNN's convolution with one input channel runs at a few GFLOP/s; the matrix product of the
    ``[n*H*W, C*k*k]`` patches with the ``[C*k*k, out]`` weights is several times faster.
    """
    cols, out_h, out_w = _patches(m, h)
    w = weight.reshape(weight.shape[0], -1).t()
    out = cols @ w if bias is None else torch.addmm(bias, cols, w)  # [n*out_h*out_w, out]
    return out.reshape(h.shape[0], out_h, out_w, -1).permute(0, 3, 1, 2)  # NCHW shape, channels-last memory


# -- the image layer, fused (first-order only) ---------------------------------------------

def _fusable(block: Sequence[Layer], h: torch.Tensor) -> bool:
    """``Conv2d (few input channels) -> BatchNorm2d (affine) -> ReLU -> MaxPool2d(2)`` on CPU."""
    if len(block) < 4:
        return False
    conv, norm, act, pool = (layer.module for layer in block)
    return (
        isinstance(conv, nn.Conv2d) and _gemm_conv_fits(conv, h)
        and type(norm) is nn.BatchNorm2d and norm.affine and norm.num_features == conv.out_channels
        and type(act) is nn.ReLU
        and type(pool) is nn.MaxPool2d and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2))
        and pool.padding in (0, (0, 0)) and pool.dilation in (1, (1, 1)) and not pool.ceil_mode
        and not pool.return_indices
    )


def _patches(m: nn.Conv2d, h: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """The ``[n*out_h*out_w, C*kh*kw]`` convolution patches of ``h`` and the output size."""
    n, _, height, width = h.shape
    kh, kw = m.kernel_size
    out_h = (height + 2 * m.padding[0] - m.dilation[0] * (kh - 1) - 1) // m.stride[0] + 1
    out_w = (width + 2 * m.padding[1] - m.dilation[1] * (kw - 1) - 1) // m.stride[1] + 1
    cols = F.unfold(h, (kh, kw), m.dilation, m.padding, m.stride)  # [n, C*kh*kw, out_h*out_w]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1]), out_h, out_w


class ConvBNReLUPool(torch.autograd.Function):
    """``maxpool2x2(relu(batchnorm(conv(x))))`` with batch statistics, for an ``x`` that needs no gradient.

    The image layer of a Conv-4 moves the largest activations (``[n, 64, 28, 28]``) through five
    memory-bound operations forward and five backward. Here the convolution is a matrix product
    of the image patches ``P`` (``[M, K]``, ``K = C_in*3*3``, small) with the weights, and:

    - Pooling runs *before* normalising. BatchNorm is a per-channel affine map with slope
      ``gamma_c / sigma_c``; the weights of channels with ``gamma_c < 0`` are negated first (the
      slope becomes ``|gamma_c| / sigma_c`` >= 0), so the 2x2 maximum commutes with it, and the
      normalisation, affine map and ReLU run on a quarter of the elements. The conv bias is
      left out: BatchNorm cancels any per-channel shift, so its gradient is exactly zero.
    - The batch statistics come from the ``K x K`` patch covariance (``var_c = w_c' Cov(P) w_c``)
      instead of a pass over the ``[M, C]`` output.
    - The backward pass touches no full-size tensor: the weight gradient is
      ``dL/dW' = sigma^-1 (S'P_cell - mean(dxhat) sum(P) - mean(dxhat*xhat) M sigma^-1 W' Cov(P))``
      where ``S'P_cell`` pairs each pooled gradient with the patch of its window's arg-max cell.

    The values and gradients are those of the unfused layers up to rounding; the arg-max of a
    window (first maximum in row-major order, as ``max_pool2d``) is taken before normalising, so
    only a tie created by rounding inside BatchNorm can route a gradient to another cell of equal
    value. Differentiable once (``once_differentiable``): a double backward raises.
    """

    @staticmethod
    def forward(ctx, cols: torch.Tensor, shape: tuple[int, int, int], weight: torch.Tensor,  # type: ignore[override]
                bias: torch.Tensor | None, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
        n, height, width = shape
        rows, k = cols.shape
        channels = weight.shape[0]
        sign = torch.where(gamma >= 0, 1.0, -1.0).to(cols.dtype)
        w = weight.reshape(channels, k) * sign[:, None]  # slope >= 0 for every channel
        y = (cols @ w.t()).reshape(n, height, width, channels)  # channels last, bias left out
        colmean = cols.mean(0)
        centred = cols - colmean
        wcov = w @ (centred.t() @ centred / rows)  # [C, K]
        invstd = torch.rsqrt((wcov * w).sum(1) + eps)
        ph, pw = height // 2, width // 2
        cell = [y[:, dh:2 * ph:2, dw:2 * pw:2] for dh in (0, 1) for dw in (0, 1)]  # [n, ph, pw, C] each
        top, bottom = torch.maximum(cell[0], cell[1]), torch.maximum(cell[2], cell[3])
        lower = bottom > top  # arg-max in the window's second row (the first maximum wins ties)
        right = torch.where(lower, cell[3] > cell[2], cell[1] > cell[0])  # ... and in its second column
        pooled = torch.maximum(top, bottom)
        xhat = (pooled - w @ colmean) * invstd
        slope = gamma * sign  # |gamma|
        out = torch.relu(torch.addcmul(beta, xhat, slope))
        ctx.save_for_backward(cols, sign, slope, invstd, wcov, xhat, out, lower.to(cols.dtype), right.to(cols.dtype))
        ctx.shape, ctx.weight_shape, ctx.has_bias = shape, weight.shape, bias is not None
        return out.permute(0, 3, 1, 2)  # [n, C, h/2, w/2] in channels-last memory

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        cols, sign, slope, invstd, wcov, xhat, out, lower, right = ctx.saved_tensors
        n, height, width = ctx.shape
        rows, k = cols.shape
        channels = sign.shape[0]
        ph, pw = xhat.shape[1:3]
        grad = torch.ops.aten.threshold_backward(grad_out.permute(0, 2, 3, 1).contiguous(), out, 0)  # ReLU
        grad, xhat = grad.reshape(-1, channels), xhat.reshape(-1, channels)
        grad_beta = grad.sum(0)
        grad_slope = (grad * xhat).sum(0)
        dxhat = grad * slope  # w.r.t. the normalised pooled values; the other 3 cells get zero
        # S'P_cell = sum over cells c of (dxhat where the arg-max is c)' P_c, as four products.
        patches = cols.reshape(n, height, width, k)
        p00, p01, p10, p11 = (patches[:, dh:2 * ph:2, dw:2 * pw:2].reshape(-1, k) for dh in (0, 1) for dw in (0, 1))
        low, rgt = dxhat * lower.reshape(-1, channels), dxhat * right.reshape(-1, channels)
        routed = dxhat.t() @ p00
        routed.addmm_(low.t(), p10 - p00).addmm_(rgt.t(), p01 - p00)
        routed.addmm_((low * right.reshape(-1, channels)).t(), p11 - p10 - p01 + p00)
        mean_dxhat = dxhat.sum(0) / rows  # over all M positions
        mean_dxhat_xhat = grad_slope * slope / rows
        grad_w = invstd[:, None] * (
            routed - mean_dxhat[:, None] * cols.sum(0)[None, :] - (mean_dxhat_xhat * invstd * rows)[:, None] * wcov
        )
        grad_weight = (grad_w * sign[:, None]).reshape(ctx.weight_shape)
        grad_bias = torch.zeros_like(sign) if ctx.has_bias else None
        return None, None, grad_weight, grad_bias, grad_slope * sign, grad_beta, None


def conv_bn_relu_pool(h: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None,
                      gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    """The fused image layer (see :class:`ConvBNReLUPool`)."""
    cols, out_h, out_w = _patches(conv, h)
    return ConvBNReLUPool.apply(cols, (h.shape[0], out_h, out_w), weight, bias, gamma, beta, eps)


# -- tasks in parallel -------------------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers != workers:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="metakit-task")
        return _pool


@contextmanager
def single_threaded_ops() -> Iterator[int]:
    """Run ATen operations single-threaded for a while; yields the thread count to restore."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def map_tasks(fn: Callable[[T], R], items: Sequence[T], parallel: bool) -> list[R]:
    """``[fn(item) for item in items]``, over ``torch.get_num_threads()`` worker threads when ``parallel``.

    Workers run single-threaded operations, one task each at a time; results come back in the
    order of ``items`` so that whatever is summed from them is summed in a fixed order.
    """
    workers = min(torch.get_num_threads(), len(items))
    if not parallel or workers < 2:
        return [fn(item) for item in items]
    with single_threaded_ops():
        return list(_executor(workers).map(fn, items))
