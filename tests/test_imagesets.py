"""miniImageNet, tieredImageNet, CIFAR-FS, FC100 and CUB loaders on tiny fixtures in the real layouts.

None of these datasets can be downloaded here, so every test writes a few 8x8 (or so) images in
the exact published layout (file names, pickle keys, CSV headers, split files, archive paths)
under ``tmp_path`` and loads them through ``root=``, the environment variable or the cache. The
download path is exercised with a faked ``urllib.request.urlopen`` serving a generated archive.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metakit.datasets import get_dataset, load_splits
from metakit.datasets import cifarfs, cub, fc100, imagesets, miniimagenet, tieredimagenet
from metakit.datasets.cifarfs import BERTINETTO_SPLIT, CIFAR100_FINE, CIFAR100_SUPERCLASSES, load_cifarfs
from metakit.datasets.cub import cub_split_of, load_cub
from metakit.datasets.fc100 import FC100_SUPERCLASS_SPLIT, load_fc100
from metakit.datasets.imagesets import ImageSetDataset, load_pickle
from metakit.datasets.miniimagenet import RAVI_SPLIT, load_miniimagenet
from metakit.datasets.tieredimagenet import load_tieredimagenet
from metakit.errors import MetakitError

ENV_VARS = ("METAKIT_MINIIMAGENET", "METAKIT_TIEREDIMAGENET", "METAKIT_CIFARFS", "METAKIT_FC100", "METAKIT_CUB")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Own cache, no dataset environment variables, online, and no network access at all."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("METAKIT_CACHE", str(cache))
    for var in (*ENV_VARS, "METAKIT_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return cache


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def pixel(cls: int, item: int, size: int = 8) -> np.ndarray:
    """A distinct uint8 HWC image per (class, item): the pixel values encode both."""
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[..., 0] = 20 + 30 * cls
    img[..., 1] = 10 + 40 * item
    img[..., 2] = np.arange(size, dtype=np.uint8)[None, :] * 7
    return img


def encode(img: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def dump(obj: object, path: Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def names_of(part: object) -> list[str]:
    return list(part.class_names)  # type: ignore[attr-defined]


class Evil:
    """Unpickling this would run a shell command; the loaders must refuse it."""

    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > /dev/null",))


# --------------------------------------------------------------------------------------------
# Embedded split lists


def test_embedded_split_lists_are_the_published_sizes() -> None:
    assert [len(RAVI_SPLIT[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert len({w for ws in RAVI_SPLIT.values() for w in ws}) == 100
    assert len(CIFAR100_FINE) == 100 and len(CIFAR100_SUPERCLASSES) == 20
    assert [len(BERTINETTO_SPLIT[s]) for s in ("train", "val", "test")] == [64, 16, 20]
    assert {c for cs in BERTINETTO_SPLIT.values() for c in cs} == set(CIFAR100_FINE)
    assert [len(FC100_SUPERCLASS_SPLIT[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert {c for cs in FC100_SUPERCLASS_SPLIT.values() for c in cs} == set(CIFAR100_SUPERCLASSES)
    counts = {s: sum(cub_split_of(i) == s for i in range(1, 201)) for s in ("train", "val", "test")}
    assert counts == {"train": 100, "val": 50, "test": 50}
    # Spot checks against torchmeta's CUB assets: 001 train, 002 val, 004 test, 200 test.
    assert [cub_split_of(i) for i in (1, 2, 3, 4, 200)] == ["train", "val", "train", "test", "test"]


def test_registry_entries() -> None:
    for name in ("miniimagenet", "tieredimagenet", "cifarfs", "fc100", "cub"):
        spec = get_dataset(name)
        assert "published" in spec.splits
        assert callable(spec.resolve("loader")) and callable(spec.resolve("splitter"))
        line = spec.resolve("status")()
        assert "\n" not in line and line


# --------------------------------------------------------------------------------------------
# miniImageNet

MINI = {"train": ["n01532829", "n01558993"], "val": ["n01855672", "n02091244"], "test": ["n01930112", "n01981276"]}
MINI_ITEMS = 3


def mini_images() -> dict[str, list[np.ndarray]]:
    out, c = {}, 0
    for split in ("train", "val", "test"):
        for wnid in MINI[split]:
            out[wnid] = [pixel(c, i) for i in range(MINI_ITEMS)]
            c += 1
    return out


def write_mini_pickles(folder: Path, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    images = mini_images()
    for split in ("train", "val", "test"):
        rows, class_dict = [], {}
        # Interleave the classes' rows, as class_dict (not order) defines membership.
        for i in range(MINI_ITEMS):
            for wnid in MINI[split]:
                class_dict.setdefault(wnid, []).append(len(rows))
                rows.append(images[wnid][i])
        blob = {"image_data": np.stack(rows), "class_dict": class_dict}
        dump(blob, folder / f"mini-imagenet-cache-{split}.pkl", protocol)
    return folder


def write_mini_csv(folder: Path) -> Path:
    images = mini_images()
    (folder / "images").mkdir(parents=True)
    for split in ("train", "val", "test"):
        lines = ["filename,label"]
        for wnid in MINI[split]:
            for i, img in enumerate(images[wnid]):
                name = f"{wnid}{i + 1:08d}.jpg"
                (folder / "images" / name).write_bytes(encode(img, "JPEG"))
                lines.append(f"{name},{wnid}")
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_miniimagenet_pickles_via_root(tmp_path: Path) -> None:
    root = write_mini_pickles(tmp_path / "mini", protocol=2)
    ds = load_miniimagenet(root, image_size=8)
    assert isinstance(ds, ImageSetDataset)
    assert ds.class_names == MINI["train"] + MINI["val"] + MINI["test"]
    assert ds.class_sizes() == [MINI_ITEMS] * 6
    assert ds.images.shape == (18, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.class_splits == ["train"] * 2 + ["val"] * 2 + ["test"] * 2
    # At the native size the pixels are exactly the source's, moved to channels-first.
    expected = mini_images()["n01855672"]
    got = ds.images[ds.items_of(2)].permute(0, 2, 3, 1).numpy()
    assert sorted(map(bytes, got)) == sorted(map(bytes, expected))
    parts = load_splits("miniimagenet", split="published", root=str(root), image_size=8)
    assert {k: names_of(v) for k, v in parts.items()} == MINI
    assert parts["test"].class_sizes() == [MINI_ITEMS, MINI_ITEMS]


def test_miniimagenet_csv_layout_via_env_var_and_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mini_csv(tmp_path / "data" / "mini-imagenet")
    monkeypatch.setenv("METAKIT_MINIIMAGENET", str(tmp_path / "data"))
    ds = load_miniimagenet(image_size=5)
    assert ds.images.shape == (18, 3, 5, 5)
    assert ds.class_names == MINI["train"] + MINI["val"] + MINI["test"]
    assert ds.class_splits == ["train"] * 2 + ["val"] * 2 + ["test"] * 2
    status = miniimagenet.miniimagenet_status()
    assert "CSVs + images/" in status and "$METAKIT_MINIIMAGENET" in status


def test_miniimagenet_default_size_is_84(tmp_path: Path) -> None:
    ds = load_miniimagenet(write_mini_pickles(tmp_path / "mini"))
    assert ds.image_shape == (3, 84, 84)


def test_miniimagenet_missing_says_what_to_place_where(isolated: Path) -> None:
    with pytest.raises(MetakitError) as exc:
        load_miniimagenet()
    msg = one_line(exc)
    assert "miniImageNet not found" in msg
    assert "mini-imagenet-cache-train.pkl" in msg and "train.csv" in msg
    assert str(isolated / "miniimagenet") in msg and "METAKIT_MINIIMAGENET" in msg
    assert "meta-learning-lstm" in msg
    status = miniimagenet.miniimagenet_status()
    assert status.startswith("not local") and "1.3 GB" in status


def test_miniimagenet_partial_and_bad_root(tmp_path: Path) -> None:
    root = write_mini_pickles(tmp_path / "mini")
    (root / "mini-imagenet-cache-test.pkl").unlink()
    with pytest.raises(MetakitError, match="lacks mini-imagenet-cache-test.pkl") as exc:
        load_miniimagenet(root)
    one_line(exc)
    with pytest.raises(MetakitError, match="does not exist"):
        load_miniimagenet(tmp_path / "nowhere")


@pytest.mark.parametrize("content", [b"not a pickle at all", pickle.dumps(Evil()), pickle.dumps({"images": 1})])
def test_miniimagenet_corrupt_or_hostile_pickle(tmp_path: Path, content: bytes) -> None:
    root = write_mini_pickles(tmp_path / "mini")
    (root / "mini-imagenet-cache-val.pkl").write_bytes(content)
    with pytest.raises(MetakitError, match="mini-imagenet-cache-val.pkl") as exc:
        load_miniimagenet(root, image_size=8)
    one_line(exc)


def test_hostile_pickle_is_refused_without_running(tmp_path: Path) -> None:
    path = dump(Evil(), tmp_path / "evil.pkl")
    with pytest.raises(MetakitError, match="posix.system|os.system|nt.system") as exc:
        load_pickle(path, "test file", "replace it.")
    assert "not plain data" in one_line(exc)


def test_miniimagenet_wrong_split_file_is_refused(tmp_path: Path) -> None:
    root = write_mini_csv(tmp_path / "mini")
    # A val class listed in train.csv: e.g. a Vinyals-split CSV placed by mistake.
    (root / "train.csv").write_text("filename,label\nn0185567200000001.jpg,n01855672\n")
    with pytest.raises(MetakitError, match="Ravi & Larochelle split puts it in val") as exc:
        load_miniimagenet(root, image_size=8)
    one_line(exc)


def test_miniimagenet_csv_with_missing_image(tmp_path: Path) -> None:
    root = write_mini_csv(tmp_path / "mini")
    next((root / "images").glob("n01930112*.jpg")).unlink()
    with pytest.raises(MetakitError, match="does not exist") as exc:
        load_miniimagenet(root, image_size=8)
    one_line(exc)


def test_decoded_cache_is_reused_and_keyed_by_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_mini_pickles(tmp_path / "mini")
    first = load_miniimagenet(root, image_size=8)

    def boom(*args: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(miniimagenet, "_decode_pickles", boom)
    again = load_miniimagenet(root, image_size=8)
    assert torch.equal(first.images, again.images) and again.class_splits == first.class_splits
    write_mini_pickles(root, protocol=2)  # replaced files: a new identity, so it decodes again
    with pytest.raises(AssertionError, match="decoded again"):
        load_miniimagenet(root, image_size=8)


def test_memory_cap_fails_with_one_line(tmp_path: Path) -> None:
    root = write_mini_pickles(tmp_path / "mini")
    with pytest.raises(MetakitError, match="over the .* cap \\(max_memory_gb\\)") as exc:
        load_miniimagenet(root, image_size=8, max_memory_gb=1e-7)
    assert "image_size" in one_line(exc)
    with pytest.raises(MetakitError, match="image_size must be an integer"):
        load_miniimagenet(root, image_size=0)


# --------------------------------------------------------------------------------------------
# tieredImageNet

TIERED = {  # split -> [(class name, category)]
    "train": [("n01530575", "passerine"), ("n01531178", "passerine"), ("n02085620", "hound")],
    "val": [("n01440764", "fish_cat")],
    "test": [("n02100583", "dogs_cat"), ("n02100735", "dogs_cat")],
}
TIERED_ITEMS = 2


def tiered_split(split: str, offset: int) -> tuple[dict, list[np.ndarray]]:
    classes = TIERED[split]
    cats = list(dict.fromkeys(cat for _, cat in classes))
    specific, general, images = [], [], []
    for i in range(TIERED_ITEMS):
        for k, (_, cat) in enumerate(classes):
            specific.append(k)
            general.append(cats.index(cat))
            images.append(pixel(offset + k, i))
    labels = {
        "label_specific": np.array(specific, dtype=np.int32),
        "label_general": np.array(general, dtype=np.int32),
        "label_specific_str": [name for name, _ in classes],
        "label_general_str": cats,
    }
    return labels, images


def write_tiered(folder: Path, form: str = "png", labels_key: str = "ren") -> Path:
    offset = 0
    for split in ("train", "val", "test"):
        labels, images = tiered_split(split, offset)
        offset += len(TIERED[split])
        if labels_key == "metaoptnet":
            labels = {"labels": [int(x) + 100 * offset for x in labels["label_specific"]]}
        dump(labels, folder / f"{split}_labels.pkl", protocol=2)
        if form == "png":
            # Ren et al.'s form: a list of numpy uint8 arrays of PNG bytes (cv2.imencode output).
            dump([np.frombuffer(encode(img), dtype=np.uint8) for img in images], folder / f"{split}_images_png.pkl")
        else:
            # Their decompressed form, written with OpenCV: BGR channel order.
            np.savez(folder / f"{split}_images.npz", images=np.stack(images)[..., ::-1])
    return folder


def test_tieredimagenet_png_pickles(tmp_path: Path) -> None:
    root = write_tiered(tmp_path / "t" / "tiered-imagenet")
    ds = load_tieredimagenet(tmp_path / "t", image_size=8)  # found in the usual subfolder
    names = [n for s in ("train", "val", "test") for n, _ in TIERED[s]]
    assert ds.class_names == names
    assert ds.class_groups == [cat for s in ("train", "val", "test") for _, cat in TIERED[s]]
    assert ds.class_sizes() == [TIERED_ITEMS] * len(names)
    assert ds.class_splits == ["train"] * 3 + ["val"] + ["test"] * 2
    got = ds.images[ds.items_of(3)].permute(0, 2, 3, 1).numpy()  # the val class, colours kept
    assert sorted(map(bytes, got)) == sorted(map(bytes, [pixel(3, i) for i in range(TIERED_ITEMS)]))
    parts = load_splits("tieredimagenet", split="published", root=str(root), image_size=8)
    assert {k: names_of(v) for k, v in parts.items()} == {s: [n for n, _ in TIERED[s]] for s in TIERED}
    groups = load_splits("tieredimagenet", split="group", root=str(root), image_size=8, fractions=(0.5, 0.25, 0.25))
    assert sum(p.num_classes for p in groups.values()) == len(names)


def test_tieredimagenet_npz_is_bgr_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_tiered(tmp_path / "t", form="npz")
    monkeypatch.setenv("METAKIT_TIEREDIMAGENET", str(root))
    ds = load_tieredimagenet(image_size=8)
    first = ds.images[ds.items_of(0)].permute(0, 2, 3, 1).numpy()
    assert sorted(map(bytes, first)) == sorted(map(bytes, [pixel(0, i) for i in range(TIERED_ITEMS)]))
    swapped = load_tieredimagenet(image_size=8, npz_channels="rgb")
    assert torch.equal(swapped.images.flip(1), ds.images)
    assert "npz" in tieredimagenet.tieredimagenet_status()
    with pytest.raises(MetakitError, match="npz_channels"):
        load_tieredimagenet(image_size=8, npz_channels="hsv")


def test_tieredimagenet_metaoptnet_labels_and_resizing(tmp_path: Path) -> None:
    root = write_tiered(tmp_path / "t", form="npz", labels_key="metaoptnet")
    ds = load_tieredimagenet(root, image_size=4)
    assert ds.images.shape == (12, 3, 4, 4)
    assert ds.class_groups is None and ds.num_classes == 6
    assert ds.class_splits == ["train"] * 3 + ["val"] + ["test"] * 2
    assert all(name.startswith(split + "/") for name, split in zip(ds.class_names, ds.class_splits))


def test_tieredimagenet_missing_partial_corrupt_and_memory(tmp_path: Path, isolated: Path) -> None:
    with pytest.raises(MetakitError, match="tieredImageNet not found") as exc:
        load_tieredimagenet()
    msg = one_line(exc)
    assert "train_images_png.pkl" in msg and str(isolated / "tieredimagenet") in msg and "16.5 GB" in msg
    root = write_tiered(tmp_path / "t")
    with pytest.raises(MetakitError, match="needs .* for 12 images") as exc:
        load_tieredimagenet(root, image_size=8, max_memory_gb=1e-7)
    one_line(exc)
    (root / "val_images_png.pkl").write_bytes(pickle.dumps([np.frombuffer(b"garbage", dtype=np.uint8)] * TIERED_ITEMS))
    with pytest.raises(MetakitError, match="cannot be decoded") as exc:
        load_tieredimagenet(root, image_size=8)
    one_line(exc)
    (root / "val_images_png.pkl").write_bytes(pickle.dumps([]))
    with pytest.raises(MetakitError, match="holds 0 items"):
        load_tieredimagenet(root, image_size=8)
    (root / "test_labels.pkl").unlink()
    with pytest.raises(MetakitError, match="lacks test_labels.pkl") as exc:
        load_tieredimagenet(root, image_size=8)
    one_line(exc)


# --------------------------------------------------------------------------------------------
# CIFAR-100, CIFAR-FS, FC100

# fine class -> (train items, test items); classes from every CIFAR-FS and FC100 split.
CIFAR_CLASSES = {"apple": (2, 1), "dolphin": (2, 1), "beaver": (2, 1), "otter": (2, 1), "whale": (2, 1),
                 "rose": (2, 1), "bear": (2, 1), "ray": (2, 1)}


def cifar100_blobs() -> dict[str, dict]:
    coarse_names = list(CIFAR100_SUPERCLASSES)
    fine_to_coarse = {c: coarse_names.index(s) for s, cs in CIFAR100_SUPERCLASSES.items() for c in cs}
    blobs = {}
    for part, which in (("train", 0), ("test", 1)):
        rows, fine, coarse = [], [], []
        for name, counts in CIFAR_CLASSES.items():
            label = CIFAR100_FINE.index(name)
            for i in range(counts[which]):
                rows.append(pixel(label % 8, i + 3 * which, 32).transpose(2, 0, 1).reshape(-1))
                fine.append(label)
                coarse.append(fine_to_coarse[name])
        blobs[part] = {
            "data": np.stack(rows), "fine_labels": fine, "coarse_labels": coarse, "filenames": ["x.png"] * len(rows)
        }
    # Python 2 pickles read with latin1 give str keys; bytes keys (encoding="bytes") must work too.
    blobs["meta"] = {b"fine_label_names": list(CIFAR100_FINE), b"coarse_label_names": coarse_names}
    return blobs


def cifar100_tarball_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for member, blob in cifar100_blobs().items():
            data = pickle.dumps(blob, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{member}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_cifar100_dir(folder: Path) -> Path:
    for member, blob in cifar100_blobs().items():
        dump(blob, folder / "cifar-100-python" / member, protocol=2)
    return folder


def expected_split(names: list[str], split_of: Callable[[str], str]) -> dict[str, list[str]]:
    return {s: sorted(n for n in names if split_of(n) == s) for s in ("train", "val", "test")}


def bertinetto(name: str) -> str:
    return next(s for s, cs in BERTINETTO_SPLIT.items() if name in cs)


def fc100_split(name: str) -> str:
    coarse = next(s for s, cs in CIFAR100_SUPERCLASSES.items() if name in cs)
    return next(s for s, cs in FC100_SUPERCLASS_SPLIT.items() if coarse in cs)


def test_cifarfs_from_official_tarball_via_root(tmp_path: Path) -> None:
    tarball = tmp_path / "dl" / "cifar-100-python.tar.gz"
    tarball.parent.mkdir()
    tarball.write_bytes(cifar100_tarball_bytes())
    ds = load_cifarfs(tarball)
    split = expected_split(list(CIFAR_CLASSES), bertinetto)
    assert ds.class_names == split["train"] + split["val"] + split["test"]
    assert ds.class_sizes() == [3] * len(CIFAR_CLASSES)  # the official train and test sets together
    assert ds.images.shape == (3 * len(CIFAR_CLASSES), 3, 32, 32)
    assert ds.class_groups[ds.class_names.index("dolphin")] == "aquatic_mammals"
    blobs = cifar100_blobs()
    k = ds.class_names.index("rose")
    rose_rows = [r for r, f in zip(blobs["train"]["data"], blobs["train"]["fine_labels"]) if CIFAR100_FINE[f] == "rose"]
    got = ds.images[ds.items_of(k)].reshape(3, -1).numpy()
    assert {bytes(r) for r in rose_rows} <= {bytes(r) for r in got}  # pixels exactly as stored
    parts = load_splits("cifarfs", split="published", root=str(tmp_path / "dl"))
    assert {k: names_of(v) for k, v in parts.items()} == split
    assert load_cifarfs(tarball, image_size=16).image_shape == (3, 16, 16)


def test_fc100_from_extracted_dir_via_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAKIT_FC100", str(write_cifar100_dir(tmp_path / "c")))
    ds = load_fc100()
    split = expected_split(list(CIFAR_CLASSES), fc100_split)
    assert ds.class_names == split["train"] + split["val"] + split["test"]
    assert split == {
        "train": ["apple", "ray", "rose"], "val": ["bear"], "test": ["beaver", "dolphin", "otter", "whale"]
    }
    parts = load_splits("fc100", split="published")
    assert {k: names_of(v) for k, v in parts.items()} == split
    assert {g for p in ("train",) for g in parts[p].class_groups} == {"fruit_and_vegetables", "fish", "flowers"}
    assert "CIFAR-100 python files" in fc100.fc100_status()


def metaoptnet_pickles(folder: Path, prefix: str, split_of: Callable[[str], str], wrong: str | None = None) -> Path:
    for split in ("train", "val", "test"):
        rows, labels = [], []
        for name in CIFAR_CLASSES:
            if split_of(name) == split or name == wrong and split == "train":
                for i in range(3):
                    rows.append(pixel(CIFAR100_FINE.index(name) % 8, i, 32))
                    labels.append(CIFAR100_FINE.index(name))
        dump({"data": np.stack(rows), "labels": labels}, folder / f"{prefix}_{split}.pickle", protocol=2)
    return folder


def test_metaoptnet_pickles_for_cifarfs_and_fc100(tmp_path: Path) -> None:
    ds = load_cifarfs(metaoptnet_pickles(tmp_path / "cfs", "CIFAR_FS", bertinetto))
    assert ds.class_splits == [bertinetto(n) for n in ds.class_names]
    assert ds.class_sizes() == [3] * len(CIFAR_CLASSES)
    ds = load_fc100(metaoptnet_pickles(tmp_path / "fc", "FC100", fc100_split))
    assert ds.class_splits == [fc100_split(n) for n in ds.class_names]
    with pytest.raises(MetakitError, match="Bertinetto et al. split puts it in val") as exc:
        load_cifarfs(metaoptnet_pickles(tmp_path / "bad", "CIFAR_FS", bertinetto, wrong="beaver"))
    one_line(exc)


def test_cifarfs_r2d2_folder_layout(tmp_path: Path) -> None:
    base = tmp_path / "cifarfs" / "cifar100"
    split = expected_split(list(CIFAR_CLASSES), bertinetto)
    for s, names in split.items():
        (base / "splits" / "bertinetto").mkdir(parents=True, exist_ok=True)
        (base / "splits" / "bertinetto" / f"{s}.txt").write_text("\n".join(names) + "\n")
        for name in names:
            (base / "data" / name).mkdir(parents=True)
            for i in range(2):
                (base / "data" / name / f"{name}_{i}.png").write_bytes(encode(pixel(len(name) % 8, i, 32)))
    ds = load_cifarfs(tmp_path / "cifarfs")
    assert ds.class_names == split["train"] + split["val"] + split["test"]
    assert ds.class_sizes() == [2] * len(CIFAR_CLASSES)
    assert ds.class_groups[ds.class_names.index("whale")] == "aquatic_mammals"
    (base / "splits" / "bertinetto" / "val.txt").write_text("whale\n")  # a test class listed as val
    with pytest.raises(MetakitError, match="puts it in test"):
        load_cifarfs(base)


def serve(monkeypatch: pytest.MonkeyPatch, data: bytes) -> list[str]:
    requested: list[str] = []

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(data))}

    def urlopen(req: urllib.request.Request, timeout: float | None = None) -> Response:
        requested.append(req.full_url)
        return Response(data)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def test_cifar100_download_verified_and_shared(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = cifar100_tarball_bytes()
    monkeypatch.setattr(cifarfs, "CIFAR100_SHA256", hashlib.sha256(data).hexdigest())
    requested = serve(monkeypatch, data)
    ds = load_cifarfs()
    assert requested == [cifarfs.CIFAR100_URL]
    assert (isolated / "cifar100" / "cifar-100-python.tar.gz").read_bytes() == data
    assert ds.num_classes == len(CIFAR_CLASSES)
    fc = load_fc100()  # the same archive from the cache: verified again, not downloaded again
    assert requested == [cifarfs.CIFAR100_URL] and fc.num_classes == len(CIFAR_CLASSES)
    assert "CIFAR-100 archive" in cifarfs.cifarfs_status() and "(cache)" in cifarfs.cifarfs_status()


def test_cifar100_checksum_mismatch_leaves_nothing(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve(monkeypatch, cifar100_tarball_bytes())  # not the official bytes: the real sha256 fails
    with pytest.raises(MetakitError, match="checksum mismatch") as exc:
        load_cifarfs()
    assert cifarfs.CIFAR100_URL in one_line(exc)
    folder = isolated / "cifar100"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_cifar_missing_without_download_and_offline(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MetakitError, match="CIFAR-FS not found") as exc:
        load_cifarfs(download=False)
    msg = one_line(exc)
    assert "cifar-100-python.tar.gz" in msg and str(isolated / "cifar100") in msg and cifarfs.CIFAR100_URL in msg
    assert "METAKIT_CIFARFS" in msg
    monkeypatch.setenv("METAKIT_OFFLINE", "1")
    with pytest.raises(MetakitError, match="METAKIT_OFFLINE") as exc:
        load_fc100()
    one_line(exc)
    assert cifarfs.cifarfs_status().startswith("not local (first use downloads")


def test_cifar_corrupt_archives(tmp_path: Path) -> None:
    bad = tmp_path / "bad" / "cifar-100-python.tar.gz"
    bad.parent.mkdir()
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(MetakitError, match="not a tar archive") as exc:
        load_cifarfs(bad)
    one_line(exc)
    whole = cifar100_tarball_bytes()
    bad.write_bytes(whole[: len(whole) // 2])  # truncated download
    with pytest.raises(MetakitError, match="CIFAR-FS") as exc:
        load_cifarfs(bad.parent)
    one_line(exc)
    write_tar(bad, {"cifar-100-python/meta": pickle.dumps({"fine_label_names": ["x"]})})
    with pytest.raises(MetakitError, match="holds no cifar-100-python/train, test|fine label names") as exc:
        load_fc100(bad)
    one_line(exc)
    partial = tmp_path / "p" / "cifar-100-python"
    partial.mkdir(parents=True)
    (partial / "meta").write_bytes(b"")
    with pytest.raises(MetakitError, match="lacks train, test"):
        load_fc100(partial.parent)


# --------------------------------------------------------------------------------------------
# CUB-200-2011

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross",
               "004.Groove_billed_Ani", "005.Crested_Auklet", "006.Least_Auklet"]
CUB_ITEMS = 2


def cub_files() -> dict[str, bytes]:
    files, classes, images, labels = {}, [], [], []
    image_id = 1
    for k, cls in enumerate(CUB_CLASSES, 1):
        classes.append(f"{k} {cls}")
        for i in range(CUB_ITEMS):
            rel = f"{cls}/{cls.split('.', 1)[1]}_{i:04d}_{image_id}.jpg"
            # Non-square photos of varying size, like the real ones.
            img = np.repeat(np.repeat(pixel(k, i, 8), 2, axis=0), 3, axis=1)[: 14 + i, :]
            files[f"CUB_200_2011/images/{rel}"] = encode(img, "JPEG")
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {k}")
            image_id += 1
    files["CUB_200_2011/classes.txt"] = ("\n".join(classes) + "\n").encode()
    files["CUB_200_2011/images.txt"] = ("\n".join(images) + "\n").encode()
    files["CUB_200_2011/image_class_labels.txt"] = ("\n".join(labels) + "\n").encode()
    files["attributes.txt"] = b"1 has_bill_shape::curved\n"
    return files


def write_cub_dir(base: Path) -> Path:
    for name, data in cub_files().items():
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_bytes(data)
    return base / "CUB_200_2011"


def cub_tgz_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        # The metadata after the images, to exercise the single streaming pass.
        for name, data in sorted(cub_files().items(), key=lambda kv: kv[0].endswith(".txt")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


CUB_SPLIT = {"train": [CUB_CLASSES[0], CUB_CLASSES[2], CUB_CLASSES[4]], "val": [CUB_CLASSES[1], CUB_CLASSES[5]],
             "test": [CUB_CLASSES[3]]}


def test_cub_folder_via_root_and_archive_via_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = write_cub_dir(tmp_path / "extracted")
    ds = load_cub(tmp_path / "extracted", image_size=8)
    assert ds.class_names == CUB_CLASSES and ds.class_groups is None
    assert ds.class_sizes() == [CUB_ITEMS] * 6 and ds.images.shape == (12, 3, 8, 8)
    assert ds.class_splits == ["train", "val", "train", "test", "train", "val"]
    parts = load_splits("cub", split="published", root=str(folder), image_size=8)
    assert {k: names_of(v) for k, v in parts.items()} == CUB_SPLIT
    archive = tmp_path / "a" / "CUB_200_2011.tgz"
    archive.parent.mkdir()
    archive.write_bytes(cub_tgz_bytes())
    monkeypatch.setenv("METAKIT_CUB", str(archive.parent))
    from_tgz = load_cub(image_size=8)
    assert from_tgz.class_names == CUB_CLASSES
    assert torch.equal(from_tgz.images, ds.images) and torch.equal(from_tgz.labels, ds.labels)
    assert "archive" in cub.cub_status() and "$METAKIT_CUB" in cub.cub_status()
    assert load_cub(image_size=84).image_shape == (3, 84, 84)


def test_cub_download(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = cub_tgz_bytes()
    monkeypatch.setattr(cub, "CUB_SHA256", hashlib.sha256(data).hexdigest())
    requested = serve(monkeypatch, data)
    ds = load_cub(image_size=8)
    assert requested == [cub.CUB_URL] and ds.num_classes == 6
    assert (isolated / "cub" / "CUB_200_2011.tgz").read_bytes() == data
    assert load_cub(image_size=6).image_shape == (3, 6, 6) and requested == [cub.CUB_URL]


def test_cub_missing_partial_and_inconsistent(tmp_path: Path, isolated: Path) -> None:
    with pytest.raises(MetakitError, match="CUB-200-2011 not found") as exc:
        load_cub(download=False)
    msg = one_line(exc)
    assert "CUB_200_2011.tgz" in msg and str(isolated / "cub") in msg and "data.caltech.edu" in msg
    folder = write_cub_dir(tmp_path / "x")
    labels = (folder / "image_class_labels.txt").read_text().replace("1 1\n", "1 2\n", 1)
    (folder / "image_class_labels.txt").write_text(labels)
    with pytest.raises(MetakitError, match="does not match its class") as exc:
        load_cub(folder, image_size=8)
    one_line(exc)
    (folder / "images.txt").unlink()
    with pytest.raises(MetakitError, match="lacks images.txt") as exc:
        load_cub(folder, image_size=8)
    one_line(exc)
    bad = tmp_path / "y" / "CUB_200_2011"
    write_cub_dir(tmp_path / "y")
    victim = next((bad / "images").rglob("*.jpg"))
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(MetakitError, match="cannot decode") as exc:
        load_cub(bad, image_size=8)
    one_line(exc)
    victim.unlink()
    with pytest.raises(MetakitError, match="lists 1 image\\(s\\) that are not there"):
        load_cub(bad, image_size=8)


# --------------------------------------------------------------------------------------------
# Shared machinery


def test_published_splits_requires_recorded_splits() -> None:
    plain = ImageSetDataset("x", torch.zeros(2, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"])
    with pytest.raises(MetakitError, match="records no published split"):
        imagesets.published_splits(plain, "published")
    with pytest.raises(MetakitError, match="unknown split"):
        imagesets.published_splits(plain, "vinyals")
    with pytest.raises(MetakitError, match="one published split per class"):
        ImageSetDataset(
            "x", torch.zeros(2, 3, 2, 2, dtype=torch.uint8), torch.tensor([0, 1]), ["a", "b"], class_splits=["train"]
        )


def test_unreadable_decoded_cache_is_rebuilt(tmp_path: Path, isolated: Path) -> None:
    root = write_mini_pickles(tmp_path / "mini")
    first = load_miniimagenet(root, image_size=8)
    (cached,) = (isolated / "miniimagenet" / "decoded").glob("*.npz")
    cached.write_bytes(b"truncated")
    again = load_miniimagenet(root, image_size=8)
    assert torch.equal(first.images, again.images)
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no temporary files left


def test_complete_layout_in_subfolder_beats_partial_one_at_root(tmp_path: Path) -> None:
    write_mini_csv(tmp_path / "data" / "mini-imagenet")
    (tmp_path / "data" / "images").mkdir()
    (tmp_path / "data" / "train.csv").write_text("filename,label\n")  # unrelated, incomplete
    assert load_miniimagenet(tmp_path / "data", image_size=4).num_classes == 6
    (tmp_path / "data" / "mini-imagenet" / "val.csv").unlink()
    with pytest.raises(MetakitError, match="lacks val.csv, test.csv") as exc:
        load_miniimagenet(tmp_path / "data", image_size=4)
    one_line(exc)


def test_numpy1_pickles_load(tmp_path: Path) -> None:
    """Pickles made with NumPy 1 (all real releases) name numpy.core, which NumPy 2 renamed."""
    blob = pickle.dumps({"data": np.arange(6, dtype=np.uint8).reshape(2, 3)}, protocol=2)
    if b"numpy._core" in blob:
        blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp_path / "old.pkl"
    path.write_bytes(blob)
    assert load_pickle(path, "old file", "replace it.")["data"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_truncated_archives_fail_alike(tmp_path: Path) -> None:
    # CUB and CIFAR-100 archives are read by one streaming reader; damage (found by tar, or by
    # the pickle being read from it) is one line naming the archive and the official file.
    for name, data, load in (
        ("CUB_200_2011.tgz", cub_tgz_bytes(), lambda p: load_cub(p, image_size=8)),
        ("cifar-100-python.tar.gz", cifar100_tarball_bytes(), load_cifarfs),
    ):
        archive = tmp_path / name
        archive.write_bytes(data[: len(data) // 2])
        with pytest.raises(MetakitError, match="is not a readable (tar.gz|pickle)") as exc:
            load(archive)
        msg = one_line(exc)
        assert str(archive) in msg and "replace it with the official" in msg and "downloaded again" not in msg
