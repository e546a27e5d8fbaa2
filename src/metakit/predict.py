"""Use a trained run on your own classes: adapt to a labelled support set, then label new items.

A run's learner was meta-trained to adapt to classes it has never seen. :func:`load` rebuilds it
from a run directory, and the :class:`FewShotModel` it returns adapts it to *your* classes and
labels *your* items::

    model = metakit.load("runs/quickstart")             # the run's best checkpoint
    model.fit_folder("my_support")                      # my_support/<class>/<image>
    labels = model.predict_files(["a.png", "b.png"])    # one class name per file
    probs, classes = model.predict_proba(query_tensor)  # [n, ways], the class names

``metakit predict RUN_DIR --support S --query Q`` does the same from the command line and writes a
CSV (see :mod:`metakit.cli`).

**Inputs are prepared exactly as in training.** Images go through
:func:`metakit.datasets.folder.preprocess_image` with the run's own options
(:func:`~metakit.datasets.folder.image_options_for`: size, channels, inversion, resampling), then
become floats in [0, 1] as episodes hold them. Texts are embedded by the run's frozen sentence
encoder (:func:`metakit.text.embeddings.embed_texts`). Tensors are taken as already prepared
(uint8 images are scaled to [0, 1]).

**Adaptation and prediction are evaluation's.** The learner is put in eval mode, ``adapt`` runs
once on the whole support set under ``torch.no_grad()`` (learners with an inner loop re-enable
gradients themselves), and labels are the argmax of the learner's outputs, so predicting the
query images of a test episode gives exactly the accuracy ``metakit evaluate`` reports for it.
Probabilities are the softmax of the outputs (``Learner.probabilities``), divided first by a
temperature fitted on the run's validation episodes when calibrated (:meth:`FewShotModel.calibrate`).

**Batching.** Queries are labelled in balanced batches of at most ``batch_size`` items. Most
learners label each item on its own, so batching changes nothing; a few (MAML-family learners,
whose BatchNorm uses the statistics of the batch it sees, and transductive fine-tuning, which fits
its head with the queries) depend on the batch, as in evaluation, where an episode's whole query
set is one batch; they see batches as even in size as possible (never a stray batch of one).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from metakit.errors import MetakitError

if TYPE_CHECKING:
    from metakit.config import Config
    from metakit.datasets.folder import ImageOptions
    from metakit.learners import Learner

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "UNKNOWN",
    "FewShotModel",
    "InputSpec",
    "Prediction",
    "fit_temperature",
    "input_spec",
    "list_images",
    "load",
    "prediction_rows",
    "read_support_folder",
    "read_text_table",
    "write_csv",
]

#: The label of an item whose top probability is below ``min_confidence``.
UNKNOWN = "unknown"

#: Query items per forward pass by default: large enough to keep the CPU's vector units busy,
#: small enough that a Conv-4 on 84px RGB images stays within a few hundred MB.
DEFAULT_BATCH_SIZE = 512

# Temperatures the calibration search may pick: wide enough for any sane model.
_TEMPERATURE_RANGE = (0.02, 50.0)

# File lists shorter than this are decoded on the calling thread (a pool costs more than it saves).
_PARALLEL_DECODE_MIN = 64


# --------------------------------------------------------------------------------------------
# What a run's inputs are


@dataclass(frozen=True)
class InputSpec:
    """What the run's learner takes as one input, and how raw items are turned into it.

    Attributes:
        kind: ``"image"`` (image files / Pillow images), ``"text"`` (sentences, embedded or
            tokenized by ``encoder``) or ``"tensor"`` (the dataset's items are used as they are:
            only prepared tensors are accepted).
        shape: the shape of one prepared input, e.g. ``(1, 28, 28)``, ``(384,)`` or, for token
            ids, ``(L,)``.
        dataset: the name of the dataset the run was trained on (for messages).
        image_options: how an image becomes a uint8 tensor (``kind == "image"``).
        encoder: the sentence encoder (``kind == "text"``): frozen embeddings, or the text model
            whose token ids the run's ``transformer`` backbone reads (``tokens``).
        tokens: text items are token ids padded to ``shape[0]`` (``dataset.inputs: tokens``)
            rather than sentence embeddings.
    """

    kind: str
    shape: tuple[int, ...]
    dataset: str
    image_options: ImageOptions | None = None
    encoder: str | None = None
    tokens: bool = False


def input_spec(config: Config, shape: Sequence[int]) -> InputSpec:
    """The :class:`InputSpec` of a run trained with ``config`` on inputs of ``shape``.

    Image datasets give their preprocessing (:func:`~metakit.datasets.folder.image_options_for`);
    datasets whose loader takes a sentence ``encoder`` are text; anything else takes tensors.
    """
    import inspect

    from metakit.datasets import get_dataset

    d = config.dataset
    spec = get_dataset(d.name)
    shape = tuple(int(s) for s in shape)
    if getattr(spec, "image_options", None):
        from metakit.datasets.folder import image_options_for

        options = image_options_for(d)
        if tuple(options.shape) != shape:
            raise MetakitError(
                f"the run's dataset {d.name!r} makes images {list(options.shape)} but its learner takes "
                f"{list(shape)}; the run's config.yaml does not match its weights, so retrain it."
            )
        return InputSpec("image", shape, d.name, image_options=options)
    params = inspect.signature(spec.resolve("loader")).parameters

    def option(name: str) -> Any:
        default = params[name].default if name in params else None
        return d.options.get(name, None if default is inspect.Parameter.empty else default)

    if "encoder" in params and option("encoder"):
        return InputSpec("text", shape, d.name, encoder=str(option("encoder")), tokens=option("inputs") == "tokens")
    return InputSpec("tensor", shape, d.name)


def _describe_inputs(spec: InputSpec) -> str:
    if spec.kind == "image":
        return "image files, Pillow images or image tensors"
    if spec.kind == "text":
        return f"sentences (strings) or {'token-id' if spec.tokens else 'embedding'} tensors"
    return f"tensors of shape [n, {', '.join(map(str, spec.shape))}]"


# --------------------------------------------------------------------------------------------
# Reading files


def _image_suffixes() -> frozenset[str]:
    from metakit.datasets.folder import image_extensions

    return image_extensions()


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def list_images(path: str | os.PathLike, what: str = "--query") -> list[Path]:
    """The image files of ``path``: the file itself, or every image under the folder, sorted.

    Folders are searched recursively; hidden files and folders and files that are not images
    (by extension) are skipped.

    Raises:
        MetakitError: ``path`` does not exist, or the folder holds no image.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MetakitError(f"{what} {path} does not exist; give an image file or a folder of images.")
    exts = _image_suffixes()
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, f) for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in exts)
    if not found:
        raise MetakitError(f"{what} {path} holds no image files (.png, .jpg, ...); put the images to label in it.")
    return sorted(found, key=lambda p: p.relative_to(path).as_posix())


