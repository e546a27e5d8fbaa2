"""Feature extractors usable with any learner: Conv-4, ResNet-12, an MLP, and heads on fixed features.

A backbone maps inputs ``[n, *input_shape]`` to features ``[n, out_dim]``; learners put their own
heads (prototypes, linear layers, ridge regression) on top. Backbones are plain ``nn.Module``\\ s
with named parameters, so functional learners can call them with ``torch.func.functional_call``.

The backbones trained from scratch are defined here. The pretrained encoders
(:mod:`metakit.pretrained`) and the domains' backbones (nas, text) are named by their plugins
(:mod:`metakit.registry`) and imported when first built, so this module imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from metakit.config import call_with_options
from metakit.errors import MetakitError
from metakit.registry import PluginTable

#: Backbone factories by name: the ones below, then those the plugins add (looked up on first use).
BACKBONES: PluginTable = PluginTable("backbone")


def register_backbone(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a backbone factory ``f(input_shape, **options) -> nn.Module``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES[name] = factory
        return factory

    return wrap


def build_backbone(name: str, input_shape: Sequence[int], **options: object) -> nn.Module:
    """Build backbone ``name`` for inputs of ``input_shape``; sets ``module.out_dim``."""
    module = call_with_options(BACKBONES.get_or_fail(name), options, f"backbone {name!r}", tuple(input_shape))
    with torch.no_grad():
        was_training = module.training
        module.eval()
        module.out_dim = int(module(torch.zeros(2, *input_shape)).shape[-1])
        module.train(was_training)
    return module


def conv_block(in_ch: int, out_ch: int, pool: bool = True) -> nn.Sequential:
    """conv3x3 -> BatchNorm -> ReLU -> 2x2 max-pool: the unit of Conv-4."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, 3, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@register_backbone("conv4")
def conv4(input_shape: tuple[int, ...], hidden: int = 64, layers: int = 4) -> nn.Module:
    """Conv-4 (Vinyals et al. 2016; Snell et al. 2017): ``layers`` x [conv3x3-hidden, BN, ReLU, maxpool]."""
    if len(input_shape) != 3:
        raise MetakitError(f"conv4 needs image inputs [C, H, W], got shape {list(input_shape)}.")
    if hidden < 1 or layers < 1:
        raise MetakitError(f"conv4 needs hidden >= 1 and layers >= 1, got hidden={hidden}, layers={layers}.")
    channels = [input_shape[0]] + [hidden] * layers
    # Pool only while the feature map is at least 2x2, so small images still work with 4 layers.
    size, blocks = min(input_shape[1:]), []
    for i in range(layers):
        pool = size >= 2
        blocks.append(conv_block(channels[i], channels[i + 1], pool=pool))
        size //= 2 if pool else 1
    return nn.Sequential(*blocks, nn.Flatten())


class _ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


@register_backbone("resnet12")
def resnet12(input_shape: tuple[int, ...], channels: Sequence[int] = (64, 160, 320, 640)) -> nn.Module:
    """ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019): four 3-conv residual blocks, global average pool."""
    if len(input_shape) != 3:
        raise MetakitError(f"resnet12 needs image inputs [C, H, W], got shape {list(input_shape)}.")
    chans = [input_shape[0], *channels]
    blocks = [_ResBlock(chans[i], chans[i + 1]) for i in range(len(channels))]
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())


@register_backbone("mlp")
def mlp(input_shape: tuple[int, ...], hidden: Sequence[int] = (40, 40)) -> nn.Module:
    """A ReLU MLP (the MAML sinusoid network is 1 -> 40 -> 40 with a linear head on top)."""
    dims = [int(torch.tensor(input_shape).prod())] + list(hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


@register_backbone("identity")
def identity(input_shape: tuple[int, ...]) -> nn.Module:
    """No trainable layer: the inputs, flattened, are the features (e.g. frozen sentence embeddings).

    With it, ProtoNet and the no-meta-training baselines work on the fixed embeddings themselves
    and MAML/ANIL adapt only their linear head.
    """
    return nn.Sequential(nn.Flatten())


class _Residual(nn.Module):
    """``x + body(x)``: a head that starts as the identity when ``body``'s last layer is zero."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@register_backbone("projection")
def projection(
    input_shape: tuple[int, ...], dims: Sequence[int] = (256,), dropout: float = 0.0, residual: bool = False
) -> nn.Module:
    """A trainable head on fixed feature vectors (frozen sentence embeddings): Linear layers with ReLU
    between them and none after the last, so the output is a linear embedding space.

    Args:
        input_shape: feature shape, flattened (e.g. ``(384,)`` for all-MiniLM-L6-v2).
        dims: widths of the layers; the last one is the output size. ``[256]`` is a linear projection.
        dropout: dropout before each Linear layer (0 adds none).
        residual: output ``x + MLP(x)`` with the last layer initialised at zero, so meta-training
            starts from the frozen embeddings themselves (needs ``dims[-1]`` equal to the input size).
    """
    in_dim = int(torch.tensor(input_shape).prod())
    dims = [int(d) for d in dims]
    if not dims or any(d < 1 for d in dims):
        raise MetakitError(f"projection needs dims: a non-empty list of positive widths, got {dims}.")
    if not 0 <= dropout < 1:
        raise MetakitError(f"projection needs 0 <= dropout < 1, got {dropout}.")
    if residual and dims[-1] != in_dim:
        raise MetakitError(
            f"projection with residual: true needs the last of dims equal to the input size {in_dim}, got {dims[-1]}."
        )
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip([in_dim, *dims[:-1]], dims)):
        if i:
            layers.append(nn.ReLU())
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(a, b))
    if not residual:
        return nn.Sequential(nn.Flatten(), *layers)
    nn.init.zeros_(layers[-1].weight)
    nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(nn.Flatten(), _Residual(nn.Sequential(*layers)))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
