"""MovieLens 100K and 1M: the official GroupLens zips, verified, extracted atomically, parsed as-is.

The terms of MovieLens forbid redistribution, so nothing is stored with metakit: the loader
fetches the official ``ml-100k.zip`` / ``ml-1m.zip`` from GroupLens through
:func:`metakit.datasets.download.fetch` (sha256-verified, atomic rename, clear offline error), or
uses a copy placed by hand. Where it looks, in order:

1. ``root`` (``data.root`` in a recsys config): the zip itself, a folder holding the zip, the
   extracted ``ml-1m/`` folder, or a folder holding that folder;
2. ``$METAKIT_MOVIELENS``, read the same way;
3. ``$METAKIT_CACHE/movielens/`` (default ``~/.cache/metakit/movielens/``): the extracted folder,
   else the zip (downloaded there when absent).

A zip is always checked against the official sha256 before it is opened, then extracted into a
temporary folder that is renamed into place, so a half-extracted folder never exists. An extracted
folder placed by hand cannot be checked against the zip's sha256; its files are parsed strictly
instead (a malformed line fails with its file and line number).

File formats (``../shared/data/FORMATS.md``): both datasets are encoded latin-1. ML-100K has
``u.data`` (tab-separated ``user item rating timestamp``), ``u.item`` (``|``-separated, 19 genre
flags in ``u.genre`` order), ``u.user`` (``id|age|gender|occupation|zip``), ``u.genre`` and
``u.occupation``. ML-1M uses ``::``: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``),
``users.dat`` (``UserID::Gender::Age::Occupation::Zip-code``, age and occupation as codes) and
``movies.dat`` (``MovieID::Title (Year)::Genre|Genre``).

Both are decoded into one :class:`RatingsData`: integer-coded user features (gender, age band,
occupation, first character of the zip code) and item features (genre flags, release year); the
title is ignored. Ages of ML-100K are banded the way ML-1M codes them, so a model sees the same
kind of feature on either.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from metakit.datasets import DatasetSpec
from metakit.datasets.download import fetch, verify
from metakit.errors import MetakitError, unknown_name
from metakit.utils import cache_dir

ENCODING = "latin-1"
ENV_VAR = "METAKIT_MOVIELENS"


@dataclass(frozen=True)
class Archive:
    """One official MovieLens archive: where it is, how to check it, what it must contain."""

    name: str
    url: str
    sha256: str
    size: int
    required: tuple[str, ...]

    @property
    def filename(self) -> str:
        """The zip's file name, e.g. ``ml-1m.zip``."""
        return f"{self.name}.zip"


#: The official archives. sha256 and sizes as recorded by TensorFlow Datasets
#: (``tensorflow_datasets/url_checksums/movielens.txt``); GroupLens itself publishes MD5 sums only
#: (``ml-100k.zip.md5`` = ``0e33842e24a9c977be4e0107933c0723``, ``ml-1m.zip.md5`` =
#: ``c4d9eecfca2ab87c1945afe126590906``), which metakit does not check.
ARCHIVES: dict[str, Archive] = {
    "ml-100k": Archive(
        name="ml-100k",
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        size=4_924_029,
        required=("u.data", "u.item", "u.user", "u.genre", "u.occupation"),
    ),
    "ml-1m": Archive(
        name="ml-1m",
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        size=5_917_549,
        required=("ratings.dat", "users.dat", "movies.dat"),
    ),
}

#: ML-1M's age codes (the lower bound of each band); ML-100K's ages are banded the same way.
AGE_BANDS = (1, 18, 25, 35, 45, 50, 56)
#: ML-1M's genres in the order of its README; ML-100K adds "unknown" (read from ``u.genre``).
ML1M_GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
#: The user feature columns of :attr:`RatingsData.user_features`, in order.
USER_FEATURES = ("gender", "age", "occupation", "zip")