def read_support_folder(path: str | os.PathLike) -> tuple[list[Path], list[str]]:
    """The images of a support folder ``PATH/<class>/<image>`` and their class names.

    Classes are the sub-folders in sorted order; each one's images (sorted by name) follow the
    previous class's.

    Raises:
        MetakitError: the folder is missing or empty, an image lies outside a class folder, a
            class folder holds no image, or there are fewer than 2 classes.
    """
    root = Path(path)
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise MetakitError(f"--support {root} {what}; give a folder holding one folder of images per class.")
    exts = _image_suffixes()
    entries = sorted((p for p in root.iterdir() if _visible(p)), key=lambda p: p.name)
    loose = [p.name for p in entries if p.is_file() and p.suffix.lower() in exts]
    if loose:
        raise MetakitError(
            f"--support {root}: image {loose[0]} is not inside a class folder; move it into "
            f"{root}/<class>/ (the folder name is the class name)."
        )
    classes = [p for p in entries if p.is_dir()]
    if not classes:
        raise MetakitError(
            f"--support {root} holds no class folders; lay it out as {root}/<class>/<image>, one folder per class."
        )
    files: list[Path] = []
    labels: list[str] = []
    for folder in classes:
        images = sorted(
            (p for p in folder.iterdir() if _visible(p) and p.is_file() and p.suffix.lower() in exts), key=lambda p: p.name
        )
        if not images:
            raise MetakitError(
                f"--support {root}: class folder {folder.name}/ holds no image files; add images of that class or delete it."
            )
        files.extend(images)
        labels.extend([folder.name] * len(images))
    _check_ways(len(classes), f"--support {root}")
    return files, labels


