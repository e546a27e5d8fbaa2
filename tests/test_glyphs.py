"""Tests of the embedded Glyphs dataset (metakit.datasets.glyphs).

Most tests share one small build (16 px, 2 drawers, ~4 s) in a module-wide temporary cache; one
slow test builds the default dataset once (~20 s on 2 cores).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from metakit.datasets import glyphs
from metakit.datasets.base import ClassDataset
from metakit.errors import MetakitError

SMALL = {"image_size": 16, "drawers": 2}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory shared by the module's tests (so the scan and small build run once)."""
    root = tmp_path_factory.mktemp("metakit-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAKIT_CACHE", str(root))
        yield root


@pytest.fixture(autouse=True)
def _use_module_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs after conftest's autouse cache fixture (conftest fixtures come first), so tests here
    # see the module's cache, where the small build below lives.
    monkeypatch.setenv("METAKIT_CACHE", str(cache))


@pytest.fixture(scope="module")
def small(cache: Path) -> ClassDataset:
    return glyphs.load_glyphs(**SMALL)


@pytest.fixture
def few_letters(small: ClassDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    """Restrict the scan result to two blocks (~180 letters), so rebuilds take a fraction of a second."""
    coverage = {cp: fonts for cp, fonts in glyphs._coverage().items() if 0x370 <= cp < 0x400 or cp < 0x80}
    monkeypatch.setattr(glyphs, "_coverage", lambda: coverage)


def _cached_file(**params: int) -> Path:
    full = {**glyphs._DEFAULTS, **params}
    return glyphs._dataset_path(**full)


def test_font_files_exist(cache: Path) -> None:
    assert glyphs.cache_dir("glyphs") == cache / "glyphs"
    assert len(glyphs.FONT_FILES) == 16
    for name in glyphs.FONT_FILES:
        assert (glyphs._font_dir() / name).is_file(), name


def test_block_table_is_sorted_and_disjoint() -> None:
    blocks = glyphs._BLOCKS
    for (s1, e1, _), (s2, e2, _) in zip(blocks, blocks[1:]):
        assert s1 <= e1 < s2 <= e2
    assert glyphs.block_of(0x41) == "Basic Latin"
    assert glyphs.block_of(0x3A9) == "Greek and Coptic"
    assert glyphs.block_of(0x1D400) == "Mathematical Alphanumeric Symbols"
    assert glyphs.block_of(0x4E00) is None  # CJK: not in these fonts, so not in the table


def test_counts_and_groups(small: ClassDataset) -> None:
    assert small.name == "glyphs"
    # Measured: 3,527 letters in 30 blocks with >= 20 letters (3,549 in 33 blocks before that).
    assert 3000 <= small.num_classes <= 4000
    assert 25 <= len(small.groups) <= 35
    assert small.class_groups is not None
    sizes: dict[str, int] = {}
    for group in small.class_groups:
        sizes[group] = sizes.get(group, 0) + 1
    assert min(sizes.values()) >= 20
    block_names = {b[2] for b in glyphs._BLOCKS}
    assert set(sizes) <= block_names
    assert {"Basic Latin", "Cyrillic", "Greek and Coptic"} <= set(sizes)
    assert "U+0041 LATIN CAPITAL LETTER A" in small.class_names
    for name, group in zip(small.class_names, small.class_groups):
        cp = int(name.split()[0][2:], 16)
        assert unicodedata.category(chr(cp)).startswith("L"), name
        assert glyphs.block_of(cp) == group
    assert small.class_sizes() == [2] * small.num_classes


def test_images(small: ClassDataset) -> None:
    assert small.images.dtype == torch.uint8
    assert small.image_shape == (1, 16, 16)
    assert len(small.images) == 2 * small.num_classes
    peak = small.images.flatten(1).amax(dim=1)
    assert int(peak.min()) > 100  # every image has ink
    # Ink is high on a 0 background: the border is nearly always empty, the centre often inked.
    border = torch.cat([small.images[:, 0, 0], small.images[:, 0, -1]], dim=1)
    assert border.float().mean() < 5
    assert small.images[:, 0, 6:10, 6:10].float().mean() > 40


def test_scan_rejects_unmapped_and_notdef(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = glyphs._charmaps()
    fake = [dict(c) for c in real]
    # U+4E00 (a CJK letter) is in none of the fonts: pretend DejaVuSans maps it to a glyph. The
    # renderer then draws .notdef, which the scan must recognise and reject.
    assert 0x4E00 not in fake[0]
    fake[0][0x4E00] = 1234
    fake[0][0x4E01] = 0  # mapped explicitly to .notdef
    monkeypatch.setattr(glyphs, "_charmaps", lambda: fake)
    coverage = glyphs._scan_fonts()
    assert 0x4E00 not in coverage and 0x4E01 not in coverage
    assert coverage[0x41] == list(range(16))  # "A" is real in every font
    # Real glyphs only for letters: no digits or punctuation.
    assert all(unicodedata.category(chr(cp)).startswith("L") for cp in coverage)


def test_select_filters_fonts_and_blocks() -> None:
    coverage = {0x41 + i: [0, 1, 2] for i in range(26)} | {0x3B1: [0, 1, 2], 0x3B2: [0, 1]}
    chars = glyphs._select(coverage, min_fonts=3, min_letters=20)
    assert [cp for cp, _, _ in chars] == list(range(0x41, 0x41 + 26))
    assert {block for _, block, _ in chars} == {"Basic Latin"}
    assert glyphs._select(coverage, min_fonts=3, min_letters=1)[-1][0] == 0x3B1
    assert glyphs._select(coverage, min_fonts=4, min_letters=1) == []


def test_render_is_deterministic(small: ClassDataset) -> None:
    coverage = glyphs._coverage()
    chars = [(cp, coverage[cp]) for cp in (0x41, 0x3B6, 0x1D49C)]
    a = glyphs._render(chars, 16, 4, seed=0)
    b = glyphs._render(chars, 16, 4, seed=0)
    c = glyphs._render(chars, 16, 4, seed=1)
    assert a.shape == (12, 1, 16, 16) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # A character's images depend only on (seed, code point), not on its neighbours.
    assert np.array_equal(glyphs._render(chars[1:2], 16, 4, seed=0), a[4:8])


def test_cache_hit_does_not_render(small: ClassDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("rendered again instead of loading the cache")

    monkeypatch.setattr(glyphs, "_render", fail)
    monkeypatch.setattr(glyphs, "_scan_fonts", fail)
    again = glyphs.load_glyphs(**SMALL)
    assert torch.equal(again.images, small.images)
    assert torch.equal(again.labels, small.labels)
    assert again.class_names == small.class_names
    assert again.class_groups == small.class_groups


def test_scan_cache_is_used(small: ClassDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(glyphs, "_scan_fonts", lambda: pytest.fail("scanned again"))
    assert glyphs._coverage()[0x41] == list(range(16))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "bitflip"])
def test_corrupt_cache_is_rebuilt(few_letters: None, damage: str) -> None:
    params = {"image_size": 12, "drawers": 3}
    first = glyphs.load_glyphs(**params)
    assert first.groups == ["Basic Latin", "Greek and Coptic"]
    path = _cached_file(**params)
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a zip file")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # damage inside the compressed image data: a CRC or zlib error on reading
        mid = len(data) // 3
        path.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :])
    rebuilt = glyphs.load_glyphs(**params)
    # The rebuild is bit-identical to the first build, and the file is good again.
    assert torch.equal(rebuilt.images, first.images)
    assert rebuilt.class_names == first.class_names
    assert torch.equal(glyphs._read_cache(path, 12).images, first.images)