@dataclass
class RatingsData:
    """A ratings dataset with integer-coded side information.

    Users and items are re-indexed ``0..U-1`` and ``0..I-1`` (``user_ids`` / ``item_ids`` keep the
    original ids). Categorical features use code 0 for "unknown", so every table has at least one
    row.

    Attributes:
        user_features: ``[U, 4]`` int64 codes of gender, age band, occupation, zip prefix.
        user_vocab: the value behind each code, per feature (index 0 is ``"?"``).
        item_genres: ``[I, G]`` float32 genre flags.
        genres: the ``G`` genre names.
        item_year: ``[I]`` int64 code of the release year (0: unknown); ``years[code]`` is the year.
        ratings: ``user``, ``item`` (indices), ``rating`` (float32) and ``timestamp`` (int64) arrays.
    """

    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    user_features: np.ndarray
    user_vocab: dict[str, list[str]]
    item_genres: np.ndarray
    genres: list[str]
    item_year: np.ndarray
    years: list[int]
    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray
    item_titles: list[str] = field(default_factory=list)

    @property
    def num_users(self) -> int:
        """Number of users."""
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        """Number of items."""
        return len(self.item_ids)

    @property
    def num_ratings(self) -> int:
        """Number of ratings."""
        return len(self.rating)

    def user_vocab_sizes(self) -> list[int]:
        """Rows of each user feature's embedding table (codes are ``0..size-1``)."""
        return [len(self.user_vocab[f]) for f in USER_FEATURES]

    def describe(self) -> str:
        """One line: users, items, ratings, density."""
        density = self.num_ratings / max(1, self.num_users * self.num_items)
        return (f"{self.name}: {self.num_users:,} users, {self.num_items:,} items, {self.num_ratings:,} ratings "
                f"(density {100 * density:.2f}%)")


# -- finding and extracting the archive ------------------------------------------------------------


def movielens_dir() -> Path:
    """metakit's MovieLens cache folder (``$METAKIT_CACHE/movielens``)."""
    return cache_dir("movielens")


def _has_files(folder: Path, archive: Archive) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in archive.required)


def _candidates(location: Path, archive: Archive) -> tuple[Path | None, Path | None]:
    """(extracted folder, zip) found at ``location``, either may be ``None``."""
    if location.is_file():
        return None, location
    if _has_files(location, archive):
        return location, None
    if _has_files(location / archive.name, archive):
        return location / archive.name, None
    zip_path = location / archive.filename
    return None, zip_path if zip_path.is_file() else None


def extract_archive(zip_path: Path, dest: Path, archive: Archive) -> Path:
    """Extract ``zip_path``'s ``<name>/`` folder to ``dest`` atomically; return ``dest``.

    Members are checked first (CRC of every file, no absolute or ``..`` paths, the required
    files present); extraction goes to a temporary folder beside ``dest`` that is renamed onto it.
    """
    fix = f"delete it and let metakit download {archive.url} again, or place the official file there"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise MetakitError(f"{zip_path} is corrupt (CRC error in {bad}); {fix}.")
            names = zf.namelist()
            for n in names:
                if n.startswith(("/", "\\")) or ".." in Path(n).parts:
                    raise MetakitError(f"{zip_path} holds an unsafe path {n!r}; {fix}.")
            missing = [f for f in archive.required if f"{archive.name}/{f}" not in names]
            if missing:
                raise MetakitError(
                    f"{zip_path} is not the official {archive.filename}: {archive.name}/{missing[0]} is missing; {fix}."
                )
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".tmp", dir=dest.parent))
            try:
                zf.extractall(tmp, members=[n for n in names if n.startswith(f"{archive.name}/")])
                if dest.exists():  # another process finished first: keep its copy
                    return dest
                os.replace(tmp / archive.name, dest)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as exc:
        raise MetakitError(f"{zip_path} is not a readable zip ({exc}); {fix}.") from None
    except OSError as exc:
        raise MetakitError(f"could not extract {zip_path} to {dest} ({exc}); check the disk and permissions.") from None
    return dest


