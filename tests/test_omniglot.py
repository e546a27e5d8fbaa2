"""Omniglot loader and splits: on the real background set (../shared) and on tiny fake zips."""

from __future__ import annotations

import hashlib
import io
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metakit.datasets import get_dataset, load_splits
from metakit.datasets import omniglot
from metakit.datasets.omniglot import OmniglotDataset, load_omniglot, omniglot_splits, omniglot_status
from metakit.errors import MetakitError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
BACKGROUND_ZIP = SHARED / "images_background.zip"
SMALL1_ZIP = SHARED / "images_background_small1.zip"

needs_shared = pytest.mark.skipif(
    not BACKGROUND_ZIP.is_file(),
    reason=f"real Omniglot data not found at {SHARED} (../shared/data/omniglot beside the repo)",
)


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------------------------
# Fake data in the official layout

# alphabet -> number of characters; ids are numbered across alphabets in this order, like Lake's.
FAKE_ALPHABETS = {"Zeta_(fake)": 2, "Alpha": 3, "Mu": 1}
FAKE_DRAWERS = 4


def fake_png(char_id: int, drawer: int) -> bytes:
    """A 105x105 mode-"1" drawing: white background, a black block placed by character id."""
    img = Image.new("1", (105, 105), 1)
    x0, y0 = 10 + 7 * (char_id % 10), 10 + 5 * drawer
    img.paste(0, (x0, y0, x0 + 20, y0 + 30))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def fake_files(set_name: str = "background") -> dict[str, bytes]:
    files, char_id = {}, 1
    for alphabet, n_chars in FAKE_ALPHABETS.items():
        for c in range(1, n_chars + 1):
            for d in range(1, FAKE_DRAWERS + 1):
                files[f"images_{set_name}/{alphabet}/character{c:02d}/{char_id:04d}_{d:02d}.png"] = fake_png(char_id, d)
            char_id += 1
    return files


def write_fake_zip(path: Path, set_name: str = "background") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in fake_files(set_name).items():
            zf.writestr(name, data)
    return path


def write_fake_dir(root: Path, set_name: str = "background") -> Path:
    for name, data in fake_files(set_name).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root / f"images_{set_name}"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every test gets its own cache and no user Omniglot location or offline flag."""
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("METAKIT_OMNIGLOT", raising=False)
    monkeypatch.delenv("METAKIT_OFFLINE", raising=False)


# --------------------------------------------------------------------------------------------
# Real background set (../shared)


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache directory shared by the real-data tests, so the 19,280 PNGs are decoded once."""
    if not BACKGROUND_ZIP.is_file():
        pytest.skip(f"real Omniglot data not found at {SHARED}")
    cache = tmp_path_factory.mktemp("omniglot_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAKIT_CACHE", str(cache))
        load_omniglot(SHARED, download=False)
    return cache


@pytest.fixture
def background(real_cache: Path, monkeypatch: pytest.MonkeyPatch) -> OmniglotDataset:
    monkeypatch.setenv("METAKIT_CACHE", str(real_cache))
    return load_omniglot(SHARED, download=False)


@needs_shared
def test_background_set_counts_and_ink(background: OmniglotDataset) -> None:
    assert background.num_classes == 964
    assert len(background.groups) == 30
    assert background.class_sizes() == [20] * 964
    assert background.images.shape == (19280, 1, 28, 28)
    assert background.images.dtype == torch.uint8 and background.labels.dtype == torch.int64
    # Ink is high and sparse: the mean sits far below mid-grey, strokes reach 255.
    assert background.images.float().mean() < 40
    assert background.images.max() == 255
    assert background.class_names[0] == "Alphabet_of_the_Magi/character01"
    assert background.class_names == sorted(background.class_names)
    assert sorted(background.class_ids) == list(range(1, 965))
    assert set(background.class_sets) == {"background"}