def test_corrupt_scan_cache_is_rescanned(small: ClassDataset) -> None:
    path = glyphs._scan_path()
    good = path.read_text()
    try:
        path.write_text("{ not json")
        assert glyphs._coverage()[0x41] == list(range(16))
        assert path.read_text() != "{ not json"
    finally:
        path.write_text(good)


def test_interrupted_write_leaves_no_cache_file(
    few_letters: None, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_half_then_die(f, **arrays: object) -> None:  # type: ignore[no-untyped-def]
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # as if the process were interrupted mid-write

    monkeypatch.setattr(glyphs.np, "savez_compressed", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        glyphs.load_glyphs(image_size=10, drawers=1)
    assert not _cached_file(image_size=10, drawers=1).exists()
    assert not [p for p in (cache / "glyphs").iterdir() if p.name.endswith(".tmp")]


def test_no_temp_files_left(small: ClassDataset, cache: Path) -> None:
    leftovers = [p.name for p in (cache / "glyphs").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_same_seed_same_images_different_seed_differs(few_letters: None) -> None:
    a = glyphs.load_glyphs(image_size=12, drawers=3, seed=0)
    _cached_file(image_size=12, drawers=3, seed=0).unlink()
    again = glyphs.load_glyphs(image_size=12, drawers=3, seed=0)  # rendered afresh
    b = glyphs.load_glyphs(image_size=12, drawers=3, seed=1)
    assert torch.equal(a.images, again.images)
    assert a.class_names == b.class_names
    assert not torch.equal(a.images, b.images)
    assert _cached_file(image_size=12, drawers=3, seed=0) != _cached_file(image_size=12, drawers=3, seed=1)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"image_size": 4}, "image_size"),
        ({"image_size": 1000}, "image_size"),
        ({"image_size": 28.5}, "image_size"),
        ({"image_size": True}, "image_size"),
        ({"drawers": 0}, "drawers"),
        ({"drawers": "20"}, "drawers"),
        ({"seed": -1}, "seed"),
        ({"min_fonts": 0}, "min_fonts"),
        ({"min_fonts": 17}, "min_fonts"),
        ({"min_letters": 0}, "min_letters"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], needle: str) -> None:
    with pytest.raises(MetakitError) as info:
        glyphs.load_glyphs(**kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert needle in message and "\n" not in message and message.startswith("glyphs:")


def test_no_block_left_is_an_error(small: ClassDataset) -> None:
    with pytest.raises(MetakitError, match="lower min_letters"):
        glyphs.load_glyphs(**SMALL, min_letters=100_000)


def test_status(few_letters: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path))
    line = glyphs.glyphs_status()
    assert line.startswith("not rendered yet") and str(tmp_path) in line and "\n" not in line
    # Point the status at a small build so the test does not have to render the default.
    monkeypatch.setattr(glyphs, "_DEFAULTS", {**glyphs._DEFAULTS, "image_size": 8, "drawers": 1})
    ds = glyphs.load_glyphs(image_size=8, drawers=1)
    line = glyphs.glyphs_status()
    assert line.startswith("rendered locally") and f"({ds.num_classes} classes)" in line
    glyphs._dataset_path(**glyphs._DEFAULTS).write_bytes(b"junk")
    assert "unreadable" in glyphs.glyphs_status()


def test_registry_entry() -> None:
    from metakit.datasets import get_dataset

    spec = get_dataset("glyphs")
    assert spec.resolve("loader") is glyphs.load_glyphs
    assert spec.resolve("status") is glyphs.glyphs_status


@pytest.mark.slow
def test_default_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default dataset: 28 px, 20 drawers; rendered once, then read from the cache.

    Its build time (~22 s on 2 cores) is a benchmark figure, not asserted here: a busy machine
    made a time limit fail without anything being wrong.
    """
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path))
    ds = glyphs.load_glyphs()
    assert ds.image_shape == (1, 28, 28)
    assert set(ds.class_sizes()) == {20}
    assert 3000 <= ds.num_classes <= 4000
    assert int(ds.images.flatten(1).amax(dim=1).min()) > 100

    def no_render(*args: object, **kwargs: object) -> None:
        raise AssertionError("the second load rendered again instead of reading the cache")

    monkeypatch.setattr(glyphs, "_render", no_render)
    again = glyphs.load_glyphs()
    assert torch.equal(again.images, ds.images)
    assert glyphs.glyphs_status().startswith("rendered locally")