def locate_movielens(name: str, root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The extracted folder of MovieLens ``name`` (``ml-100k`` or ``ml-1m``), fetching it if needed.

    See the module docstring for where it looks. A zip found (or downloaded) is verified against
    :data:`ARCHIVES` before it is extracted into the cache.
    """
    if name not in ARCHIVES:
        raise unknown_name("MovieLens dataset", name, ARCHIVES)
    archive = ARCHIVES[name]
    places = [(Path(root).expanduser(), "data.root")] if root else []
    if os.environ.get(ENV_VAR):
        places.append((Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"))
    for place, origin in places:
        if not place.exists():
            raise MetakitError(f"{origin} points at {place}, which does not exist; fix the path or unset it.")
        folder, zip_path = _candidates(place, archive)
        if folder is not None:
            return folder
        if zip_path is not None:
            verify(zip_path, archive.sha256, what=f"MovieLens {archive.filename}")
            return extract_archive(zip_path, movielens_dir() / archive.name, archive)
        raise MetakitError(
            f"{origin} ({place}) holds neither {archive.filename} nor an extracted {archive.name}/ folder with "
            f"{', '.join(archive.required)}; point it at one of them."
        )
    cache = movielens_dir()
    if _has_files(cache / archive.name, archive):
        return cache / archive.name
    zip_path = cache / archive.filename
    if not zip_path.is_file() and not download:
        raise MetakitError(
            f"MovieLens {name} is not in {cache}; download {archive.url} and place {archive.filename} there "
            f"(or set data.root), or allow the download."
        )
    fetch(archive.url, zip_path, archive.sha256, what=f"MovieLens {archive.filename}")
    return extract_archive(zip_path, cache / archive.name, archive)


def movielens_status(name: str) -> str:
    """Where MovieLens ``name`` is locally, or where to put it; never downloads."""
    archive = ARCHIVES[name]
    env = os.environ.get(ENV_VAR)
    if env:
        folder, zip_path = _candidates(Path(env), archive)
        if folder is not None or zip_path is not None:
            return f"found through ${ENV_VAR}: {folder or zip_path}"
    cache = movielens_dir()
    if _has_files(cache / archive.name, archive):
        return f"extracted in {cache / archive.name}"
    if (cache / archive.filename).is_file():
        return f"zip in {cache} (verified and extracted on first use)"
    return f"downloaded on first use from {archive.url} into {cache} (or place {archive.filename} there)"


def ml100k_status() -> str:
    """``metakit datasets`` status line for MovieLens 100K."""
    return movielens_status("ml-100k")


def ml1m_status() -> str:
    """``metakit datasets`` status line for MovieLens 1M."""
    return movielens_status("ml-1m")


# -- parsing ---------------------------------------------------------------------------------------


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode(ENCODING)
    except OSError as exc:
        raise MetakitError(f"cannot read {path} ({exc}); check the file.") from None
    return [line for line in text.splitlines() if line.strip()]


def _split(path: Path, sep: str, min_fields: int) -> list[tuple[int, list[str]]]:
    rows = []
    for number, line in enumerate(_lines(path), start=1):
        fields = line.split(sep)
        if len(fields) < min_fields:
            raise MetakitError(
                f"{path} line {number} has {len(fields)} fields separated by {sep!r}, expected {min_fields}; "
                f"the file is damaged or not MovieLens (re-extract the official zip)."
            )
        rows.append((number, fields))
    return rows


def _int(path: Path, number: int, value: str, what: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise MetakitError(f"{path} line {number}: {what} {value!r} is not an integer; the file is damaged.") from None


def age_band(age: int) -> int:
    """The ML-1M age code of an age in years (``1`` under 18, then 18, 25, 35, 45, 50, 56)."""
    band = AGE_BANDS[0]
    for lower in AGE_BANDS[1:]:
        if age >= lower:
            band = lower
    return band


def _zip_prefix(zip_code: str) -> str:
    # The first character of a US zip code is its region; foreign codes start with a letter.
    zip_code = zip_code.strip()
    return zip_code[:1].upper() if zip_code else "?"


def _codes(values: Sequence[str], known: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    vocab = ["?"] + sorted(set(known if known is not None else values) - {"?"})
    index = {v: i for i, v in enumerate(vocab)}
    return np.array([index.get(v, 0) for v in values], dtype=np.int64), vocab


_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _ratings(path: Path, sep: str) -> tuple[np.ndarray, ...]:
    users, items, ratings, times = [], [], [], []
    for number, f in _split(path, sep, 4):
        users.append(_int(path, number, f[0], "user id"))
        items.append(_int(path, number, f[1], "item id"))
        r = _int(path, number, f[2], "rating")
        if not 1 <= r <= 5:
            raise MetakitError(f"{path} line {number}: rating {r} is outside 1..5; the file is damaged.")
        ratings.append(r)
        times.append(_int(path, number, f[3], "timestamp"))
    return (np.array(users, dtype=np.int64), np.array(items, dtype=np.int64),
            np.array(ratings, dtype=np.float32), np.array(times, dtype=np.int64))


def _assemble(name: str, folder: Path, users: dict[int, tuple[str, int, str, str]],
              items: dict[int, tuple[str, np.ndarray, int]], genres: list[str],
              ratings: tuple[np.ndarray, ...], ratings_file: str) -> RatingsData:
    raw_user, raw_item, rating, timestamp = ratings
    user_ids = np.array(sorted(users), dtype=np.int64)
    item_ids = np.array(sorted(items), dtype=np.int64)
    user_pos = {u: i for i, u in enumerate(user_ids.tolist())}
    item_pos = {m: i for i, m in enumerate(item_ids.tolist())}
    try:
        user = np.array([user_pos[u] for u in raw_user.tolist()], dtype=np.int64)
        item = np.array([item_pos[m] for m in raw_item.tolist()], dtype=np.int64)
    except KeyError as exc:
        raise MetakitError(f"{folder / ratings_file} rates id {exc.args[0]}, which its user/item file lacks; "
                           f"the files do not belong together (re-extract the official zip).") from None
    gender, g_vocab = _codes([users[u][0] for u in user_ids.tolist()])
    age, a_vocab = _codes([str(users[u][1]) for u in user_ids.tolist()], [str(a) for a in AGE_BANDS])
    occupation, o_vocab = _codes([users[u][2] for u in user_ids.tolist()])
    zips, z_vocab = _codes([users[u][3] for u in user_ids.tolist()])
    raw_years = [items[m][2] for m in item_ids.tolist()]
    years = [0] + sorted({y for y in raw_years if y > 0})
    year_pos = {y: i for i, y in enumerate(years)}
    return RatingsData(
        name=name,
        user_ids=user_ids,
        item_ids=item_ids,
        user_features=np.stack([gender, age, occupation, zips], axis=1),
        user_vocab={"gender": g_vocab, "age": a_vocab, "occupation": o_vocab, "zip": z_vocab},
        item_genres=np.stack([items[m][1] for m in item_ids.tolist()]).astype(np.float32)
        if len(item_ids) else np.zeros((0, len(genres)), np.float32),
        genres=genres,
        item_year=np.array([year_pos.get(y, 0) for y in raw_years], dtype=np.int64),
        years=years,
        user=user,
        item=item,
        rating=rating,
        timestamp=timestamp,
        item_titles=[items[m][0] for m in item_ids.tolist()],
    )


def read_ml100k(folder: str | os.PathLike) -> RatingsData:
    """Parse an extracted ``ml-100k/`` folder (``u.data``, ``u.item``, ``u.user``, ``u.genre``, ``u.occupation``)."""
    folder = Path(folder)
    _require(folder, ARCHIVES["ml-100k"])
    genre_rows = _split(folder / "u.genre", "|", 2)
    genres = [f[0] for _, f in sorted(genre_rows, key=lambda r: _int(folder / "u.genre", r[0], r[1][1], "genre index"))]
    occupations = [line.strip() for line in _lines(folder / "u.occupation")]
    users: dict[int, tuple[str, int, str, str]] = {}
    path = folder / "u.user"
    for number, f in _split(path, "|", 5):
        occupation = f[3].strip()
        if occupation not in occupations:
            raise MetakitError(f"{path} line {number}: occupation {occupation!r} is not in u.occupation; the file is damaged.")
        users[_int(path, number, f[0], "user id")] = (f[2].strip(), age_band(_int(path, number, f[1], "age")),
                                                       occupation, _zip_prefix(f[4]))
    items: dict[int, tuple[str, np.ndarray, int]] = {}
    path = folder / "u.item"
    for number, f in _split(path, "|", 5 + len(genres)):
        flags = np.array([_int(path, number, v, "genre flag") for v in f[5:5 + len(genres)]], dtype=np.float32)
        date = f[2].strip()  # e.g. 01-Jan-1995; empty for one item
        year = int(date[-4:]) if len(date) >= 4 and date[-4:].isdigit() else 0
        items[_int(path, number, f[0], "item id")] = (f[1], flags, year)
    return _assemble("ml-100k", folder, users, items, genres, _ratings(folder / "u.data", "\t"), "u.data")


def read_ml1m(folder: str | os.PathLike, name: str = "ml-1m") -> RatingsData:
    """Parse an extracted ``ml-1m/`` folder (``ratings.dat``, ``users.dat``, ``movies.dat``)."""
    folder = Path(folder)
    _require(folder, ARCHIVES["ml-1m"])
    users: dict[int, tuple[str, int, str, str]] = {}
    path = folder / "users.dat"
    for number, f in _split(path, "::", 5):
        age = _int(path, number, f[2], "age code")
        if age not in AGE_BANDS:
            raise MetakitError(f"{path} line {number}: age code {age} is not one of {AGE_BANDS}; the file is damaged.")
        users[_int(path, number, f[0], "user id")] = (f[1].strip(), age, str(_int(path, number, f[3], "occupation")),
                                                       _zip_prefix(f[4]))
    items: dict[int, tuple[str, np.ndarray, int]] = {}
    index = {g: i for i, g in enumerate(ML1M_GENRES)}
    path = folder / "movies.dat"
    for number, f in _split(path, "::", 3):
        title, genre_field = "::".join(f[1:-1]), f[-1]  # titles never hold "::", but stay safe
        flags = np.zeros(len(ML1M_GENRES), dtype=np.float32)
        for g in genre_field.strip().split("|"):
            if g not in index:
                raise MetakitError(f"{path} line {number}: unknown genre {g!r}; the file is damaged or not ML-1M.")
            flags[index[g]] = 1.0
        match = _YEAR.search(title)
        items[_int(path, number, f[0], "movie id")] = (title, flags, int(match.group(1)) if match else 0)
    return _assemble(name, folder, users, items, list(ML1M_GENRES), _ratings(folder / "ratings.dat", "::"), "ratings.dat")


def _require(folder: Path, archive: Archive) -> None:
    missing = [f for f in archive.required if not (folder / f).is_file()]
    if missing:
        raise MetakitError(f"{folder} lacks {missing[0]}; point at the extracted {archive.name}/ folder of the official zip.")


def load_movielens(name: str, root: str | os.PathLike | None = None, download: bool = True) -> RatingsData:
    """Locate (downloading if needed) and parse MovieLens ``name`` (``ml-100k`` or ``ml-1m``)."""
    folder = locate_movielens(name, root, download)
    return read_ml100k(folder) if name == "ml-100k" else read_ml1m(folder)


# --------------------------------------------------------------------------------------------
# Registry entries (named in metakit.recsys.plugin). Ratings, not class datasets: they are
# listed so that ``metakit datasets`` shows every dataset metakit reads, and they are used
# through ``metakit recsys`` (data.source).


def _movielens_spec(name: str, summary: str, status: str) -> DatasetSpec:
    """The entry of MovieLens release ``name`` (``ml-100k``, ``ml-1m``), whose local status is ``status``."""
    return DatasetSpec(
        name=name,
        summary=summary,
        source=f"https://files.grouplens.org/datasets/movielens/{name}.zip (sha256-verified; or placed by hand "
        "through data.root or $METAKIT_MOVIELENS)",
        license="GroupLens research-use terms: no redistribution, cite Harper & Konstan 2015",
        task_type="recommendation",
        loader="metakit.recsys.movielens:load_movielens",
        status=f"metakit.recsys.movielens:{status}",
        splits=("cold-start",),
    )


ML100K_SPEC = _movielens_spec(
    "ml-100k",
    "MovieLens 100K (Harper & Konstan 2015): 100,000 ratings (1-5) by 943 users of 1,682 movies, "
    "with user demographics; users as tasks in metakit recsys.",
    "ml100k_status",
)
ML1M_SPEC = _movielens_spec(
    "ml-1m",
    "MovieLens 1M (Harper & Konstan 2015): 1,000,209 ratings (1-5) by 6,040 users of 3,706 movies, "
    "with user demographics; users as tasks in metakit recsys.",
    "ml1m_status",
)
