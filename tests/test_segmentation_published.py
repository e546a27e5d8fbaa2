"""PASCAL-5i and COCO-20i loaders (#22) on tiny files written in the real formats.

VOC: RGB JPEGs, palette-mode ``SegmentationClassAug`` PNGs (0 background, 1..20, 255 boundary),
``ImageSets/Segmentation`` lists. COCO: an ``instances_*.json`` with polygons, an uncompressed
run-length crowd mask and a compressed (string) one, encoded here as pycocotools encodes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metakit.errors import MetakitError
from metakit.segmentation.published import (
    coco_fold_classes, decode_rle, load_coco20i, load_pascal5i, pascal_fold_classes,
)


def test_published_folds() -> None:
    assert pascal_fold_classes(0)[1] == [1, 2, 3, 4, 5]
    assert pascal_fold_classes(3)[1] == [16, 17, 18, 19, 20]
    train, test = coco_fold_classes(1)
    assert test[:3] == [1, 5, 9] and len(test) == 20 and len(train) == 60 and not set(train) & set(test)
    # Every class is tested in exactly one fold (HSNet's class_ids_val = fold + 4 * v).
    assert sorted(c for f in range(4) for c in coco_fold_classes(f)[1]) == list(range(80))
    with pytest.raises(MetakitError, match="fold must be 0, 1, 2 or 3"):
        pascal_fold_classes(4)


def _voc(root: Path) -> None:
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    palette = [0] * 768
    palette[3:6] = [128, 0, 0]
    rng = np.random.default_rng(0)
    ids = {"train": [], "val": []}
    # label of the object in each image: train images hold train classes 6, 7; val images test classes 1, 2.
    for n, (part, cls) in enumerate([("train", 6), ("train", 7), ("train", 6), ("val", 1), ("val", 2), ("val", 1)]):
        image_id = f"2007_{n:06d}"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{image_id}.jpg")
        label = np.zeros((40, 48), dtype=np.uint8)
        label[5:25, 10:30] = cls
        label[4, 10:30] = 255  # the boundary VOC marks around objects
        if part == "train":
            label[30:38, 30:40] = 3  # a test class in a training image: background there
        im = Image.fromarray(label, mode="P")
        im.putpalette(palette)
        im.save(root / "SegmentationClassAug" / f"{image_id}.png")
        ids[part].append(image_id)
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("\n".join(ids["train"]) + "\n")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids["val"]) + "\n")


def test_pascal5i_reads_voc_files_into_the_fold(tmp_path: Path) -> None:
    _voc(tmp_path)
    sets = load_pascal5i(tmp_path, fold=0, image_size=24, min_pixels=4)
    train, test = sets["train"], sets["test"]
    assert sets["val"] is test
    assert test.class_names == ["aeroplane", "bicycle", "bird", "boat", "bottle"]
    assert "bus" in train.class_names and "bird" not in train.class_names
    assert len(train.images) == 3 and len(test.images) == 3 and train.images.shape[1:] == (3, 24, 24)
    # The test class (bird, label 3) in training images is background; the 255 boundary too.
    assert set(train.labels.unique().tolist()) == {-1, train.class_names.index("bus"), train.class_names.index("car")}
    assert set(test.labels.unique().tolist()) == {-1, 0, 1}
    assert test.occurrences()[0] == [0, 2] and test.occurrences()[1] == [1]
    assert int(test.instances[0].max()) == 1  # one object: one connected component
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_999999\n")
    with pytest.raises(MetakitError, match="2007_999999.jpg is missing"):
        load_pascal5i(tmp_path, fold=0, image_size=24)
    with pytest.raises(MetakitError, match="JPEGImages is missing"):
        load_pascal5i(tmp_path / "nowhere")
    with pytest.raises(MetakitError, match="split: published"):
        load_pascal5i(tmp_path, split="group")


def _rle_string(counts: list[int]) -> str:
    """pycocotools' rleToString: each count (minus the one two back, after the third) in 5-bit groups."""
    out = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = x != -1 if ch & 0x10 else x != 0
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def _runs(mask: np.ndarray) -> list[int]:
    flat = mask.T.reshape(-1).astype(np.int8)  # column-major, as COCO
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return np.diff(np.concatenate([[0], changes])).tolist()


