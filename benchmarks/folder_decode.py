"""How fast ``dataset.name: folder`` turns a folder of images into tensors, cold and cached.

Exports the Omniglot background set (the official zip, 19,280 PNGs of 105x105 in 964 character
folders under 30 alphabets) to ``OUT/<alphabet>/<character>/<file>.png``, then loads it with
``load_folder(groups=True, image_size=28, channels=1, invert=True)`` -- the options
``image_options_for("omniglot")`` gives -- three times, each in a fresh process-local cache:

* cold, 1 decoding thread;
* cold, the default thread count;
* cached: the same load again (hashes every file's bytes, then memory-maps the decoded array).

It prints images/s for each and checks that the folder's tensors equal the Omniglot loader's.

    python benchmarks/folder_decode.py [--zip ../shared/data/omniglot/images_background.zip] [--out /tmp/omniglot-png]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from metakit.datasets.folder import _threads, load_folder
from metakit.datasets.omniglot import load_omniglot

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ZIP = REPO.parent / "shared" / "data" / "omniglot" / "images_background.zip"


def export(zip_path: Path, out: Path) -> int:
    """Write the zip's PNGs as ``out/<alphabet>/<character>/<file>.png``; reuse a complete export."""
    with zipfile.ZipFile(zip_path) as zf:
        members = [m for m in zf.namelist() if m.endswith(".png") and not m.startswith("__MACOSX")]
        if out.is_dir() and sum(1 for _ in out.glob("*/*/*.png")) == len(members):
            return len(members)
        for m in members:
            alphabet, character, name = m.split("/")[-3:]
            dest = out / alphabet / character / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(m))
    return len(members)


def timed_load(root: Path, cache: Path, workers: int | None) -> tuple[float, torch.Tensor, list[str]]:
    os.environ["METAKIT_CACHE"] = str(cache)
    start = time.perf_counter()
    ds = load_folder(root, image_size=28, channels=1, invert=True, groups=True, workers=workers)
    return time.perf_counter() - start, ds.inputs, ds.class_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", type=Path, default=DEFAULT_ZIP, help="Omniglot images_background.zip")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "metakit-omniglot-png")
    args = parser.parse_args()
    n = export(args.zip, args.out)
    default = _threads(None)
    with tempfile.TemporaryDirectory() as tmp:
        one, images, names = timed_load(args.out, Path(tmp, "a"), 1)
        many, _, _ = timed_load(args.out, Path(tmp, "b"), None)
        cached, again, _ = timed_load(args.out, Path(tmp, "b"), None)
        os.environ["METAKIT_CACHE"] = str(Path(tmp, "omniglot"))
        reference = load_omniglot(args.zip, image_size=28, download=False)
    same = torch.equal(images, reference.inputs) and names == reference.class_names and torch.equal(again, images)
    print(f"{n:,} Omniglot PNGs (105x105 -> 28x28, 1 channel, inverted) in {args.out}; {os.cpu_count()} CPUs")
    print(f"{'load':<34} {'seconds':>8} {'images/s':>10}")
    for label, secs in (("cold, 1 thread", one), (f"cold, default ({default} threads)", many), ("cached (second load)", cached)):
        print(f"{label:<34} {secs:>8.2f} {n / secs:>10,.0f}")
    print(f"tensors identical to load_omniglot: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