@needs_shared
def test_second_load_is_a_cache_hit(background: OmniglotDataset, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded PNGs although a decoded cache exists")

    monkeypatch.setattr(omniglot, "_decode", no_decoding)
    again = load_omniglot(SHARED, download=False)
    assert torch.equal(again.images, background.images)
    assert again.class_names == background.class_names


@needs_shared
def test_small1_zip_as_root(background: OmniglotDataset) -> None:
    small = load_omniglot(SMALL1_ZIP, download=False)
    assert small.num_classes == 136
    assert small.groups == ["Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"]
    assert small.class_sizes() == [20] * 136
    # The small zip holds the same drawings as the full set: same pixels after decoding.
    latin = background.class_names.index("Latin/character01")
    small_latin = small.class_names.index("Latin/character01")
    assert torch.equal(small.images[small.items_of(small_latin)], background.images[background.items_of(latin)])


@needs_shared
def test_env_var_points_at_the_data(real_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAKIT_CACHE", str(real_cache))
    monkeypatch.setenv("METAKIT_OMNIGLOT", str(SHARED))
    assert load_omniglot(download=False).num_classes == 964
    assert str(BACKGROUND_ZIP) in omniglot_status()


@needs_shared
def test_group_split_20_5_5_alphabets(real_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAKIT_CACHE", str(real_cache))
    parts = load_splits("omniglot", split="group", seed=3, fractions=(2 / 3, 1 / 6, 1 / 6), root=str(SHARED))
    groups = {k: set(v.groups) for k, v in parts.items()}
    assert [len(groups[k]) for k in ("train", "val", "test")] == [20, 5, 5]
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
    assert sum(p.num_classes for p in parts.values()) == 964


@needs_shared
def test_vinyals_split_on_background_only(background: OmniglotDataset) -> None:
    parts = omniglot_splits(background, "vinyals", 0, (0.7, 0.1, 0.2))
    names = {k: set(v.class_names) for k, v in parts.items()}
    assert not (names["train"] & names["val"] or names["train"] & names["test"] or names["val"] & names["test"])
    assert sum(len(v) for v in names.values()) == 964
    assert len(names["test"]) == round(964 * 0.2) and len(names["val"]) == round(964 * 0.1)


@needs_shared
def test_lake_split_needs_the_evaluation_set(background: OmniglotDataset) -> None:
    with pytest.raises(MetakitError, match="evaluation") as exc:
        omniglot_splits(background, "lake", 0, (0.7, 0.1, 0.2))
    one_line(exc)


# --------------------------------------------------------------------------------------------
# Fake zips: layout, validation, download (no network, no ../shared)


def test_fake_zip_loads_in_sorted_order(tmp_path: Path) -> None:
    ds = load_omniglot(write_fake_zip(tmp_path / "images_background.zip"), image_size=14, download=False)
    assert ds.num_classes == 6 and ds.images.shape == (24, 1, 14, 14)
    assert ds.groups == ["Alpha", "Mu", "Zeta_(fake)"]
    assert ds.class_names[:2] == ["Alpha/character01", "Alpha/character02"]
    # Ids come from the file names (Zeta was numbered first), not from the sorted position.
    assert ds.class_ids == [3, 4, 5, 6, 1, 2]
    assert ds.class_sizes() == [4] * 6
    # Each fake drawing is a 20x30 ink block: 600 of 105*105 pixels inked, so ink is high and
    # the box filter preserves the ink mass.
    mean_ink = ds.images.float().mean().item() / 255
    assert mean_ink == pytest.approx(600 / 105**2, rel=0.1)


def test_root_forms_agree(tmp_path: Path) -> None:
    zipped = load_omniglot(write_fake_zip(tmp_path / "zips" / "images_background.zip"), download=False)
    from_zip_dir = load_omniglot(tmp_path / "zips", download=False)
    extracted = write_fake_dir(tmp_path / "extracted")
    from_parent = load_omniglot(tmp_path / "extracted", download=False)
    from_folder = load_omniglot(extracted, download=False)
    for other in (from_zip_dir, from_parent, from_folder):
        assert torch.equal(other.images, zipped.images)
        assert other.class_names == zipped.class_names


def test_decoded_cache_is_keyed_by_content_and_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_fake_zip(tmp_path / "images_background.zip")
    load_omniglot(path, download=False)
    calls = []
    real_decode = omniglot._decode
    monkeypatch.setattr(omniglot, "_decode", lambda *a: calls.append(a) or real_decode(*a))
    load_omniglot(path, download=False)
    assert calls == []  # same file, same size: cache hit
    load_omniglot(path, image_size=20, download=False)
    assert len(calls) == 1  # new size: decoded again
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("images_background/Mu/character02/0099_01.png", fake_png(99, 1))
    assert load_omniglot(path, download=False).num_classes == 7  # changed file: decoded again
    assert len(calls) == 2


def test_corrupt_zip_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "images_background.zip"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MetakitError, match="not a readable zip") as exc:
        load_omniglot(bad, download=False)
    assert str(bad) in one_line(exc)
    # The same file found inside a root directory is validated too.
    with pytest.raises(MetakitError, match="not a readable zip"):
        load_omniglot(tmp_path, download=False)


def test_zip_without_omniglot_pngs(tmp_path: Path) -> None:
    other = tmp_path / "photos.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("holiday/beach.png", fake_png(1, 1))
    with pytest.raises(MetakitError, match="holds no images_") as exc:
        load_omniglot(other, download=False)
    assert str(other) in one_line(exc)


def test_zip_of_another_set(tmp_path: Path) -> None:
    path = write_fake_zip(tmp_path / "images_evaluation.zip", "evaluation")
    with pytest.raises(MetakitError, match="sets: evaluation") as exc:
        load_omniglot(path, download=False)
    one_line(exc)
    ds = load_omniglot(path, sets="evaluation", download=False)
    assert set(ds.class_sets) == {"evaluation"}


def test_missing_set_without_download(tmp_path: Path) -> None:
    with pytest.raises(MetakitError) as exc:
        load_omniglot(tmp_path, sets=["evaluation"], download=False)
    msg = one_line(exc)
    assert omniglot.SETS["evaluation"].url in msg
    assert str(tmp_path / "cache" / "omniglot" / "images_evaluation.zip") in msg


def test_missing_root_and_unknown_options(tmp_path: Path) -> None:
    with pytest.raises(MetakitError, match="does not exist"):
        load_omniglot(tmp_path / "nowhere", download=False)
    with pytest.raises(MetakitError, match="Did you mean 'evaluation'"):
        load_omniglot(tmp_path, sets="evaluaton", download=False)
    with pytest.raises(MetakitError, match="image_size"):
        load_omniglot(tmp_path, image_size=0, download=False)


class FakeResponse(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


def serve(monkeypatch: pytest.MonkeyPatch, data: bytes) -> list[str]:
    """Make urllib serve ``data`` for any URL; return the list of requested URLs."""
    requested: list[str] = []

    def urlopen(req: urllib.request.Request, timeout: float | None = None) -> FakeResponse:
        requested.append(req.full_url)
        return FakeResponse(data)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return requested


def test_download_with_checksum_mismatch_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_fake_zip(tmp_path / "src" / "fake.zip").read_bytes()
    requested = serve(monkeypatch, data)  # the fake zip is not the official file
    with pytest.raises(MetakitError, match="checksum mismatch") as exc:
        load_omniglot()
    one_line(exc)
    assert requested == [omniglot.SETS["background"].url]
    cache = tmp_path / "cache" / "omniglot"
    assert not (cache / "images_background.zip").exists()
    assert [p.name for p in cache.iterdir() if p.is_file()] == []


def test_download_with_matching_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_fake_zip(tmp_path / "src" / "fake.zip").read_bytes()
    official = omniglot.SETS["background"]
    monkeypatch.setitem(
        omniglot.SETS, "background",
        omniglot._OfficialFile("background", len(data), hashlib.sha256(data).hexdigest()),
    )
    requested = serve(monkeypatch, data)
    ds = load_omniglot()
    assert requested == [official.url]
    dest = tmp_path / "cache" / "omniglot" / "images_background.zip"
    assert dest.read_bytes() == data
    assert ds.num_classes == 6
    assert str(dest) in omniglot_status()
    # Present and verified now: the next load neither downloads nor decodes.
    monkeypatch.setattr(omniglot, "_decode", lambda *a: pytest.fail("decoded twice"))
    assert load_omniglot().num_classes == 6
    assert len(requested) == 1


def test_offline_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    requested = serve(monkeypatch, b"")
    monkeypatch.setenv("METAKIT_OFFLINE", "1")
    with pytest.raises(MetakitError, match="METAKIT_OFFLINE") as exc:
        load_omniglot()
    assert omniglot.SETS["background"].url in one_line(exc)
    assert requested == []


def test_status_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line = omniglot_status()
    assert "\n" not in line and "background not local" in line and "evaluation not local" in line
    write_fake_zip(tmp_path / "mine" / "images_evaluation.zip", "evaluation")
    monkeypatch.setenv("METAKIT_OMNIGLOT", str(tmp_path / "mine"))
    assert f"evaluation at {tmp_path / 'mine' / 'images_evaluation.zip'}" in omniglot_status()
    assert get_dataset("omniglot").resolve("status")() == omniglot_status()


def test_two_sets_from_one_directory(tmp_path: Path) -> None:
    write_fake_zip(tmp_path / "images_background.zip", "background")
    write_fake_zip(tmp_path / "images_evaluation.zip", "evaluation")
    ds = load_omniglot(tmp_path, sets=["background", "evaluation"], download=False)
    assert ds.num_classes == 12
    assert ds.class_sets == ["background"] * 6 + ["evaluation"] * 6
    parts = omniglot_splits(ds, "lake", 0, (0.7, 0.1, 0.2))
    assert parts["test"].num_classes == 6 and set(parts["test"].class_names) == set(ds.class_names[6:])
    assert parts["train"].num_classes + parts["val"].num_classes == 6


# --------------------------------------------------------------------------------------------
# The named splits on synthetic datasets of the published sizes (no images needed)


def synthetic_full(seed: int = 0) -> OmniglotDataset:
    """1,623 one-item classes laid out like both sets: 30 + 20 alphabets, ids 1..1623."""
    rng = np.random.default_rng(seed)
    sets = ["background"] * 964 + ["evaluation"] * 659
    groups = [f"bg{i % 30:02d}" for i in range(964)] + [f"ev{i % 20:02d}" for i in range(659)]
    ids = list(range(1, 965)) + list(rng.permutation(np.arange(965, 1624)).tolist())
    n = len(sets)
    return OmniglotDataset(
        name="omniglot",
        images=torch.zeros(n, 1, 1, 1, dtype=torch.uint8),
        labels=torch.arange(n),
        class_names=[f"c{i}" for i in ids],
        class_groups=groups,
        class_sets=sets,
        class_ids=ids,
    )


def test_vinyals_split_with_both_sets() -> None:
    ds = synthetic_full()
    parts = omniglot_splits(ds, "vinyals", 1, (0.7, 0.1, 0.2))
    ids = {k: {int(n[1:]) for n in v.class_names} for k, v in parts.items()}
    assert ids["test"] == set(range(1201, 1624))
    assert ids["train"] | ids["val"] == set(range(1, 1201))
    assert len(ids["val"]) == 150 and not ids["train"] & ids["val"]
    again = omniglot_splits(ds, "vinyals", 1, (0.7, 0.1, 0.2))
    assert again["val"].class_names == parts["val"].class_names
    assert omniglot_splits(ds, "vinyals", 2, (0.7, 0.1, 0.2))["val"].class_names != parts["val"].class_names


def test_lake_split_with_both_sets() -> None:
    ds = synthetic_full()
    parts = omniglot_splits(ds, "lake", 0, (0.7, 0.1, 0.2))
    assert set(parts["test"].groups) == {f"ev{i:02d}" for i in range(20)}
    assert parts["test"].num_classes == 659
    assert len(parts["val"].groups) == 4 and len(parts["train"].groups) == 26
    assert not set(parts["val"].groups) & set(parts["train"].groups)


def test_unknown_split_and_bad_fractions() -> None:
    ds = synthetic_full()
    with pytest.raises(MetakitError, match="unknown Omniglot split"):
        omniglot_splits(ds, "vinyal", 0, (0.7, 0.1, 0.2))
    with pytest.raises(MetakitError, match="fractions"):
        omniglot_splits(ds, "lake", 0, (0.0, 0.0, 1.0))
