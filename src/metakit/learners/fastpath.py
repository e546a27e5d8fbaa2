"""The MAML family's fast path on CPU: a functional, thread-safe forward and a task-parallel meta-step.

Measured facts about the gradient-based learners on CPU drive this module (the timings are in
``docs/benchmarks.md``; ``benchmarks/maml_throughput.py`` reproduces them):

- The convolutions of layers 2-4 already run near the CPU's peak in oneDNN; the time goes to the
  memory-bound rest (BatchNorm, ReLU, max-pool and the single-channel first convolution on
  ``[n, 64, 28, 28]`` activations) and, for second order, to BatchNorm's double backward. Such
  small operations scale badly over threads: running *tasks* in parallel, one per worker thread
  with single-threaded operations, uses the cores better than spreading one task's operations.
- Stacking the tasks of a meta-batch into one network (grouped convolutions, which is also what
  ``torch.func.vmap`` does with per-task weights) was measured slower than the per-task loop.
- ``torch.func.functional_call`` swaps a module's parameters in place for the duration of the
  call, so it cannot run in several threads on one module. :func:`forward` runs a plain
  ``nn.Sequential`` backbone layer by layer with explicit parameter tensors instead, which is
  thread-safe, and on the way computes the same function faster on CPU: channels-last
  activations, ReLU after (not before) max-pooling, the single-channel convolution as a matrix
  product, and the image block reordered so that normalisation runs after pooling
  (:func:`conv_bn_relu_pool`).

Every operation is an ordinary differentiable ATen call, so inner gradients with
``create_graph=True`` and second-order meta-gradients stay exact, BatchNorm included (unlike
``torch.func.vmap``, whose batch-norm second derivatives are wrong). Backbones with layers outside
:data:`SUPPORTED` keep ``functional_call`` and the sequential per-task loop.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

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


def forward(layers: Sequence[Layer], params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The backbone's output for ``x`` with parameter tensors ``params`` (keyed by name in the backbone).

    The same function as the modules' own forward; on CPU it computes it faster: channels-last
    activations, ReLU moved after max-pooling (``relu(maxpool(x)) == maxpool(relu(x))`` exactly,
    gradients included), convolutions with few input channels as a matrix product, and the image
    block ``Conv2d -> BatchNorm2d -> ReLU -> MaxPool2d(2)`` as :func:`conv_bn_relu_pool`.
    """
    cpu = x.device.type == "cpu"
    h = x.contiguous(memory_format=torch.channels_last) if cpu and x.dim() == 4 else x
    i = 0
    while i < len(layers):
        m, p = layers[i].module, layers[i].prefix
        if isinstance(m, nn.Conv2d):
            weight, bias = params[p + "weight"], params.get(p + "bias")
            if cpu and _fusable(layers[i:i + 4], h):
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


# -- the image block, reordered -------------------------------------------------------------

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


