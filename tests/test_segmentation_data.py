"""Few-shot segmentation data (#22): composed scenes, episodes, the fss-folder loader and export, metrics.

The scenes here are made from the ``synthetic`` class dataset of ``conftest`` (12-pixel
templates, 8 groups) at 32 pixels, so they take well under a second; the Glyphs source goes
through the same code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from metakit.datasets import load_splits
from metakit.episodes import FixedEpisodes
from metakit.errors import MetakitError
from metakit.segmentation import scenes as scenes_mod
from metakit.segmentation.episodes import SegmentationEpisodes
from metakit.segmentation.fss import export_fss, load_fss_folder
from metakit.segmentation.metrics import (
    IoUAccumulator, average_precision, box_iou, boxes_of, connected_components, detect_instances,
)
from metakit.segmentation.scenes import compose_scenes, load_scenes

SMALL = {"source": "synthetic", "image_size": 32, "scenes_per_class": 8}


@pytest.fixture(scope="module")
def scene_sets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One set of small scenes for the tests that only read them (built once)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("METAKIT_CACHE", str(tmp_path_factory.mktemp("segcache")))
    try:
        yield load_scenes(**SMALL)
    finally:
        mp.undo()


# -- scenes ------------------------------------------------------------------------------------


def test_scenes_label_every_pixel_with_one_class_and_instance(scene_sets) -> None:
    for s in scene_sets.values():
        assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (1, 32, 32)
        # Background in one map is background in the other.
        assert torch.equal(s.labels >= 0, s.instances > 0)
        for i in range(len(s.images)):
            inst, lab = s.instances[i], s.labels[i]
            classes = [int(lab[inst == n].unique().item()) for n in inst.unique().tolist() if n > 0]
            # One class per instance, and a scene's characters are of different classes.
            assert len(classes) == len(set(classes)) >= 1


def test_scene_classes_follow_the_source_split(scene_sets) -> None:
    source = load_splits("synthetic", split="group", seed=0, fractions=(0.7, 0.1, 0.2))
    names = {k: set(v.class_names) for k, v in scene_sets.items()}
    for split in ("train", "val", "test"):
        assert names[split] == set(source[split].class_names)
        used = {scene_sets[split].class_names[c] for c in scene_sets[split].labels.unique().tolist() if c >= 0}
        assert used <= names[split]
    assert not names["train"] & names["test"] and not names["train"] & names["val"]


def test_scenes_are_deterministic_and_seeded() -> None:
    source = load_splits("synthetic")["test"]
    a = compose_scenes(source, image_size=32, scenes_per_class=3, seed=5)
    b = compose_scenes(source, image_size=32, scenes_per_class=3, seed=5)
    c = compose_scenes(source, image_size=32, scenes_per_class=3, seed=6)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and torch.equal(a.instances, b.instances)
    assert not torch.equal(a.images, c.images)


def test_scenes_are_cached_and_a_damaged_cache_is_rebuilt(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path))
    first = load_scenes(**SMALL)
    (path,) = (tmp_path / "segmentation").glob("scenes-*.npz")
    real = scenes_mod.compose_scenes
    monkeypatch.setattr(scenes_mod, "compose_scenes", lambda *a, **k: pytest.fail("cache not used"))
    cached = load_scenes(**SMALL)
    assert torch.equal(cached["test"].images, first["test"].images)
    assert torch.equal(cached["val"].labels, first["val"].labels)
    assert cached["train"].class_names == first["train"].class_names
    path.write_bytes(b"not a zip file")
    monkeypatch.setattr(scenes_mod, "compose_scenes", real)
    rebuilt = load_scenes(**SMALL)
    assert torch.equal(rebuilt["test"].instances, first["test"].instances)
    assert not list((tmp_path / "segmentation").glob(".*.tmp"))  # the atomic write left no temp file


def test_scenes_reject_bad_arguments() -> None:
    source = load_splits("synthetic")["val"]  # 5 classes
    with pytest.raises(MetakitError, match="up to 6 distinct"):
        compose_scenes(source, objects=(2, 6))
    with pytest.raises(MetakitError, match="objects must be"):
        compose_scenes(source, objects=(3, 2))


# -- episodes ----------------------------------------------------------------------------------


def test_episodes_are_one_way_k_shot_with_masks_of_one_class(scene_sets) -> None:
    test = scene_sets["test"]
    sampler = SegmentationEpisodes(test, shots=2, queries=3)
    ep = sampler.sample(torch.Generator().manual_seed(0))
    assert ep.ways == 1 and ep.shots == 2 and ep.queries == 3
    assert ep.support_x.shape == (2, 1, 32, 32) and ep.query_x.shape == (3, 1, 32, 32)
    assert ep.support_y.shape == (2, 32, 32) and ep.query_y.shape == (3, 32, 32)
    cls = int(ep.classes.item())
    for images, masks in ((ep.support_x, ep.support_y), (ep.query_x, ep.query_y)):
        assert set(masks.unique().tolist()) <= {0.0, 1.0}
        assert (masks.sum((1, 2)) >= test.min_pixels).all()
        # The mask is exactly where that class is in the scene the image came from.
        for img, mask in zip(images, masks, strict=True):
            (i,) = [i for i in range(len(test.images)) if torch.equal(test.images[i].float() / 255, img)]
            assert torch.equal(mask.bool(), test.labels[i] == cls)
    again, inst = sampler.sample_with_instances(torch.Generator().manual_seed(0))
    assert torch.equal(again.query_x, ep.query_x)
    assert torch.equal(inst > 0, ep.query_y.bool())


def test_episodes_can_label_every_object_for_supervised_training(scene_sets) -> None:
    """``labels="all"``: the same draw, with every object marked 1 + its class (the transfer baseline trains on it)."""
    train = scene_sets["train"]
    episode = SegmentationEpisodes(train, shots=2, queries=2).sample(torch.Generator().manual_seed(0))
    every = SegmentationEpisodes(train, shots=2, queries=2, labels="all").sample(torch.Generator().manual_seed(0))
    assert torch.equal(every.support_x, episode.support_x) and torch.equal(every.classes, episode.classes)
    cls = int(every.classes.item())
    for ys, images in ((every.support_y, every.support_x), (every.query_y, every.query_x)):
        for img, y in zip(images, ys, strict=True):
            (i,) = [i for i in range(len(train.images)) if torch.equal(train.images[i].float() / 255, img)]
            assert torch.equal(y.long(), train.labels[i] + 1)
            assert (y == cls + 1).any() and len(y.unique()) > 2  # the episode's class and others
    with pytest.raises(MetakitError, match="label 'episode' classes or 'all'"):
        SegmentationEpisodes(train, shots=1, queries=1, labels="some")


def test_fixed_episodes_repeat_and_differ_by_seed(scene_sets) -> None:
    sampler = SegmentationEpisodes(scene_sets["test"], shots=1, queries=2)
    a, b = FixedEpisodes(sampler, 5, seed=3), FixedEpisodes(sampler, 5, seed=3)
    assert all(torch.equal(a[i].query_y, b[i].query_y) for i in range(5))
    c = FixedEpisodes(sampler, 5, seed=4)
    assert any(not torch.equal(a[i].query_x, c[i].query_x) for i in range(5))


def test_episodes_name_classes_that_are_too_small(scene_sets) -> None:
    with pytest.raises(MetakitError, match=r"need 30 images per class.*every class has fewer: 'class"):
        SegmentationEpisodes(scene_sets["test"], shots=20, queries=10)
    with pytest.raises(MetakitError, match="shots >= 1"):
        SegmentationEpisodes(scene_sets["test"], shots=0, queries=1)


# -- fss-folder ---------------------------------------------------------------------------------


def _write_class(root, name: str, n: int, size: int = 20, mask_value: int = 255) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(len(name) + n)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
        mask = np.zeros((size, size), np.uint8)
        mask[2 + i : 9 + i, 3:12] = mask_value
        Image.fromarray(mask).save(folder / f"{i}.png")


def test_export_then_load_gives_the_same_scenes_and_split(scene_sets, tmp_path) -> None:
    summary = export_fss(scene_sets, tmp_path / "fss", per_class=4)
    root = summary.out
    assert (root / "splits" / "test.txt").is_file()
    loaded = load_fss_folder(root, image_size=32, channels=1)
    for split in ("train", "val", "test"):
        assert len(loaded[split].class_names) == len(summary.classes[split])
    # One exported class: its masks come back exactly (PNG is lossless; JPEG images nearly so).
    test, back = scene_sets["test"], loaded["test"]
    cls = 0
    folder = root / summary.classes["test"][cls]
    scene_ids = test.occurrences()[cls][:4]
    assert len(list(folder.glob("*.png"))) == len(scene_ids)
    rows = [i for i in range(len(back.images)) if back.labels[i].max() == cls]
    for i, row in zip(scene_ids, rows, strict=True):
        assert torch.equal(back.labels[row] == cls, test.labels[i] == cls)
        assert (back.images[row].float() - test.images[i].float()).abs().mean() < 6
        # The instances are the mask's connected components.
        assert torch.equal(back.instances[row] > 0, test.labels[i] == cls)
    sampler = SegmentationEpisodes(back, shots=1, queries=1, strict=True)
    assert sampler.sample(torch.Generator().manual_seed(0)).support_x.shape == (1, 1, 32, 32)
    with pytest.raises(MetakitError, match="already exists"):
        export_fss(scene_sets, root)


def test_fss_folder_seeded_fractions_split_classes(tmp_path) -> None:
    for c in range(6):
        _write_class(tmp_path, f"c{c}", 3)
    a = load_fss_folder(tmp_path, image_size=16, fractions=(0.5, 0.17, 0.33), split_seed=1)
    b = load_fss_folder(tmp_path, image_size=16, fractions=(0.5, 0.17, 0.33), split_seed=1)
    assert [a[s].class_names for s in a] == [b[s].class_names for s in b]
    assert sorted(sum((a[s].class_names for s in a), [])) == [f"c{c}" for c in range(6)]
    assert len(a["train"].class_names) == 3 and a["train"].images.shape == (9, 3, 16, 16)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_mask", r"image .*c0/1.jpg has no mask 1.png beside it; add the mask or remove the image"),
        ("size", r"mask .*c0/1.png is 10x10 but its image 1.jpg is 20x20; save the mask at the image's size"),
        ("gray", r"mask .*c0/1.png is not binary \(values 0, 128\).*threshold"),
        ("empty", r"mask .*c0/1.png has no foreground pixels"),
        ("split", r"test.txt names class\(es\) with no folder .*: nope"),
    ],
)
def test_fss_folder_bad_data_is_one_line_naming_the_file(tmp_path, damage: str, message: str) -> None:
    for c in range(3):
        _write_class(tmp_path, f"c{c}", 2)
    mask = tmp_path / "c0" / "1.png"
    if damage == "no_mask":
        mask.unlink()
    elif damage == "size":
        Image.fromarray(np.full((10, 10), 255, np.uint8)).save(mask)
    elif damage == "gray":
        Image.fromarray(np.where(np.arange(400).reshape(20, 20) % 2, 128, 0).astype(np.uint8)).save(mask)
    elif damage == "empty":
        Image.fromarray(np.zeros((20, 20), np.uint8)).save(mask)
    else:
        (tmp_path / "splits").mkdir()
        for split, names in (("train", "c0"), ("val", "c1"), ("test", "c2\nnope")):
            (tmp_path / "splits" / f"{split}.txt").write_text(names + "\n")
    with pytest.raises(MetakitError, match=message) as err:
        load_fss_folder(tmp_path, image_size=16, fractions=(1, 1, 1))
    assert "\n" not in str(err.value)


def test_fss_folder_threshold_accepts_soft_masks(tmp_path) -> None:
    for c in range(3):
        _write_class(tmp_path, f"c{c}", 2, mask_value=200)
    soft = np.zeros((20, 20), np.uint8)
    soft[4:10, 4:10], soft[10:12, 4:10] = 200, 90  # an anti-aliased edge
    Image.fromarray(soft).save(tmp_path / "c1" / "0.png")
    with pytest.raises(MetakitError, match="not binary"):
        load_fss_folder(tmp_path, image_size=20)
    sets = load_fss_folder(tmp_path, image_size=20, threshold=128, fractions=(1, 1, 1), split_seed=0)
    where = {n: s for s in sets.values() for n in s.class_names}
    c1 = where["c1"]
    row = [i for i in range(len(c1.images)) if (c1.labels[i] >= 0).sum() == 36]
    assert len(row) == 1  # 6x6 above the threshold; the 90s are background


def test_fss_folder_strict_episodes_name_short_classes(tmp_path) -> None:
    _write_class(tmp_path, "big", 4)
    _write_class(tmp_path, "small", 1)
    (tmp_path / "splits").mkdir()
    for split in ("train", "val", "test"):
        (tmp_path / "splits" / f"{split}.txt").write_text("big\nsmall\n")
    test = load_fss_folder(tmp_path, image_size=16)["test"]
    with pytest.raises(MetakitError, match=r"need 3 images per class, but these classes have fewer: 'small' \(1\)"):
        SegmentationEpisodes(test, shots=2, queries=1, strict=True)
    assert SegmentationEpisodes(test, shots=2, queries=1).skipped == ["small"]


# -- metrics -----------------------------------------------------------------------------------


def test_connected_components_and_boxes_by_hand() -> None:
    m = torch.tensor([
        [1, 1, 0, 0, 0],
        [0, 1, 0, 0, 1],
        [0, 0, 1, 0, 1],  # (2,2) touches (1,1) diagonally: 8-connected, one component
        [0, 0, 0, 0, 0],
        [1, 0, 0, 1, 1],
    ], dtype=torch.bool)
    comps = connected_components(m)
    expected = torch.tensor([
        [1, 1, 0, 0, 0],
        [0, 1, 0, 0, 2],
        [0, 0, 1, 0, 2],
        [0, 0, 0, 0, 0],
        [3, 0, 0, 4, 4],
    ])
    assert torch.equal(comps, expected)
    assert boxes_of(comps).tolist() == [[0, 0, 3, 3], [4, 1, 5, 3], [0, 4, 1, 5], [3, 4, 5, 5]]
    assert connected_components(torch.zeros(3, 3, dtype=torch.bool)).sum() == 0


def test_box_iou_and_detections_by_hand() -> None:
    a = torch.tensor([[0.0, 0, 2, 2]])
    b = torch.tensor([[1.0, 1, 3, 3], [0, 0, 2, 2], [5, 5, 6, 6]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 1.0, 0.0]]))
    probs = torch.zeros(6, 6)
    probs[0:2, 0:2] = 0.9
    probs[3:6, 3:5] = 0.6
    probs[5, 0] = 0.99  # a single pixel: speckle, below min_pixels
    scores, boxes = detect_instances(probs, min_pixels=2)
    assert torch.allclose(scores, torch.tensor([0.9, 0.6]))
    assert boxes.tolist() == [[0, 0, 2, 2], [3, 3, 5, 6]]


def test_average_precision_by_hand() -> None:
    truths = [torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])]
    detections = [
        (torch.tensor([0.9, 0.8]), torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9]])),  # hit, then a duplicate
        (torch.tensor([0.7]), torch.tensor([[20.0, 20, 30, 30]])),  # hit
    ]
    # Ranked: TP (P 1, R 1/3), FP (P 1/2), TP (P 2/3, R 2/3); the third truth is never found.
    # Interpolated precision: 1 up to R 1/3, 2/3 up to R 2/3 -> AP = 1/3 + 1/3 * 2/3 = 5/9.
    assert average_precision(detections, truths) == pytest.approx(5 / 9)
    assert math.isnan(average_precision([], []))
    assert average_precision([(torch.zeros(0), torch.zeros(0, 4))], [torch.tensor([[0.0, 0, 1, 1]])]) == 0.0


def test_miou_accumulates_per_class_then_averages_and_fb_iou_by_hand() -> None:
    acc = IoUAccumulator()
    t = torch.zeros(1, 4, 4, dtype=torch.bool)
    t[0, 0, :] = True  # 4 foreground pixels
    p = torch.zeros_like(t)
    p[0, 0, :2] = True  # 2 of them found: I 2, U 4
    acc.update("a", p, t)
    t2 = torch.zeros_like(t)
    t2[0, :2, :2] = True  # 4 pixels
    p2 = t2.clone()
    p2[0, 3, 3] = True  # all found plus one false positive: I 4, U 5
    acc.update("a", p2, t2)
    acc.update("b", t2, t2)  # perfect: IoU 1
    # Class a accumulates: (2 + 4) / (4 + 5) = 2/3, not the mean of episodes (1/2 + 4/5) / 2.
    assert acc.per_class() == pytest.approx({"a": 2 / 3, "b": 1.0})
    assert acc.miou() == pytest.approx((2 / 3 + 1) / 2)
    # Foreground: I 2+4+4 = 10, U 4+5+4 = 13. Background (16 pixels each): I 12+11+12 = 35, U 14+12+12 = 38.
    assert acc.fb_iou() == pytest.approx((10 / 13 + 35 / 38) / 2)
    assert math.isnan(IoUAccumulator().miou()) and math.isnan(IoUAccumulator().fb_iou())


def test_omniglot_scenes_keep_alphabets_apart(shared_data, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path))
    root = shared_data / "omniglot" / "images_background_small1.zip"
    if not root.is_file():
        pytest.skip(f"{root} is absent")
    sets = load_scenes("omniglot", fractions=(0.4, 0.2, 0.4), source_options={"root": str(root)}, max_classes=8,
                       scenes_per_class=4, image_size=32)
    source = load_splits("omniglot", split="group", fractions=(0.4, 0.2, 0.4), root=str(root))
    for split, scenes in sets.items():
        assert scenes.class_names == source[split].class_names[:8]
        assert scenes.images.shape[1:] == (1, 32, 32)
    alphabets = {split: set(source[split].class_groups) for split in sets}
    assert not alphabets["train"] & alphabets["test"]
