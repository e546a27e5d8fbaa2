"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, "Learning to Compare", CVPR 2018).

Instead of a fixed distance, a *relation module* learns to compare: the feature maps of a query
and of a class (the sum of the class's support feature maps) are concatenated along channels
and mapped to a relation score in [0, 1] by 2 x [conv3x3-64, BN, ReLU, 2x2 max-pool] + FC-8 (ReLU)
+ FC-1 (sigmoid). Training regresses the scores onto the one-hot match indicator with a mean
squared error, as in the paper (which sums over pairs; we average, so the learning rate does not
depend on ways and queries).

**Feature maps from any backbone.** The relation module compares maps, not vectors, so the
embedding module is the backbone without its final flatten: when the backbone is an
``nn.Sequential`` ending in ``nn.Flatten`` (Conv-4, ResNet-12), all modules but that last one
are run; any other backbone's output is used as is, a ``[n, d]`` vector being read as a
``[d, 1, 1]`` map.

**Small feature maps.** metakit's Conv-4 pools in all four blocks, so 28x28 Omniglot gives
64x1x1 maps (84x84 gives 64x5x5), too small for the relation module's two poolings. Two things
handle this, and both are documented options:

- the relation module pads its convolutions (size-preserving) and *skips* a max-pool when the map
  is already smaller than 2x2, the rule Conv-4 itself uses; so any map size works and 1x1 maps
  reduce the relation module's convolutions to learned per-pair channel mixing;
- ``drop_pools=k`` removes the backbone's last ``k`` max-pool layers (replaced by identities,
  parameters unchanged), which is the paper's own Omniglot architecture for ``k=2`` (Conv-4
  pooling only in the first two blocks): 28x28 inputs then give 64x7x7 maps. The Omniglot
  config uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metakit.backbones import conv_block
from metakit.episodes import MetaBatch, as_batch
from metakit.errors import MetakitError
from metakit.learners.base import Learner, Predictor, TaskInfo, embed_tasks, prototypes
from metakit.learners.registry import register_learner


def drop_last_pools(module: nn.Module, count: int) -> None:
    """Replace the last ``count`` ``nn.MaxPool2d`` layers of ``module`` by identities, in place."""
    pools = [name for name, m in module.named_modules() if isinstance(m, nn.MaxPool2d)]
    if count > len(pools):
        raise MetakitError(f"relation drop_pools={count} but the backbone has only {len(pools)} max-pool layers.")
    for name in pools[len(pools) - count :]:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, nn.Identity())


@register_learner("relation")
class RelationNet(Learner):
    """Relation Networks: a learned comparison of query and class feature maps.

    Args:
        backbone: embedding module (its trailing ``nn.Flatten``, if any, is skipped).
        task: task description.
        hidden: channels of the relation module's convolutions (64 in the paper).
        fc_hidden: width of the relation module's hidden fully connected layer (8 in the paper).
        aggregate: ``"sum"`` (the paper) or ``"mean"`` of a class's support feature maps.
        drop_pools: remove the backbone's last ``drop_pools`` max-pool layers so feature maps stay
            large (2 = the paper's Omniglot embedding).
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: TaskInfo,
        hidden: int = 64,
        fc_hidden: int = 8,
        aggregate: str = "sum",
        drop_pools: int = 0,
    ) -> None:
        super().__init__(backbone, task)
        if aggregate not in ("sum", "mean"):
            raise MetakitError(f"relation aggregate must be 'sum' or 'mean', got {aggregate!r}.")
        if hidden < 1 or fc_hidden < 1 or drop_pools < 0:
            raise MetakitError(
                f"relation needs hidden >= 1, fc_hidden >= 1, drop_pools >= 0; got {hidden}, {fc_hidden}, {drop_pools}."
            )
        self.aggregate = aggregate
        self._strip_flatten = isinstance(backbone, nn.Sequential) and isinstance(backbone[-1], nn.Flatten)
        if drop_pools:
            drop_last_pools(backbone, drop_pools)
        channels, height, width = self._map_shape(task.input_shape)
        if drop_pools and hasattr(backbone, "out_dim"):
            backbone.out_dim = channels * height * width  # keeps the attribute truthful for other users
        size, blocks = min(height, width), []
        for i in range(2):
            pool = size >= 2
            blocks.append(conv_block(2 * channels if i == 0 else hidden, hidden, pool=pool))
            height, width = (height // 2, width // 2) if pool else (height, width)
            size = min(height, width)
        self.relation = nn.Sequential(
            *blocks,
            nn.Flatten(),
            nn.Linear(hidden * height * width, fc_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(fc_hidden, 1),
            nn.Sigmoid(),
        )

    def _map_shape(self, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            shape = self.feature_maps(torch.zeros(2, *input_shape)).shape[1:]
        self.backbone.train(was_training)
        return int(shape[0]), int(shape[1]), int(shape[2])

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding module: inputs ``[n, ...]`` -> feature maps ``[n, C, H, W]``."""
        if self._strip_flatten:
            for module in list(self.backbone)[:-1]:
                x = module(x)
            return x
        out = self.backbone(x)
        if out.dim() == 2:
            return out[:, :, None, None]
        if out.dim() != 4:
            raise MetakitError(f"relation needs [n, C, H, W] or [n, d] backbone outputs, got shape {list(out.shape)}.")
        return out

    def class_maps(self, maps: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
        """Per-class sum (or mean) of support maps ``[..., n, C, H, W]`` -> ``[..., ways, C, H, W]``."""
        flat = maps.flatten(-3)
        if self.aggregate == "mean":
            out = prototypes(flat, labels, ways)
        else:
            out = F.one_hot(labels, ways).to(flat.dtype).transpose(-1, -2) @ flat
        return out.unflatten(-1, maps.shape[-3:])

    def relations(self, query: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Relation scores of query maps ``[t, q, C, H, W]`` with class maps ``[t, N, C, H, W]``: ``[t, q, N]``."""
        t, q, n = query.shape[0], query.shape[1], classes.shape[1]
        pairs = torch.cat(
            [classes.unsqueeze(1).expand(t, q, *classes.shape[1:]), query.unsqueeze(2).expand(t, q, n, *query.shape[2:])],
            dim=-3,
        )
        return self.relation(pairs.flatten(0, 2)).view(t, q, n)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean squared error between relation scores ``[q, ways]`` and the one-hot targets."""
        return F.mse_loss(outputs, F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype))

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Predictor:
        """Class feature maps of the support set; the predictor scores each query against them."""
        classes = self.class_maps(self.feature_maps(support_x), support_y, ways).unsqueeze(0)
        return lambda query_x: self.relations(self.feature_maps(query_x).unsqueeze(0), classes).squeeze(0)

    def meta_loss(self, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """All tasks of the meta-batch go through the embedding module in one forward pass."""
        batch = as_batch(batch)
        support, query = embed_tasks(self.feature_maps, batch)
        return self.query_loss(self.relations(query, self.class_maps(support, batch.support_y, batch.ways)), batch)