def conv_bn_relu_pool(h: torch.Tensor, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None,
                      gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
    """``maxpool2x2(relu(batch_norm(conv(h))))`` with batch statistics: the image layer, reordered.

    The image layer of a Conv-4 moves the largest activations (``[n, 64, 28, 28]``) through
    several memory-bound operations; its BatchNorm double backward (second-order MAML) is the
    most expensive part of the inner loop. The same function, computed in another order:

    - the convolution is the matrix product of the image patches ``P`` (``[M, K]``, ``K = C_in*k*k``,
      small) with the weights;
    - the batch statistics come from the ``K x K`` patch covariance (``var_c = w_c' Cov(P) w_c``,
      ``mean_c = w_c' mean(P)``) instead of passes over the ``[M, C]`` output;
    - pooling runs *before* normalising: BatchNorm is a per-channel affine map with slope
      ``gamma_c / sigma_c``; the weights of channels with ``gamma_c < 0`` are negated first (the
      slope becomes ``|gamma_c| / sigma_c`` >= 0), so the 2x2 maximum commutes with it, and
      normalisation, affine map and ReLU (which commutes with the maximum too) run on a quarter
      of the elements;
    - the conv bias is cancelled by BatchNorm exactly: it enters as ``b - b``, so its gradient
      is exactly zero instead of rounding noise.

    Plain differentiable operations, so gradients of any order are exact, and equal to the
    unfused layers' up to rounding. ``max_pool2d`` keeps its tie rule (the first maximum of the
    window), so exact ties (a constant background) route gradients as before; only a tie that
    rounding inside BatchNorm would create can go to another cell of equal value.
    """
    cols, out_h, out_w = _patches(conv, h)
    rows, k = cols.shape
    channels = weight.shape[0]
    sign = torch.where(gamma.detach() >= 0, 1.0, -1.0).to(cols.dtype)
    w = weight.reshape(channels, k) * sign[:, None]  # every channel's BatchNorm slope >= 0
    y = (cols @ w.t()).view(h.shape[0], out_h, out_w, channels).permute(0, 3, 1, 2)  # channels last
    colmean = cols.mean(0)
    centred = cols - colmean
    var = ((w @ (centred.t() @ centred / rows)) * w).sum(1)
    shift = w @ colmean  # the batch mean of y
    if bias is not None:
        shift = shift + (bias * sign - bias * sign)
    scale = torch.rsqrt(var + eps) * gamma * sign
    pooled = F.max_pool2d(y, 2)
    return torch.relu(torch.addcmul((beta - shift * scale)[:, None, None], pooled, scale[:, None, None]))


# -- all tasks of a meta-batch in one network (GPU) -----------------------------------------

def forward_tasks(layers: Sequence[Layer], params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Every task's backbone output at once: ``x`` is ``[T, n, ...]``, each parameter ``[T, ...]``.

    Task ``t`` runs with ``params[name][t]``, exactly as :func:`forward` would run it alone: images
    travel as ``[n, T*C, H, W]`` (the tasks side by side as channel groups), so a convolution is one
    grouped convolution with ``groups = T * groups``, and BatchNorm over that layout normalises
    each task's channels with that task's own batch statistics. Features travel as ``[T, n, D]``,
    so a linear layer is one batched matrix product. Plain differentiable operations, so gradients
    of every order are exact (``torch.func.vmap`` would get BatchNorm's second derivatives wrong).

    On a GPU this replaces a meta-batch's hundreds of small kernel launches per layer with one; on
    CPU it was measured slower than :func:`map_tasks` over :func:`forward` (``docs/benchmarks.md``).
    """
    tasks, n = x.shape[:2]
    if x.dim() == 5:  # images: [T, n, C, H, W] -> [n, T*C, H, W]
        h = x.transpose(0, 1).reshape(n, tasks * x.shape[2], *x.shape[3:])
    elif x.dim() == 3:  # vectors: [T, n, D]
        h = x
    else:
        raise ValueError(f"forward_tasks needs [T, n, C, H, W] or [T, n, D] inputs, got {tuple(x.shape)}")
    for layer in layers:
        m, p = layer.module, layer.prefix
        if isinstance(m, nn.Conv2d):
            weight, bias = params[p + "weight"], params.get(p + "bias")
            h = F.conv2d(h, weight.flatten(0, 1), None if bias is None else bias.flatten(),
                         m.stride, m.padding, m.dilation, tasks * m.groups)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            weight, bias = params.get(p + "weight"), params.get(p + "bias")
            weight = None if weight is None else weight.flatten()
            bias = None if bias is None else bias.flatten()
            if h.dim() == 3:  # [T, n, D] -> [n, T*D]: each task's features are its own channels
                flat = h.transpose(0, 1).reshape(n, -1)
                h = F.batch_norm(flat, None, None, weight, bias, True, 0.0, m.eps).view(n, tasks, -1).transpose(0, 1)
            else:
                h = F.batch_norm(h, None, None, weight, bias, True, 0.0, m.eps)
        elif isinstance(m, nn.Linear):
            h = linear_tasks(h, params[p + "weight"], params.get(p + "bias"))
        elif isinstance(m, nn.Flatten):
            if h.dim() == 3:
                continue  # already [T, n, D]
            if (m.start_dim, m.end_dim) != (1, -1):
                raise ValueError("forward_tasks supports Flatten() with the default dims only")
            h = h.view(n, tasks, -1, *h.shape[2:]).transpose(0, 1).reshape(tasks, n, -1)
        elif isinstance(m, nn.ReLU):
            h = F.relu(h)  # never in place: the pre-activation may be saved for the backward
        else:  # activations and pooling act per channel, identically in either layout
            h = m(h)
    if h.dim() == 4:  # a backbone that ends on a feature map: [n, T*C, H, W] -> [T, n, C, H, W]
        h = h.view(n, tasks, -1, *h.shape[2:]).transpose(0, 1)
    return h


def linear_tasks(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Per-task ``F.linear``: ``h`` ``[T, n, D]``, ``weight`` ``[T, out, D]``, ``bias`` ``[T, out]``."""
    if bias is None:
        return torch.bmm(h, weight.transpose(1, 2))
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


# -- tasks in parallel -------------------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")
_pool: tuple[ThreadPoolExecutor, int, int] | None = None  # (executor, workers, pid)
_pool_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads (recreated after a fork or a new thread count)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[1:] != (workers, os.getpid()):
            if _pool is not None and _pool[2] == os.getpid():
                _pool[0].shutdown(wait=False)
            _pool = (ThreadPoolExecutor(workers, thread_name_prefix="metakit-task"), workers, os.getpid())
        return _pool[0]


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

    Workers run single-threaded operations, one task each at a time, and the results come back in
    the order of ``items``: each result is computed exactly as with ``torch.set_num_threads(1)``,
    whatever the thread count, and whatever is summed from them is summed in a fixed order.
    """
    threads = torch.get_num_threads()
    if not parallel or threads < 2 or len(items) < 2:
        return [fn(item) for item in items]
    with single_threaded_ops():
        return list(_executor(threads).map(fn, items))