def test_rle_decoding_both_forms() -> None:
    mask = np.zeros((7, 5), dtype=bool)
    mask[1:4, 2:5] = True
    mask[6, 0] = True
    runs = _runs(mask)
    assert np.array_equal(decode_rle({"size": [7, 5], "counts": runs}), mask)
    assert np.array_equal(decode_rle({"size": [7, 5], "counts": _rle_string(runs)}), mask)
    big = np.random.default_rng(1).random((30, 41)) > 0.6  # long runs and negative differences
    assert np.array_equal(decode_rle({"size": [30, 41], "counts": _rle_string(_runs(big))}), big)
    with pytest.raises(MetakitError, match="damaged"):
        decode_rle({"size": [7, 5], "counts": [3, 2]})


def _coco(root: Path) -> None:
    (root / "annotations").mkdir(parents=True)
    categories = [{"id": i + 1 + (i // 10), "name": f"cat{i}", "supercategory": "x"} for i in range(80)]
    rng = np.random.default_rng(0)
    for part in ("train2014", "val2014"):
        (root / part).mkdir()
        images, anns = [], []
        for n in range(3):
            name = f"COCO_{part}_{n:012d}.jpg"
            Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / part / name)
            images.append({"id": n + 1, "file_name": name, "height": 30, "width": 40})
            # val: class index 0 (test in fold 0); train: class index 1 (train in fold 0).
            cls = 0 if part == "val2014" else 1
            anns.append({"id": 10 * n + 1, "image_id": n + 1, "category_id": categories[cls]["id"], "iscrowd": 0,
                         "segmentation": [[5, 5, 20, 5, 20, 20, 5, 20]]})
            crowd = np.zeros((30, 40), dtype=bool)
            crowd[22:28, 25:38] = True
            counts = _runs(crowd)
            anns.append({"id": 10 * n + 2, "image_id": n + 1, "category_id": categories[4]["id"], "iscrowd": 1,
                         "segmentation": {"size": [30, 40], "counts": counts if n % 2 else _rle_string(counts)}})
        (root / "annotations" / f"instances_{part}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": categories}))


def test_coco20i_reads_instances_json_into_the_fold(tmp_path: Path) -> None:
    _coco(tmp_path)
    sets = load_coco20i(tmp_path, fold=0, image_size=20, min_pixels=4)
    test, train = sets["test"], sets["train"]
    assert test.class_names[:3] == ["cat0", "cat4", "cat8"] and len(test.class_names) == 20
    # The polygon (test class 0) and the crowd masks (class 4, also a fold-0 test class) are both there.
    assert test.occurrences()[0] == [0, 1, 2] and test.occurrences()[1] == [0, 1, 2]
    polygon = test.labels[0] == 0
    assert 40 <= int(polygon.sum()) <= 90  # the 15x15 square of 30x40 pixels, resized to 20x20
    assert train.class_names[0] == "cat1" and train.occurrences()[0] == [0, 1, 2]
    assert not (train.labels == train.class_names.index("cat2")).any()
    bad = tmp_path / "annotations" / "instances_val2014.json"
    bad.write_text("{not json")
    with pytest.raises(MetakitError, match="not a COCO instances file"):
        load_coco20i(tmp_path, fold=0)
    with pytest.raises(MetakitError, match="instances_val2014.json is missing"):
        load_coco20i(tmp_path / "annotations", fold=0)


def test_a_pascal5i_config_builds_a_run(tmp_path: Path) -> None:
    """The loader is a registered segmentation dataset: a config names it, and the experiment builds on its folds."""
    from metakit.config import config_from_dict
    from metakit.segmentation.experiment import build_seg_experiment

    _voc(tmp_path)
    cfg = config_from_dict({
        "dataset": {"name": "pascal-5i", "root": str(tmp_path), "split": "published", "fold": 0, "image_size": 32,
                    "min_pixels": 4},
        "backbone": {"name": "seg-fcn", "hidden": 8, "layers": 1, "pools": 0}, "learner": {"name": "seg-panet"},
        "episodes": {"ways": 1, "shots": 1, "queries": 1}, "eval": {"ways": [1], "shots": [1], "queries": 1},
    })
    exp = build_seg_experiment(cfg)
    assert exp.task.input_shape == (3, 32, 32) and exp.task.num_classes == 15
    episode = exp.source("test", 1, 1, 1).sample(torch.Generator().manual_seed(0))
    assert episode.support_x.shape == (1, 3, 32, 32) and episode.query_y.sum() > 0
