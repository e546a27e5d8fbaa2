"""MovieLens 100K, 1M and the CSV releases: the official GroupLens zips, verified, extracted atomically, parsed as-is.

The terms of MovieLens forbid redistribution, so nothing is stored with metakit: the loader
fetches the official zip (``ml-100k.zip``, ``ml-1m.zip``, ``ml-latest-small.zip``,
``ml-25m.zip``, ``ml-32m.zip``) from GroupLens through :func:`metakit.datasets.download.fetch`
(atomic rename, clear offline error), or uses a copy placed by hand. Where it looks, in order:

1. ``root`` (``data.root`` in a recsys config): the zip itself, a folder holding the zip, the
   extracted ``ml-1m/`` (etc.) folder, or a folder holding that folder;
2. ``$METAKIT_MOVIELENS``, read the same way;
3. ``$METAKIT_CACHE/movielens/`` (default ``~/.cache/metakit/movielens/``): the extracted folder,
   else the zip (downloaded there when absent).

A zip is always checked before it is opened: ML-100K and ML-1M against their sha256, the CSV
releases against the MD5 GroupLens publishes (fixed for ml-25m and ml-32m; for ml-latest-small,
which GroupLens re-issues, read from GroupLens' ``ml-latest-small.zip.md5`` beside the zip). A
download is renamed onto the zip's path only once it matched. The zip is then extracted into a
temporary folder that is renamed into place, so a half-extracted folder never exists (of a CSV
release only the files read and the README are extracted: ML-25M's tag genome alone is 400 MB).
An extracted folder placed by hand cannot be checked against the zip's checksum; its files are
parsed strictly instead (a malformed line fails with its file and line number).

File formats (``../shared/data/FORMATS.md``): ML-100K and ML-1M are encoded latin-1. ML-100K has
``u.data`` (tab-separated ``user item rating timestamp``), ``u.item`` (``|``-separated, 19 genre
flags in ``u.genre`` order), ``u.user`` (``id|age|gender|occupation|zip``), ``u.genre`` and
``u.occupation``. ML-1M uses ``::``: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``),
``users.dat`` (``UserID::Gender::Age::Occupation::Zip-code``, age and occupation as codes) and
``movies.dat`` (``MovieID::Title (Year)::Genre|Genre``). The CSV releases are UTF-8 with a header
row: ``ratings.csv`` (``userId,movieId,rating,timestamp``, half stars 0.5-5.0) and ``movies.csv``
(``movieId,title,genres``, titles quoted when they hold a comma); they have no user demographics.

All are decoded into one :class:`RatingsData`: integer-coded user features (gender, age band,
occupation, first character of the zip code; all code 0, "unknown", for the CSV releases) and
item features (genre flags, release year); the title is ignored. Ages of ML-100K are banded the
way ML-1M codes them, so a model sees the same kind of feature on either.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from metakit.datasets import DatasetSpec
from metakit.datasets.download import fetch, verify
from metakit.errors import MetakitError, unknown_name
from metakit.utils import cache_dir

ENCODING = "latin-1"
ENV_VAR = "METAKIT_MOVIELENS"
#: The files metakit reads from a CSV release (``links.csv``, ``tags.csv`` are not used).
CSV_FILES = ("ratings.csv", "movies.csv")


@dataclass(frozen=True)
class Archive:
    """One official MovieLens archive: where it is, how to check it, what it must contain."""

    name: str
    url: str
    sha256: str | None
    size: int | None
    required: tuple[str, ...]
    #: GroupLens' own MD5 of the zip, where it is fixed (the numbered releases).
    md5: str | None = None
    #: Where GroupLens publishes the MD5 of a release that changes (``ml-latest-small``).
    md5_url: str | None = None

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
    # The CSV releases: GroupLens publishes an MD5 beside each zip (``<zip>.md5``). The numbered
    # releases never change, so their MD5 is fixed here; ml-latest-small is re-issued from time
    # to time, so its MD5 is read from GroupLens' ``.md5`` file when it is downloaded (or from
    # that file placed beside a zip placed by hand).
    "ml-latest-small": Archive(
        name="ml-latest-small",
        url="https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        sha256=None, size=None, required=CSV_FILES,
        md5_url="https://files.grouplens.org/datasets/movielens/ml-latest-small.zip.md5",
    ),
    "ml-25m": Archive(
        name="ml-25m",
        url="https://files.grouplens.org/datasets/movielens/ml-25m.zip",
        sha256=None, size=261_978_986, required=CSV_FILES, md5="6b51fb2759a8657d3bfcbfc42b592ada",
    ),
    "ml-32m": Archive(
        name="ml-32m",
        url="https://files.grouplens.org/datasets/movielens/ml-32m.zip",
        sha256=None, size=None, required=CSV_FILES, md5="d472be332d4daa821edc399621853b57",
    ),
}
#: The releases in MovieLens' CSV format (no user demographics, half-star ratings).
CSV_RELEASES = ("ml-latest-small", "ml-25m", "ml-32m")

#: ML-1M's age codes (the lower bound of each band); ML-100K's ages are banded the same way.
AGE_BANDS = (1, 18, 25, 35, 45, 50, 56)
#: ML-1M's genres in the order of its README; ML-100K adds "unknown" (read from ``u.genre``).
ML1M_GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
#: The user feature columns of :attr:`RatingsData.user_features`, in order.
USER_FEATURES = ("gender", "age", "occupation", "zip")


def _length_of(attr: str, doc: str) -> property:
    """A read-only property: the length of the array ``attr``."""
    return property(lambda self: len(getattr(self, attr)), doc=doc)


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

    num_users = _length_of("user_ids", "Number of users.")
    num_items = _length_of("item_ids", "Number of items.")
    num_ratings = _length_of("rating", "Number of ratings.")

    @property
    def has_user_features(self) -> bool:
        """Whether any user feature has a known value (false for the CSV releases: no demographics)."""
        return bool(self.num_users) and bool(self.user_features.any())

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
                wanted = (*archive.required, "README.txt") if archive.name in CSV_RELEASES else None
                zf.extractall(tmp, members=[n for n in names if n.startswith(f"{archive.name}/")
                                            and (wanted is None or Path(n).name in wanted)])
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
            check_archive(zip_path, archive, download)
            return extract_archive(zip_path, movielens_dir() / archive.name, archive)
        raise MetakitError(
            f"{origin} ({place}) holds neither {archive.filename} nor an extracted {archive.name}/ folder with "
            f"{', '.join(archive.required)}; point it at one of them."
        )
    cache = movielens_dir()
    if _has_files(cache / archive.name, archive):
        return cache / archive.name
    zip_path = cache / archive.filename
    download_archive(archive, zip_path, download)
    return extract_archive(zip_path, cache / archive.name, archive)


_MD5 = re.compile(r"\b([0-9a-fA-F]{32})\b")


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex MD5 of a file (GroupLens publishes MD5 sums, so that is what a zip is checked against)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def published_md5(archive: Archive, zip_path: Path, download: bool = True) -> str | None:
    """The MD5 GroupLens publishes for ``archive``: fixed in :data:`ARCHIVES`, or read from ``<zip>.md5``.

    For a release whose MD5 changes (``ml-latest-small``) the ``.md5`` file is expected beside
    the zip; it is downloaded from GroupLens when absent (and ``download`` allows it).
    """
    if archive.md5 is not None:
        return archive.md5
    if archive.md5_url is None:
        return None
    side = zip_path.with_name(zip_path.name + ".md5")
    if not side.is_file():
        if not download:
            raise MetakitError(f"{zip_path} cannot be checked: {side.name} is missing; download {archive.md5_url} "
                               f"and place it beside the zip (or allow the download).")
        fetch(archive.md5_url, side, None, what=f"GroupLens' checksum {side.name}")
    match = _MD5.search(side.read_text(encoding="ascii", errors="replace"))
    if match is None:
        raise MetakitError(f"{side} holds no MD5 sum; delete it and download {archive.md5_url} again.")
    return match.group(1).lower()


def check_archive(zip_path: Path, archive: Archive, download: bool = True) -> None:
    """Raise a one-line error unless ``zip_path`` matches the checksums of ``archive`` (sha256 and/or MD5)."""
    verify(zip_path, archive.sha256, what=f"MovieLens {archive.filename}")
    md5 = published_md5(archive, zip_path, download)
    if md5 is not None and (got := md5_file(zip_path)) != md5:
        raise MetakitError(f"checksum mismatch for MovieLens {archive.filename} at {zip_path}: MD5 {got}, GroupLens "
                           f"publishes {md5}; delete the file and download {archive.url} again, or place the official file there.")


def download_archive(archive: Archive, zip_path: Path, download: bool = True) -> Path:
    """``zip_path``, verified; downloaded from GroupLens first when absent.

    The download lands under a temporary name and is renamed onto ``zip_path`` only after every
    checksum matched, so ``zip_path`` is either absent or the official file.
    """
    if zip_path.is_file():
        check_archive(zip_path, archive, download)
        return zip_path
    if not download:
        raise MetakitError(f"MovieLens {archive.name} is not in {zip_path.parent}; download {archive.url} and place "
                           f"{archive.filename} there (or set data.root), or allow the download.")
    if archive.md5 is None and archive.md5_url is None:  # sha256 only: fetch checks it before the rename
        return fetch(archive.url, zip_path, archive.sha256, what=f"MovieLens {archive.filename}")
    partial = zip_path.with_name(f".{zip_path.name}.unverified")
    if os.environ.get("METAKIT_OFFLINE"):
        raise MetakitError(f"MovieLens {archive.filename} is not at {zip_path} and METAKIT_OFFLINE is set; "
                           f"download {archive.url} and place it there.")
    try:
        fetch(archive.url, partial, archive.sha256, what=f"MovieLens {archive.filename}")
    except MetakitError:
        raise MetakitError(f"could not download MovieLens {archive.filename} from {archive.url}; download it by hand "
                           f"and place it at {zip_path}.") from None
    try:
        md5 = published_md5(archive, zip_path, download)
        if md5 is not None and (got := md5_file(partial)) != md5:
            raise MetakitError(f"the download of {archive.url} has MD5 {got}, GroupLens publishes {md5}; "
                               f"try again later, or download it by hand and place it at {zip_path}.")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, zip_path)
    return zip_path


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


# The ``metakit datasets`` status line of each release (named by its DatasetSpec's ``status``).
ml100k_status = partial(movielens_status, "ml-100k")
ml1m_status = partial(movielens_status, "ml-1m")
ml_latest_small_status = partial(movielens_status, "ml-latest-small")
ml25m_status = partial(movielens_status, "ml-25m")
ml32m_status = partial(movielens_status, "ml-32m")


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


CSV_RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]
CSV_MOVIES_HEADER = ["movieId", "title", "genres"]
NO_GENRES = "(no genres listed)"


def _csv_header(path: Path, expected: list[str]) -> None:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError) as exc:
        raise MetakitError(f"cannot read {path} ({exc}); re-extract the official zip.") from None
    if [h.strip().lstrip("\ufeff") for h in header] != expected:
        raise MetakitError(f"{path} starts with {','.join(header)!r}, expected the header {','.join(expected)!r}; "
                           f"it is not a MovieLens CSV release (re-extract the official zip).")


def _check_csv_rating_line(path: Path, number: int, line: str) -> None:
    """Raise the one-line error for line ``number`` of ``ratings.csv`` if it is malformed."""
    fields = line.strip().split(",")
    if len(fields) != 4:
        raise MetakitError(f"{path} line {number} has {len(fields)} comma-separated fields, expected 4 "
                           f"(userId,movieId,rating,timestamp); the file is damaged.")
    for value, what in zip(fields, ("user id", "movie id", "rating", "timestamp")):
        try:
            float(value)
        except ValueError:
            raise MetakitError(f"{path} line {number}: {what} {value!r} is not a number; the file is damaged.") from None


def _csv_ratings(path: Path) -> tuple[np.ndarray, ...]:
    """``ratings.csv`` as (user id, movie id, rating, timestamp) arrays; half stars 0.5..5.0 checked."""
    _csv_header(path, CSV_RATINGS_HEADER)
    try:
        # NumPy's C parser: ML-25M's 25 million lines in seconds, where a Python loop takes minutes.
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2, encoding="utf-8")
    except ValueError:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if number > 1 and line.strip():
                    _check_csv_rating_line(path, number, line)
        raise MetakitError(f"{path} could not be parsed as userId,movieId,rating,timestamp; the file is damaged.") from None
    except OSError as exc:
        raise MetakitError(f"cannot read {path} ({exc}); check the file.") from None
    if table.size == 0:
        table = np.zeros((0, 4))
    if table.shape[1] != 4:
        raise MetakitError(f"{path} has {table.shape[1]} columns, expected 4 (userId,movieId,rating,timestamp).")
    rating = table[:, 2]
    bad = np.flatnonzero((rating < 0.5) | (rating > 5.0) | (rating * 2 != np.round(rating * 2)))
    if len(bad):
        raise MetakitError(f"{path} line {bad[0] + 2}: rating {rating[bad[0]]} is not a half star in 0.5..5.0; "
                           f"the file is damaged.")
    return (table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), rating.astype(np.float32),
            table[:, 3].astype(np.int64))


def read_movielens_csv(folder: str | os.PathLike, name: str = "ml-latest-small") -> RatingsData:
    """Parse an extracted CSV release (``ratings.csv``, ``movies.csv``): ml-latest-small, ml-25m, ml-32m.

    These releases have no user demographics: every user gets code 0 ("?") for every user
    feature, so :attr:`RatingsData.has_user_features` is false and a model sees item content
    only. Genres are the ones ``movies.csv`` names (sorted; ``(no genres listed)`` is no flag),
    the release year is read from the title.
    """
    folder = Path(folder)
    missing = [f for f in CSV_FILES if not (folder / f).is_file()]
    if missing:
        raise MetakitError(f"{folder} lacks {missing[0]}; point at the extracted {name}/ folder of the official zip.")
    path = folder / "movies.csv"
    _csv_header(path, CSV_MOVIES_HEADER)
    movies: dict[int, tuple[str, list[str], int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        for number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 3:
                raise MetakitError(f"{path} line {number} has {len(row)} fields, expected 3 (movieId,title,genres); "
                                   f"the file is damaged.")
            title = row[1].strip()
            match = _YEAR.search(title)
            genres = [g for g in row[2].split("|") if g and g != NO_GENRES]
            movies[_int(path, number, row[0], "movie id")] = (title, genres, int(match.group(1)) if match else 0)
    genres = sorted({g for _, gs, _ in movies.values() for g in gs})
    index = {g: i for i, g in enumerate(genres)}
    items: dict[int, tuple[str, np.ndarray, int]] = {}
    for movie, (title, gs, year) in movies.items():
        flags = np.zeros(len(genres), dtype=np.float32)
        flags[[index[g] for g in gs]] = 1.0
        items[movie] = (title, flags, year)
    ratings = _csv_ratings(folder / "ratings.csv")
    users = {int(u): ("?", 0, "?", "?") for u in np.unique(ratings[0]).tolist()}
    data = _assemble(name, folder, users, items, genres, ratings, "ratings.csv")
    data.user_vocab = {f: ["?"] for f in USER_FEATURES}  # every code is 0: one row per user-feature table
    return data


def load_movielens(name: str, root: str | os.PathLike | None = None, download: bool = True) -> RatingsData:
    """Locate (downloading if needed) and parse MovieLens ``name`` (see :data:`ARCHIVES`)."""
    folder = locate_movielens(name, root, download)
    if name in CSV_RELEASES:
        return read_movielens_csv(folder, name)
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
        source=f"https://files.grouplens.org/datasets/movielens/{name}.zip "
        f"({'MD5 as GroupLens publishes it' if name in CSV_RELEASES else 'sha256'}-verified; or placed by hand "
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
ML_LATEST_SMALL_SPEC = _movielens_spec(
    "ml-latest-small",
    "MovieLens latest-small (GroupLens, re-issued from time to time): about 100,000 half-star ratings "
    "(0.5-5) by about 600 users of about 9,700 movies; no user demographics.",
    "ml_latest_small_status",
)
ML25M_SPEC = _movielens_spec(
    "ml-25m",
    "MovieLens 25M (GroupLens 2019): 25,000,095 half-star ratings by 162,541 users of 59,047 movies; "
    "no user demographics.",
    "ml25m_status",
)
ML32M_SPEC = _movielens_spec(
    "ml-32m",
    "MovieLens 32M (GroupLens 2024): 32,000,204 half-star ratings by 200,948 users of 87,585 movies; "
    "no user demographics.",
    "ml32m_status",
)
