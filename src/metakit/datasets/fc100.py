"""FC100 (Oreshkin et al., NeurIPS 2018, "TADAM"): CIFAR-100 split by superclass.

The 100 CIFAR-100 classes (600 32x32 images each, official train and test sets together) are
split by their 20 superclasses (:data:`FC100_SUPERCLASS_SPLIT`): 12 superclasses / 60 classes for
training, 4 / 20 for validation and 4 / 20 for testing, so that test classes share no superclass
with training classes. Superclasses are the class groups. About 184 MB in memory at 32px.

The split is from the paper's supplementary material (coarse labels train 1, 2, 3, 4, 5, 6, 9, 10,
15, 17, 18, 19; val 8, 11, 13, 16; test 0, 7, 12, 14), as used by the TADAM code and by torchmeta's
fc100 assets. Layouts read (see :mod:`metakit.datasets.cifarfs` for the shared machinery):

* **MetaOptNet pickles** ``FC100_train.pickle``, ``FC100_val.pickle``, ``FC100_test.pickle``
  (dicts with ``data`` uint8 ``[n, 32, 32, 3]`` and ``labels``, CIFAR-100 fine label ids);
* **the official CIFAR-100** ``cifar-100-python.tar.gz`` or extracted ``cifar-100-python/``,
  downloaded when missing from https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz into
  ``cache_dir("cifar100")`` (shared with CIFAR-FS) and verified by sha256.
"""

from __future__ import annotations

import os

from metakit.datasets.cifarfs import FINE_TO_COARSE, CifarVariant, cifar_status, load_cifar_variant
from metakit.datasets.imagesets import ImageSetDataset

__all__ = ["ENV_VAR", "FC100_SUPERCLASS_SPLIT", "fc100_status", "load_fc100"]

NAME = "fc100"
DISPLAY = "FC100"
ENV_VAR = "METAKIT_FC100"

#: Oreshkin et al.'s superclass split (CIFAR-100 coarse label names).
FC100_SUPERCLASS_SPLIT: dict[str, tuple[str, ...]] = {
    "train": (
        "fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
        "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles",
        "trees", "vehicles_1", "vehicles_2",
    ),
    "val": ("large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"),
    "test": ("aquatic_mammals", "insects", "medium_mammals", "people"),
}
_SPLIT_OF_SUPERCLASS = {c: s for s, cs in FC100_SUPERCLASS_SPLIT.items() for c in cs}

FC100 = CifarVariant(
    name=NAME,
    display=DISPLAY,
    env_var=ENV_VAR,
    split_of=lambda c: _SPLIT_OF_SUPERCLASS[FINE_TO_COARSE[c]],
    split_rule="the FC100 superclass split",
    metaoptnet_prefix="FC100",
    r2d2=False,
    subdirs=("fc100", "FC100", "cifar100", "cifar-100-python"),
)


def load_fc100(
    root: str | os.PathLike | None = None,
    image_size: int = 32,
    download: bool = True,
    max_memory_gb: float | None = None,
) -> ImageSetDataset:
    """Load FC100: CIFAR-100's 100 classes (superclasses as groups), the superclass split recorded.

    The options are CIFAR-FS's (:func:`~metakit.datasets.cifarfs.load_cifarfs`), with
    ``$METAKIT_FC100``, ``cache_dir("fc100")`` and an ``fc100/`` folder in place of CIFAR-FS's.

    Returns:
        An :class:`ImageSetDataset`: uint8 RGB ``[n, 3, image_size, image_size]``; classes numbered
        train, val, test (each alphabetical); ``class_splits`` holds the published split, and
        ``split: group`` splits by superclass at random instead.
    """
    return load_cifar_variant(FC100, root, image_size, download, max_memory_gb)


def fc100_status() -> str:
    """One line: where FC100's files are, or where they would be downloaded to."""
    return cifar_status(FC100)
