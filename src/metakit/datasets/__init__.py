"""Datasets: a registry of named sources of few-shot tasks.

Each entry says where the data comes from, its license, how to load it and how to split it.
Loaders are imported lazily (``"module:function"`` strings) so ``metakit --help`` stays fast and a
dataset's optional dependencies are only needed when it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metakit.datasets.base import ClassDataset, class_split, group_split, rotate_classes
from metakit.config import call_with_options
from metakit.errors import MetakitError, unknown_name
from metakit.registry import find, names

__all__ = [
    "ClassDataset",
    "DatasetSpec",
    "DATASETS",
    "class_split",
    "get_dataset",
    "group_split",
    "load_splits",
    "register_dataset",
    "rotate_classes",
]


@dataclass(frozen=True)
class DatasetSpec:
    """How to obtain one dataset.

    Attributes:
        name: registry name used in configs (``dataset.name``).
        summary: one line for ``metakit datasets``.
        source: where the files come from (URL, or "rendered locally").
        license: the license stated by the source.
        task_type: ``"classification"`` (a :class:`ClassDataset`) or ``"regression"`` (a task
            distribution).
        loader: ``"module:function"`` returning a :class:`ClassDataset` (classification) or a
            task-distribution factory (regression); its keyword arguments are the dataset options.
        status: ``"module:function"`` returning a one-line local status ("cached at ...").
        splitter: optional ``"module:function"`` ``(dataset, split, seed, fractions) -> dict``
            for dataset-specific named splits; ``group`` and ``class`` always work.
        splits: the split names the dataset supports (shown in errors and ``metakit datasets``).
        image_options: for datasets made from image files, ``"module:function"`` mapping the
            loader's options (defaults filled in) to the
            :class:`~metakit.datasets.folder.ImageOptions` that turn an image file into one of its
            tensors; see :func:`metakit.datasets.folder.image_options_for`.
    """

    name: str
    summary: str
    source: str
    license: str
    task_type: str
    loader: str
    status: str
    splitter: str | None = None
    splits: tuple[str, ...] = ("group", "class")
    image_options: str | None = None

    def resolve(self, attr: str) -> Callable[..., Any]:
        """Import and return the function named by ``attr`` (``loader``, ``status``, ``splitter``)."""
        module, func = getattr(self, attr).split(":")
        return getattr(importlib.import_module(module), func)


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry (later issues and users register their own datasets)."""
    DATASETS[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    """Return the spec registered as ``name`` or raise a one-line error with close names."""
    if name not in DATASETS:
        spec = find("dataset", name)  # a plugin's dataset, imported on first use
        if spec is None:
            raise unknown_name("dataset", name, {*DATASETS, *names("dataset")})
        register_dataset(spec)
    return DATASETS[name]


def load_splits(
    name: str,
    split: str = "group",
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    rotations: bool = False,
    **options: Any,
) -> dict[str, ClassDataset]:
    """Load a classification dataset and split its classes into ``train``/``val``/``test``.

    ``rotations`` adds each class rotated by 90/180/270 degrees as new classes *after* the split,
    so a class and its rotations always fall in the same split. ``split: auto`` picks the
    dataset's published split when it records one (your own ``train/val/test`` folders), else
    ``group`` when its classes have groups, else ``class``.
    """
    spec = get_dataset(name)
    if spec.task_type == "recommendation":
        raise MetakitError(
            f"dataset {name!r} holds ratings for recommendation; use it with metakit recsys "
            f"(data.source: {name} in a config such as configs/recsys-melu-ml1m.yaml)."
        )
    if spec.task_type != "classification":
        raise MetakitError(f"dataset {name!r} is a {spec.task_type} task distribution, not a class dataset.")
    dataset = call_with_options(spec.resolve("loader"), options, f"dataset {name!r}")
    if split == "auto":
        has_published = bool(getattr(dataset, "class_splits", None)) and "published" in spec.splits
        split = "published" if has_published else "group" if dataset.class_groups else "class"
    if split == "group":
        parts = group_split(dataset, fractions, seed)
    elif split == "class":
        parts = class_split(dataset, fractions, seed)
    elif spec.splitter and split in spec.splits:
        parts = spec.resolve("splitter")(dataset, split, seed, fractions)
    else:
        raise unknown_name(f"split for dataset {name!r}", split, ("auto", *spec.splits))
    if rotations:
        parts = {k: rotate_classes(v) for k, v in parts.items()}
    return parts


register_dataset(
    DatasetSpec(
        name="glyphs",
        summary="Omniglot-like letters rendered from the fonts inside matplotlib; alphabets = Unicode blocks.",
        source="rendered locally from matplotlib's DejaVu and STIX fonts (no download)",
        license="fonts: Bitstream Vera / DejaVu license and SIL OFL 1.1 (STIX)",
        task_type="classification",
        loader="metakit.datasets.glyphs:load_glyphs",
        status="metakit.datasets.glyphs:glyphs_status",
        image_options="metakit.datasets.folder:ink_image_options",
    )
)
register_dataset(
    DatasetSpec(
        name="omniglot",
        summary="Omniglot handwritten characters (Lake et al. 2015), 105x105 drawings by 20 people.",
        source="https://github.com/brendenlake/omniglot (python/images_background.zip, images_evaluation.zip)",
        license="MIT (Brenden Lake)",
        task_type="classification",
        loader="metakit.datasets.omniglot:load_omniglot",
        status="metakit.datasets.omniglot:omniglot_status",
        splitter="metakit.datasets.omniglot:omniglot_splits",
        splits=("group", "class", "vinyals", "lake"),
        image_options="metakit.datasets.folder:ink_image_options",
    )
)
register_dataset(
    DatasetSpec(
        name="sinusoid",
        summary="Sinusoid regression tasks (Finn et al. 2017): amplitude U[0.1,5], phase U[0,pi], x U[-5,5].",
        source="generated (no download)",
        license="n/a",
        task_type="regression",
        loader="metakit.datasets.sinusoid:SinusoidTasks",
        status="metakit.datasets.sinusoid:sinusoid_status",
    )
)

# The image benchmarks (metakit.datasets.imagesets and one module each). Each records its
# published class split, so load_splits(name, split="published") returns exactly the published
# train/val/test classes, and each decodes photos as photo_image_options says.
_CIFAR100 = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (downloaded, sha256-verified)"
_IMAGENET_TERMS = "ImageNet terms of access (non-commercial research)"
_CIFAR100_TERMS = "CIFAR-100: no license stated (cite Krizhevsky 2009)"


def _register_benchmark(name: str, summary: str, source: str, license: str, splits: tuple[str, ...]) -> None:
    """Register the image benchmark whose module ``metakit.datasets.<name>`` has ``load_<name>`` and ``<name>_status``."""
    register_dataset(
        DatasetSpec(
            name=name,
            summary=summary,
            source=source,
            license=license,
            task_type="classification",
            loader=f"metakit.datasets.{name}:load_{name}",
            status=f"metakit.datasets.{name}:{name}_status",
            splitter="metakit.datasets.imagesets:published_splits",
            splits=splits,
            image_options="metakit.datasets.folder:photo_image_options",
        )
    )


_register_benchmark(
    "miniimagenet",
    "miniImageNet (Vinyals et al. 2016), Ravi & Larochelle 64/16/20 class split; 100 x 600 84x84 RGB, ~1.3 GB in memory.",
    "manual: mini-imagenet-cache-{train,val,test}.pkl, or images/ + Ravi & Larochelle's CSVs "
    "(github.com/twitter/meta-learning-lstm)",
    _IMAGENET_TERMS,
    ("published", "class"),
)
_register_benchmark(
    "tieredimagenet",
    "tieredImageNet (Ren et al. 2018), 608 classes in 34 categories, 351/97/160 split by category; "
    "~16.5 GB in memory at 84px.",
    "manual: Ren et al.'s tiered-imagenet.tar ({split}_images_png.pkl or {split}_images.npz, {split}_labels.pkl)",
    _IMAGENET_TERMS,
    ("published", "group", "class"),
)
_register_benchmark(
    "cifarfs",
    "CIFAR-FS (Bertinetto et al. 2019): CIFAR-100 with a 64/16/20 class split; 32x32 RGB, superclasses as groups.",
    _CIFAR100 + "; or MetaOptNet / r2d2 files",
    _CIFAR100_TERMS,
    ("published", "group", "class"),
)
_register_benchmark(
    "fc100",
    "FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass 12/4/4 (60/20/20 classes); 32x32 RGB.",
    _CIFAR100 + "; or MetaOptNet pickles",
    _CIFAR100_TERMS,
    ("published", "group", "class"),
)
_register_benchmark(
    "cub",
    "CUB-200-2011 birds (Wah et al. 2011): 200 classes, 11,788 photos, Chen et al. 2019 100/50/50 split; "
    "~250 MB at 84px.",
    "https://data.caltech.edu/records/65de6-vp158 (CUB_200_2011.tgz, 1.1 GB, downloaded, sha256-verified)",
    "research use (Caltech; images from Flickr, see the dataset page)",
    ("published", "class"),
)

# Intent classification on frozen sentence embeddings (metakit.text; encoding needs metakit[text]).
# Items are 384-d all-MiniLM-L6-v2 embeddings, cached on disk after the first load.
_TEXT = "metakit.text.datasets"
register_dataset(
    DatasetSpec(
        name="banking77",
        summary="Banking77 (Casanueva et al. 2020): 13,083 online-banking queries, 77 intents, one domain; "
        "frozen all-MiniLM-L6-v2 embeddings; split by intent (split: class).",
        source="https://github.com/PolyAI-LDN/task-specific-datasets (banking_data/train.csv, test.csv; "
        "downloaded at a pinned commit, sha256-verified)",
        license="CC BY 4.0",
        task_type="classification",
        loader=f"{_TEXT}:load_banking77",
        status=f"{_TEXT}:banking77_status",
        splits=("class",),
    )
)
register_dataset(
    DatasetSpec(
        name="hwu64",
        summary="HWU64 (Liu et al. 2019), fold 1: 11,036 home-assistant utterances, 64 intents in 18 scenarios; "
        "frozen all-MiniLM-L6-v2 embeddings; split by scenario (split: domain).",
        source="https://github.com/xliuhw/NLU-Evaluation-Data (CrossValidation/.../KFold_1, 128 CSVs; downloaded "
        "at a pinned commit, verified by the sha256 of their manifest)",
        license="CC BY 4.0",
        task_type="classification",
        loader=f"{_TEXT}:load_hwu64",
        status=f"{_TEXT}:hwu64_status",
        splitter=f"{_TEXT}:domain_splits",
        splits=("domain", "group", "class"),
    )
)
register_dataset(
    DatasetSpec(
        name="clinc150",
        summary="CLINC150 (Larson et al. 2019): 22,500 in-scope queries, 150 intents in 10 domains; "
        "frozen all-MiniLM-L6-v2 embeddings; split by domain (split: domain).",
        source="https://github.com/clinc/oos-eval (data/data_full.json, domains.json; downloaded at a pinned "
        "commit, sha256-verified)",
        license="CC BY 3.0",
        task_type="classification",
        loader=f"{_TEXT}:load_clinc150",
        status=f"{_TEXT}:clinc150_status",
        splitter=f"{_TEXT}:domain_splits",
        splits=("domain", "group", "class"),
    )
)

# Your own data: a folder of images, a CSV/JSONL of labelled texts, or arrays in an .npz
# (README "Your own data"). Class names come from your folder names / labels.
_YOURS = "your own files"
register_dataset(
    DatasetSpec(
        name="folder",
        summary="Your images, one folder per class: ROOT/<class>/<image>, optionally ROOT/{train,val,test}/... "
        "(split: published) or a group level (groups: true, split: group); any format Pillow reads.",
        source=_YOURS + " (dataset.root)",
        license="yours",
        task_type="classification",
        loader="metakit.datasets.folder:load_folder",
        status="metakit.datasets.folder:folder_status",
        splitter="metakit.datasets.folder:folder_splits",
        splits=("published", "group", "class"),
        image_options="metakit.datasets.folder:folder_image_options",
    )
)
for _kind in ("csv", "jsonl"):
    register_dataset(
        DatasetSpec(
            name=_kind,
            summary=f"Your labelled texts in a .{_kind} (text_column, label_column, optional group_column), "
            "as frozen all-MiniLM-L6-v2 embeddings (needs metakit[text]).",
            source=_YOURS + " (dataset.path)",
            license="yours",
            task_type="classification",
            loader=f"{_TEXT}:load_{_kind}",
            status=f"{_TEXT}:table_status",
        )
    )
register_dataset(
    DatasetSpec(
        name="arrays",
        summary="Your arrays in an .npz: x (float features, or uint8 images [N,C,H,W] / [N,H,W]), y (labels), "
        "optional groups and class_names.",
        source=_YOURS + " (dataset.path)",
        license="yours",
        task_type="classification",
        loader="metakit.datasets.arrays:load_arrays",
        status="metakit.datasets.arrays:arrays_status",
    )
)

# Ratings for cold-start recommendation (``metakit recsys``, data.source). Listed here so that
# ``metakit datasets`` shows every dataset metakit reads; they are not class datasets.
_MOVIELENS = "metakit.recsys.movielens"
for _name, _summary, _status in (
    ("ml-100k", "MovieLens 100K (Harper & Konstan 2015): 100,000 ratings (1-5) by 943 users of 1,682 movies, "
     "with user demographics; users as tasks in metakit recsys.", "ml100k_status"),
    ("ml-1m", "MovieLens 1M (Harper & Konstan 2015): 1,000,209 ratings (1-5) by 6,040 users of 3,706 movies, "
     "with user demographics; users as tasks in metakit recsys.", "ml1m_status"),
):
    register_dataset(
        DatasetSpec(
            name=_name,
            summary=_summary,
            source=f"https://files.grouplens.org/datasets/movielens/{_name}.zip (sha256-verified; or placed by hand "
            "through data.root or $METAKIT_MOVIELENS)",
            license="GroupLens research-use terms: no redistribution, cite Harper & Konstan 2015",
            task_type="recommendation",
            loader=f"{_MOVIELENS}:load_movielens",
            status=f"{_MOVIELENS}:{_status}",
            splits=("cold-start",),
        )
    )
