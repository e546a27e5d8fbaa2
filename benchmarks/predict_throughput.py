"""How many Omniglot-size query images ``metakit predict`` labels per second after adaptation.

Setup: 28x28 grayscale PNG files of random pen strokes (dark ink on white, as Omniglot's and the
exported Glyphs files are, so they go through the same inversion and box filter as a Glyphs or
Omniglot run's inputs), a 5-way 5-shot support folder and ``--queries`` query files. Each learner
is built as its Omniglot config builds it (Conv-4, 64 channels, 1x28x28 inputs); the weights do
not change the cost, so they are left untrained. Timed with ``--threads`` torch threads (and as
many PNG-decoding threads, the number of CPU cores this process may use):

- ``decode``: PNG files -> the prepared float tensor (``FewShotModel.prepare``), Pillow's work;
- ``model``: prepared tensor -> labels (``FewShotModel.predict`` on the tensor), the network's;
- ``end-to-end``: files -> labels (``FewShotModel.predict_files``), decoding batch by batch as
  ``metakit predict`` does; the number to quote;
- ``adapt``: ``fit_folder`` on the support folder (decode + ``Learner.adapt``), once per task.

Each figure is the median of ``--repeats`` runs after one warm-up run, given two ways: wall-clock
images per second, and images per second of CPU time scaled to ``--threads`` cores (``n / CPU
seconds x threads``), which is what the process would do with those cores to itself: on a machine
shared with other jobs (the load average is printed) the wall-clock figure is lower by the share
the others take. The process start and loading a run (``metakit.load``: config, weights,
dataset) are not included; they happen once per command.

Run::

    python benchmarks/predict_throughput.py                      # protonet and maml, 2 threads
    python benchmarks/predict_throughput.py --learners protonet matching relation --queries 10000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from metakit.backbones import build_backbone
from metakit.datasets.folder import ImageOptions
from metakit.learners import TaskInfo, build_learner
from metakit.predict import DEFAULT_BATCH_SIZE, FewShotModel, InputSpec, list_images

SIZE = 28


def strokes(rng: np.random.Generator, size: int = SIZE) -> Image.Image:
    """A white image with 2-4 random dark pen strokes (an Omniglot-like drawing)."""
    im = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(im)
    for _ in range(rng.integers(2, 5)):
        points = [tuple(p) for p in rng.integers(3, size - 3, size=(rng.integers(2, 5), 2)).tolist()]
        draw.line(points, fill=0, width=int(rng.integers(1, 3)))
    return im


def write_images(root: Path, ways: int, shots: int, queries: int, seed: int = 0) -> tuple[Path, Path]:
    """``root/support/<class>/<k>.png`` and ``root/query/<i>.png``."""
    rng = np.random.default_rng(seed)
    for c in range(ways):
        folder = root / "support" / f"class{c}"
        folder.mkdir(parents=True)
        for k in range(shots):
            strokes(rng).save(folder / f"{k}.png")
    (root / "query").mkdir()
    for i in range(queries):
        strokes(rng).save(root / "query" / f"{i:06d}.png")
    return root / "support", root / "query"


def model_for(learner: str, batch_size: int) -> FewShotModel:
    """``learner`` on a Conv-4 over 1x28x28 images, wrapped as ``metakit.load`` wraps a Glyphs run."""
    shape = (1, SIZE, SIZE)
    task = TaskInfo("classification", shape, 5, num_classes=640, max_ways=5)
    built = build_learner(learner, build_backbone("conv4", shape), task)
    spec = InputSpec("image", shape, "glyphs", image_options=ImageOptions(SIZE, 1, invert=True, resample="box"))
    return FewShotModel(built, spec, batch_size=batch_size)


def timed(fn, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    """Median wall-clock and CPU seconds (all threads) of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    """Print one table row per learner: items/s for decode, model and end to end, and adaptation time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learners", nargs="+", default=["protonet", "maml"])
    parser.add_argument("--queries", type=int, default=5000, help="query images (default 5000)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        support, query = write_images(Path(tmp), ways=5, shots=5, queries=args.queries)
        files = list_images(query)
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(f"{len(files)} query PNGs of {SIZE}x{SIZE}, 5-way 5-shot support, {args.threads} torch thread(s), "
              f"batch {args.batch_size}, {os.cpu_count()} CPUs (load average {load}), torch {torch.__version__}, "
              f"Python {sys.version.split()[0]}")
        print("img/s: wall-clock / per CPU time x threads (the rate with the cores to itself)")
        print()
        print("| learner | decode (img/s) | model (img/s) | end-to-end (img/s) | adapt (ms) |")
        print("|---|---|---|---|---|")
        n = len(files)

        def rate(times: tuple[float, float]) -> str:
            wall, cpu = times
            return f"{n / wall:,.0f} / {n / cpu * args.threads:,.0f}"

        for name in args.learners:
            model = model_for(name, args.batch_size)
            adapt, _ = timed(lambda: model.fit_folder(support), args.repeats)
            x = model.prepare(files)
            decode = timed(lambda: model.prepare(files), args.repeats)
            infer = timed(lambda: model.predict(x), args.repeats)
            end = timed(lambda: model.predict_files(files), args.repeats)
            print(f"| {name} | {rate(decode)} | {rate(infer)} | {rate(end)} | {1000 * adapt:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