def _check_ways(ways: int, where: str) -> None:
    if ways < 2:
        raise MetakitError(
            f"{where} has {ways} class; few-shot classification needs at least 2 classes to choose between, so add another."
        )


def read_text_table(
    path: str | os.PathLike, text_column: str = "text", label_column: str | None = "label", what: str = "--query"
) -> tuple[list[str], list[str] | None]:
    """Sentences (and their labels) from a CSV file with a header row, or a JSONL file.

    JSONL (``.jsonl``/``.ndjson``): one JSON object per line with ``text_column`` (and
    ``label_column``) keys. Anything else is read as CSV. ``label_column=None`` reads texts only.

    Raises:
        MetakitError: the file is missing, not UTF-8, malformed, lacks a column, or has no rows or
            an empty text.
    """
    path = Path(path)
    if not path.is_file():
        what_is = "is a folder" if path.is_dir() else "does not exist"
        raise MetakitError(f"{what} {path} {what_is}; give a CSV or JSONL file with a {text_column!r} column.")
    columns = [text_column] + ([label_column] if label_column else [])
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise MetakitError(f"{what} {path} is not UTF-8 text; save it as UTF-8 CSV or JSONL.") from None
    rows: list[dict[str, Any]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MetakitError(f"{what} {path} line {number} is not valid JSON ({exc.msg}); fix that line.") from None
            if not isinstance(obj, dict):
                raise MetakitError(f"{what} {path} line {number} is not a JSON object; write one {{...}} per line.")
            missing = [c for c in columns if c not in obj]
            if missing:
                raise MetakitError(
                    f"{what} {path} line {number} has no {missing[0]!r} key (keys: {', '.join(map(str, obj)) or 'none'}); "
                    f"add it or name the right one with --{'text' if missing[0] == text_column else 'label'}-column."
                )
            rows.append(obj)
    else:
        try:
            reader = csv.DictReader(io.StringIO(raw, newline=""))
            header = list(reader.fieldnames or [])
            missing = [c for c in columns if c not in header]
            if missing:
                flag = "text" if missing[0] == text_column else "label"
                raise MetakitError(
                    f"{what} {path} has no {missing[0]!r} column (header: {', '.join(header) or 'none'}); add it, "
                    f"or name the right column with --{flag}-column."
                )
            rows = list(reader)
        except csv.Error as exc:
            raise MetakitError(f"{what} {path} is not valid CSV ({exc}); fix the file.") from None
    if not rows:
        raise MetakitError(f"{what} {path} has no rows; add the sentences to it.")
    texts, labels = [], []
    for number, row in enumerate(rows, 1):
        text = row.get(text_column)
        if not isinstance(text, str) or not text.strip():
            raise MetakitError(f"{what} {path} row {number} has an empty {text_column!r}; fill it in or delete the row.")
        texts.append(text)
        if label_column:
            label = row.get(label_column)
            if label is None or not str(label).strip():
                raise MetakitError(f"{what} {path} row {number} has an empty {label_column!r}; fill it in or delete the row.")
            labels.append(str(label))
    return texts, (labels if label_column else None)


def _decode_workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _decode_images(items: Sequence[Any], options: ImageOptions) -> torch.Tensor:
    """uint8 ``[n, C, H, W]`` of image paths / Pillow images / bytes, decoded on several threads."""
    from metakit.datasets.folder import preprocess_image

    out = torch.empty((len(items), *options.shape), dtype=torch.uint8)

    def work(bounds: tuple[int, int]) -> None:
        for i in range(*bounds):
            out[i] = preprocess_image(items[i], options)

    workers = _decode_workers()
    if len(items) < _PARALLEL_DECODE_MIN or workers == 1:
        work((0, len(items)))
        return out
    step = math.ceil(len(items) / workers)
    # Pillow releases the GIL while decoding, so the threads decode in parallel.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, [(lo, min(lo + step, len(items))) for lo in range(0, len(items), step)]))
    return out


# --------------------------------------------------------------------------------------------
# Predictions


@dataclass(frozen=True)
class Prediction:
    """The label of one query item.

    Attributes:
        label: the most probable class, or :data:`UNKNOWN` when its probability is below the
            ``min_confidence`` asked for.
        probability: the most probable class's probability (also when the label is unknown).
        top: the ``k`` most probable ``(class, probability)`` pairs, most probable first.
    """

    label: str
    probability: float
    top: tuple[tuple[str, float], ...]


def _balanced_batches(n: int, size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` bounds of ``ceil(n / size)`` batches whose sizes differ by at most one."""
    count = max(1, math.ceil(n / size))
    bounds = [round(i * n / count) for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(count)]


def _batch_dependent(learner: nn.Module) -> bool:
    """Whether the learner's output for one query depends on the other queries in its batch."""
    if getattr(learner, "transductive", False):
        return True
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.track_running_stats for m in learner.modules()
    )


def _max_ways(learner: nn.Module) -> int | None:
    """The most classes the learner can tell apart, or ``None`` when it takes any number."""
    from metakit.learners.gradient import GradientLearner

    if isinstance(learner, GradientLearner) and learner.task.task_type == "classification":
        return int(learner.head.weight.shape[0])  # a meta-learned head of fixed size
    return None


class FewShotModel:
    """A trained learner ready to adapt to your classes (:meth:`fit`) and label items (:meth:`predict`).

    Args:
        learner: a trained classification learner.
        spec: what the learner takes as input (see :func:`input_spec`).
        temperature: divides the learner's outputs before the softmax (1: none; see
            :meth:`calibrate`).
        batch_size: query items per forward pass.
        progress: show a progress bar while labelling many items (only on a terminal).
        name: what to call the model in messages (the run directory).
    """

    def __init__(
        self,
        learner: Learner,
        spec: InputSpec,
        temperature: float = 1.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        progress: bool = False,
        name: str = "the model",
    ) -> None:
        if learner.task.task_type != "classification":
            raise MetakitError(
                f"{name} is a {learner.task.task_type} learner; metakit predict labels items with classes, so it needs a "
                f"classification run."
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise MetakitError(f"batch size must be an integer >= 1, got {batch_size!r}.")
        if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
            raise MetakitError(f"temperature must be a finite number > 0, got {temperature!r}.")
        self.learner = learner.eval()
        self.spec = spec
        self.temperature = float(temperature)
        self.batch_size = batch_size
        self.progress = progress
        self.name = name
        self.calibration: dict[str, Any] | None = None
        #: The run's config when loaded by :func:`load`.
        self.config: Config | None = None
        self._classes: list[str] = []
        self._predictor: Callable[[torch.Tensor], torch.Tensor] | None = None

    # -- inputs -------------------------------------------------------------------------------

    def prepare(self, items: Any, what: str = "inputs") -> torch.Tensor:
        """``items`` as the float tensor ``[n, *shape]`` the learner takes (see the module docs)."""
        if isinstance(items, np.ndarray):
            items = torch.from_numpy(np.ascontiguousarray(items))
        if isinstance(items, torch.Tensor):
            x = items
        elif isinstance(items, (list, tuple)):
            if not items:
                raise MetakitError(f"no {what} given; pass at least one item.")
            if self.spec.kind == "image" and not isinstance(items[0], torch.Tensor):
                x = _decode_images(items, self.spec.image_options)  # type: ignore[arg-type]
            elif self.spec.kind == "text" and isinstance(items[0], str):
                bad = [i for i, t in enumerate(items) if not isinstance(t, str) or not t.strip()]
                if bad:
                    raise MetakitError(f"{what} item {bad[0]} is not a non-empty string; give sentences (strings).")
                x = self._text_inputs(list(items))
            elif all(isinstance(t, torch.Tensor) for t in items):
                x = torch.stack(list(items))
            else:
                raise MetakitError(
                    f"cannot use {type(items[0]).__name__} {what}: the run {self.name} (dataset {self.spec.dataset!r}) "
                    f"takes {_describe_inputs(self.spec)}."
                )
        else:
            raise MetakitError(
                f"cannot use {type(items).__name__} {what}: the run {self.name} (dataset {self.spec.dataset!r}) takes "
                f"{_describe_inputs(self.spec)} (as a list or a tensor)."
            )
        if tuple(x.shape[1:]) != self.spec.shape or x.dim() != len(self.spec.shape) + 1:
            raise MetakitError(
                f"{what} have shape {list(x.shape)} but the run {self.name} takes [n, {', '.join(map(str, self.spec.shape))}] "
                f"(dataset {self.spec.dataset!r}); give {_describe_inputs(self.spec)}."
            )
        if x.shape[0] == 0:
            raise MetakitError(f"no {what} given; pass at least one item.")
        # As EpisodeSampler: uint8 images become [0, 1]; floating inputs are taken as prepared.
        return x.float().div_(255) if x.dtype == torch.uint8 else x.float()

    def _text_inputs(self, texts: list[str]) -> torch.Tensor:
        # The text domain knows how its runs encode sentences (embeddings or token ids); ask it.
        from metakit.registry import input_preparer

        prepare = input_preparer("text")
        if prepare is None:
            raise MetakitError(f"the run {self.name} reads sentences, but no installed plugin prepares text inputs; "
                               f"reinstall metakit (pip install -e . in a checkout).")
        return prepare(texts, self.spec, progress=self.progress)

    # -- adapting -----------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """The class names of the support set, in label order (empty before :meth:`fit`)."""
        return list(self._classes)

    @property
    def ways(self) -> int:
        """The number of support classes."""
        return len(self._classes)

    @property
    def batch_dependent(self) -> bool:
        """Whether a query's output depends on the other queries in its batch (see the module docs)."""
        return _batch_dependent(self.learner)

    def fit(self, support_x: Any, support_labels: Sequence[Any]) -> FewShotModel:
        """Adapt the learner to a labelled support set; returns ``self``.

        Args:
            support_x: the support items (see :meth:`prepare`: tensors, image paths / Pillow
                images, or sentences, by the run's kind of input).
            support_labels: one label per item, of any type (strings, ints); classes are numbered
                in the order they first appear, and predictions name them by ``str(label)``.

        Raises:
            MetakitError: the items do not fit the run, labels and items differ in number, fewer
                than 2 classes, or more classes than the learner can tell apart.
        """
        names = [str(label) for label in support_labels]
        x = self.prepare(support_x, "support items")
        if len(names) != x.shape[0]:
            raise MetakitError(f"{x.shape[0]} support items but {len(names)} labels; give one label per item.")
        classes = list(dict.fromkeys(names))
        _check_ways(len(classes), "the support set")
        limit = _max_ways(self.learner)
        if limit is not None and len(classes) > limit:
            raise MetakitError(
                f"the support set has {len(classes)} classes but the run {self.name}'s {type(self.learner).__name__} "
                f"learner has a meta-learned {limit}-way head, so it tells apart at most {limit} classes; use at most "
                f"{limit}, or retrain with eval.ways including {len(classes)}."
            )
        index = {c: i for i, c in enumerate(classes)}
        y = torch.tensor([index[n] for n in names], dtype=torch.long)
        with torch.no_grad():
            self._predictor = self.learner.adapt(x, y, len(classes))
        self._classes = classes
        return self

    def fit_folder(self, path: str | os.PathLike) -> FewShotModel:
        """Adapt to a support folder ``PATH/<class>/<image>`` (class = folder name); returns ``self``."""
        self._require("image", "fit_folder", "fit_table(path) with a CSV/JSONL file")
        files, labels = read_support_folder(path)
        return self.fit(files, labels)

    def fit_table(self, path: str | os.PathLike, text_column: str = "text", label_column: str = "label") -> FewShotModel:
        """Adapt to labelled sentences in a CSV or JSONL file; returns ``self``."""
        self._require("text", "fit_table", "fit_folder(path) with a folder of images")
        texts, labels = read_text_table(path, text_column, label_column, what="--support")
        _check_ways(len(set(labels or [])), f"--support {path}")
        return self.fit(texts, labels or [])

    def _require(self, kind: str, method: str, instead: str) -> None:
        if self.spec.kind != kind:
            raise MetakitError(
                f"{method} reads {kind} inputs but the run {self.name} was trained on {self.spec.dataset!r} "
                f"({self.spec.kind} inputs); use {instead}."
            )

    # -- predicting ---------------------------------------------------------------------------

    def _outputs(self, chunks: Sequence[Any], total: int) -> torch.Tensor:
        """The learner's outputs ``[n, ways]`` for query chunks (prepared on the fly), with a progress bar."""
        if self._predictor is None:
            raise MetakitError("call fit(...) (or fit_folder / fit_table) with a support set before predicting.")
        from rich.console import Console
        from rich.progress import Progress

        console = Console(stderr=True)
        show = self.progress and console.is_terminal and total > self.batch_size
        outs = []
        with Progress(console=console, transient=True, disable=not show) as bar:
            task = bar.add_task(f"labelling {total:,} items", total=total)
            for chunk in chunks:
                x = self.prepare(chunk, "query items")
                with torch.no_grad():
                    outs.append(self._predictor(x))
                bar.advance(task, x.shape[0])
        return torch.cat(outs)

    def _chunks(self, items: Any) -> tuple[list[Any], int]:
        n = len(items)
        if n == 0:
            raise MetakitError("no query items given; pass at least one item.")
        # Balanced for every learner: batch-dependent ones (see the module docs) then never see a
        # stray batch of one, and a query set within batch_size is one batch, as in evaluation.
        return [items[lo:hi] for lo, hi in _balanced_batches(n, self.batch_size)], n

    def outputs(self, query_x: Any) -> torch.Tensor:
        """The learner's raw outputs (logits) ``[n, ways]`` for ``query_x``."""
        chunks, total = self._chunks(query_x)
        return self._outputs(chunks, total)

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """Class probabilities of learner ``outputs``: the learner's softmax after the temperature."""
        return self.learner.probabilities(outputs / self.temperature)

    def predict_proba(self, query_x: Any) -> tuple[torch.Tensor, list[str]]:
        """Probabilities ``[n, ways]`` of each class for each query item, and the class names."""
        return self.probabilities(self.outputs(query_x)), self.classes

    def predict(self, query_x: Any, min_confidence: float | None = None) -> list[str]:
        """The class name of each query item (:data:`UNKNOWN` below ``min_confidence``)."""
        return [p.label for p in self.predict_top(query_x, 1, min_confidence)]

    def predict_top(self, query_x: Any, k: int = 1, min_confidence: float | None = None) -> list[Prediction]:
        """The ``k`` most probable classes of each query item, and its label (see :class:`Prediction`)."""
        return self.decide(self.outputs(query_x), k, min_confidence)

    def predict_files(self, paths: Sequence[str | os.PathLike], min_confidence: float | None = None) -> list[str]:
        """The class name of each image file (decoded batch by batch, so any number of files fits)."""
        self._require("image", "predict_files", "predict(sentences)")
        return [p.label for p in self.predict_top(list(paths), 1, min_confidence)]

    def decide(self, outputs: torch.Tensor, k: int = 1, min_confidence: float | None = None) -> list[Prediction]:
        """Turn learner ``outputs`` ``[n, ways]`` into :class:`Prediction` s.

        The ranking is the outputs' own (so labels are evaluation's argmax even where two
        probabilities round alike); ``k`` above the number of classes is cut to it.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise MetakitError(f"top-k must be an integer >= 1, got {k!r}.")
        check_min_confidence(min_confidence)
        if min_confidence is not None and UNKNOWN in self._classes:
            raise MetakitError(
                f"a support class is named {UNKNOWN!r}, the label --min-confidence gives to uncertain items; rename that class."
            )
        probs = self.probabilities(outputs)
        # Stable: ties go to the lower index, as argmax (evaluation) breaks them.
        order = torch.sort(outputs, dim=-1, descending=True, stable=True).indices[:, : min(k, outputs.shape[-1])]
        top_p = probs.gather(1, order)
        preds = []
        for idx, p in zip(order.tolist(), top_p.tolist()):
            top = tuple((self._classes[i], float(q)) for i, q in zip(idx, p))
            label = UNKNOWN if min_confidence is not None and top[0][1] < min_confidence else top[0][0]
            preds.append(Prediction(label, top[0][1], top))
        return preds

    # -- calibration --------------------------------------------------------------------------

    def calibrate(self, episodes: Sequence[Any]) -> float:
        """Fit :attr:`temperature` on labelled episodes by NLL and return it (see :func:`fit_temperature`).

        ``episodes`` are :class:`~metakit.episodes.Episode` s, e.g. the run's validation episodes;
        the support set given to :meth:`fit` is kept.
        """
        outputs, labels = [], []
        was_training = self.learner.training
        self.learner.eval()
        with torch.no_grad():
            for episode in episodes:
                predict = self.learner.adapt(episode.support_x, episode.support_y, episode.ways)
                outputs.append(predict(episode.query_x))
                labels.append(episode.query_y)
        self.learner.train(was_training)
        if not outputs:
            raise MetakitError("calibration needs at least one episode.")
        # Episodes may differ in ways; NLL is per item, so pad with -inf (probability 0).
        width = max(o.shape[-1] for o in outputs)
        logits = torch.cat([nn.functional.pad(o, (0, width - o.shape[-1]), value=-math.inf) for o in outputs])
        y = torch.cat(labels)
        before = _nll(self.learner, logits, y, 1.0)
        self.temperature = fit_temperature(logits, y, lambda t: _nll(self.learner, logits, y, t))
        self.calibration = {
            "temperature": self.temperature,
            "episodes": len(outputs),
            "items": int(y.numel()),
            "nll_before": before,
            "nll_after": _nll(self.learner, logits, y, self.temperature),
        }
        return self.temperature


def _nll(learner: Learner, logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    probs = learner.probabilities(logits.double() / temperature)
    return float(-probs.gather(1, labels.view(-1, 1)).clamp_min(1e-12).log().mean())


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, nll: Callable[[float], float] | None = None, iterations: int = 60
) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    A golden-section search over ``log T`` in [0.02, 50]: the NLL is convex in ``1 / T``, so it
    has one minimum there, and the search needs no gradient and cannot diverge. ``nll`` replaces
    the softmax NLL (a learner's own probabilities).
    """
    if nll is None:
        def nll(t: float) -> float:
            return float(nn.functional.cross_entropy(logits.double() / t, labels))

    lo, hi = math.log(_TEMPERATURE_RANGE[0]), math.log(_TEMPERATURE_RANGE[1])
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(math.exp(a)), nll(math.exp(b))
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(math.exp(b))
    best = math.exp((lo + hi) / 2)
    # T = 1 (no scaling) wins ties, so a model that is already calibrated stays untouched.
    return 1.0 if nll(1.0) <= nll(best) else best


def check_min_confidence(value: float | None) -> None:
    """Fail in one line unless ``value`` is ``None`` or a probability in [0, 1]."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise MetakitError(f"--min-confidence must be a probability between 0 and 1, got {value!r}.")


# --------------------------------------------------------------------------------------------
# Loading a run


def load(
    run_dir: str | os.PathLike,
    checkpoint: str = "best",
    calibrate: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> FewShotModel:
    """A run directory's trained learner as a :class:`FewShotModel`, ready for :meth:`~FewShotModel.fit`.

    Args:
        run_dir: a directory written by ``metakit train`` (its ``config.yaml`` and checkpoint).
        checkpoint: ``"best"`` (best validation) or ``"last"``.
        calibrate: fit a softmax temperature on the run's validation episodes (by NLL) so that
            probabilities, and ``min_confidence``, mean what they say.
        batch_size: query items per forward pass.
        progress: show a progress bar while labelling many items.

    Raises:
        MetakitError: not a run directory, no such checkpoint, weights that do not fit the
            config, or a run that is not classification.
    """
    from metakit.episodes import FixedEpisodes
    from metakit.experiment import build_experiment
    from metakit.runs import load_run_config, load_weights

    config = load_run_config(run_dir)
    # The weights first: a run without a checkpoint fails before its dataset is loaded.
    state = load_weights(run_dir, checkpoint)
    exp = build_experiment(config)
    if exp.task.task_type != "classification":
        raise MetakitError(
            f"{run_dir} is a {exp.task.task_type} run ({config.dataset.name}); metakit predict labels items with "
            f"classes, so give it a classification run."
        )
    try:
        exp.learner.load_state_dict(state)
    except RuntimeError:
        raise MetakitError(
            f"the weights in {run_dir} do not fit the model its config.yaml builds; restore the config or retrain."
        ) from None
    # Trained on a frozen encoder's cached features: the model takes the dataset's images.
    shape = exp.task.input_shape if exp.features is None else exp.features.image_shape or exp.task.input_shape
    model = FewShotModel(
        exp.learner, input_spec(config, shape), batch_size=batch_size, progress=progress, name=str(run_dir)
    )
    model.config = config
    if calibrate:
        ev = config.eval
        # The episodes training validated on (its seed + 1), so nothing from the test split is used.
        model.calibrate(FixedEpisodes(exp.val_source(), ev.val_episodes, ev.seed + 1))
    if exp.features is not None:
        exp.features.attach_encoder(exp.learner)  # after calibration, whose episodes hold cached vectors
    return model


# --------------------------------------------------------------------------------------------
# Output rows


def prediction_rows(items: Sequence[str], predictions: Sequence[Prediction], column: str, k: int) -> list[dict[str, Any]]:
    """One row per item: ``column`` (``file`` or ``text``), ``label``, ``probability``, then the
    2nd..k-th labels and probabilities (``label_2``, ``probability_2``, ...)."""
    rows = []
    for item, p in zip(items, predictions):
        row: dict[str, Any] = {column: item, "label": p.label, "probability": round(p.probability, 6)}
        for rank, (label, prob) in enumerate(p.top[1:k], 2):
            row[f"label_{rank}"] = label
            row[f"probability_{rank}"] = round(prob, 6)
        rows.append(row)
    return rows


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` as CSV (header from the first row) atomically."""
    from metakit.utils import write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())
