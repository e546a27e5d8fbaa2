"""Intent-classification datasets as few-shot class datasets of frozen sentence embeddings.

Each dataset is read from its official files, every sentence is embedded once by a frozen encoder
(all-MiniLM-L6-v2 by default, cached on disk by :mod:`metakit.text.embeddings`), and the result is
a :class:`~metakit.datasets.base.ClassDataset` whose items are float32 embeddings ``[n, 384]``,
whose classes are intents and whose groups are domains (HWU64 scenarios, CLINC150 domains), so
every learner, ``metakit train/evaluate/compare`` and the class or domain splits work unchanged.

* **Banking77** (Casanueva et al. 2020): 77 intents of one domain (online banking); ``train.csv``
  and ``test.csv`` of github.com/PolyAI-LDN/task-specific-datasets are pooled (13,083 queries)
  and split by intent (``split: class``).
* **HWU64** (Liu et al. 2019): 64 intents in 18 scenarios; fold 1 of the authors' 10-fold
  cross-validation (``KFold_1/trainset`` and ``testset``, 11,036 utterances, pooled), text from the
  ``answer_from_anno`` column; split by scenario (``split: domain``).
* **Your own texts** (``csv``, ``jsonl``): a CSV/TSV file or JSON Lines of labelled sentences;
  the labels are the classes, an optional group column gives their groups (``split: group``).
* **CLINC150** (Larson et al. 2019): 150 intents in 10 domains; the in-scope ``train``, ``val`` and
  ``test`` parts of ``data_full.json`` pooled (150 per intent; the out-of-scope queries are not an
  intent and are left out), domains from ``domains.json``; split by domain (``split: domain``).

Exact duplicate (sentence, intent) pairs are dropped, so a sentence never appears as its own query.

Where the files come from, in order: ``dataset.root`` (a folder holding them), the environment
variable ``$METAKIT_<NAME>``, then ``cache_dir(<name>)`` (``$METAKIT_CACHE/<name>``), where missing
files are downloaded from the official repositories at a pinned commit and verified by sha256
before an atomic rename. Files you supply are validated but not checksum-verified.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metakit.datasets import DatasetSpec
from metakit.datasets.base import ClassDataset
from metakit.datasets.download import fetch
from metakit.errors import MetakitError, unknown_name
from metakit.text.embeddings import DEFAULT_ENCODER, Encoder, embed_texts
from metakit.utils import cache_dir, sha256_file

__all__ = [
    "IntentData",
    "banking77_status",
    "clinc150_status",
    "domain_splits",
    "hwu64_manifest_sha256",
    "hwu64_status",
    "intent_dataset",
    "load_banking77",
    "load_clinc150",
    "load_csv",
    "load_hwu64",
    "load_jsonl",
    "read_banking77",
    "read_clinc150",
    "read_hwu64",
    "read_table",
    "table_status",
]

# --------------------------------------------------------------------------------------------
# Official sources, pinned to a commit. The sha256 values of Banking77 and HWU64 match the copies
# staged in ../shared/data (their READMEs); CLINC150's were recorded by several independent
# projects that pin the same commit of clinc/oos-eval (data_full.json is 2,495,390 bytes).

BANKING77_COMMIT = "57ec275d8078af65b7731c2a98be812d844a6d6b"
BANKING77_BASE = f"https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/{BANKING77_COMMIT}/banking_data"
BANKING77_FILES = {
    "train.csv": "b06e26ac675513959a63135f11b94ea7786ed02da65db93a5650d8838cbc664b",
    "test.csv": "d12d6e3bc4c3103966ae786dc435913c0c563dfa328f5a3646d0e62cfeeb474d",
    "categories.json": "53261da888122daf2d120d925458631d9619e15d82e56052e7a42e535ce32b63",
}

HWU64_COMMIT = "f6071b496b17d71e6eb43f543af0707f4ff30557"
HWU64_BASE = (
    f"https://raw.githubusercontent.com/xliuhw/NLU-Evaluation-Data/{HWU64_COMMIT}/CrossValidation/"
    "autoGeneFromRealAnno/autoGene_2018_03_22-13_01_25_169/CrossValidation/KFold_1"
)
#: The 64 labels (``scenario_intent``), one CSV file each in ``trainset/`` and ``testset/``.
HWU64_LABELS = (
    "alarm_query alarm_remove alarm_set audio_volume_down audio_volume_mute audio_volume_up calendar_query "
    "calendar_remove calendar_set cooking_recipe datetime_convert datetime_query email_addcontact email_query "
    "email_querycontact email_sendemail general_affirm general_commandstop general_confirm general_dontcare "
    "general_explain general_joke general_negate general_praise general_quirky general_repeat iot_cleaning "
    "iot_coffee iot_hue_lightchange iot_hue_lightdim iot_hue_lightoff iot_hue_lighton iot_hue_lightup "
    "iot_wemo_off iot_wemo_on lists_createoradd lists_query lists_remove music_likeness music_query "
    "music_settings news_query play_audiobook play_game play_music play_podcasts play_radio qa_currency "
    "qa_definition qa_factoid qa_maths qa_stock recommendation_events recommendation_locations "
    "recommendation_movies social_post social_query takeaway_order takeaway_query transport_query "
    "transport_taxi transport_ticket transport_traffic weather_query"
).split()
#: sha256 of the ``sha256sum``-format manifest of the 128 files (lines ``HASH  KFold_1/<part>/<label>.csv``
#: sorted by path): one number that pins every file of the fold.
HWU64_MANIFEST_SHA256 = "c5b52172c8a5c9c6e67e28f882ce07738cd786e72e13d134e2e375b18efe863b"
HWU64_COLUMNS = ("answerid", "scenario", "intent", "answer_annotation", "answer_from_anno", "answer_from_user")

CLINC150_COMMIT = "828f8093932c8fe6ca7936c3d2e52903b1c523de"
CLINC150_BASE = f"https://raw.githubusercontent.com/clinc/oos-eval/{CLINC150_COMMIT}/data"
CLINC150_FILES = {
    "data_full.json": "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0",
    "domains.json": "b947b579d3b8e74b06f93b01083d8efaff2888b43a3e362533bd88a6e1211b3a",
}
CLINC150_PARTS = ("train", "val", "test")  # in-scope parts; oos_* hold the out-of-scope queries


# --------------------------------------------------------------------------------------------
# Sentences and intents, before embedding


@dataclass
class IntentData:
    """Sentences with their intents, as read from a dataset's files.

    Attributes:
        name: dataset name.
        texts: the sentences.
        intents: the intent of each sentence.
        domains: each intent's domain (HWU64 scenario, CLINC150 domain), or ``None``.
        source: where the files were read from (named in errors).
    """

    name: str
    texts: list[str]
    intents: list[str]
    domains: dict[str, str] | None
    source: str

    def deduplicated(self) -> IntentData:
        """The same data without repeated (sentence, intent) pairs (first occurrence kept)."""
        seen: set[tuple[str, str]] = set()
        texts, intents = [], []
        for t, i in zip(self.texts, self.intents):
            if (t, i) not in seen:
                seen.add((t, i))
                texts.append(t)
                intents.append(i)
        return IntentData(self.name, texts, intents, self.domains, self.source)


def _check_intents(data: IntentData, expected: Sequence[str] | None) -> None:
    if not data.texts:
        raise MetakitError(f"{data.name}: no sentences in {data.source}; the files are empty or truncated.")
    present = set(data.intents)
    if expected is not None:
        unknown = sorted(present - set(expected))
        if unknown:
            raise MetakitError(
                f"{data.name}: {data.source} has sentences of intent(s) {unknown[:3]} that the intent list does not "
                f"name; use the official files."
            )
        empty = [i for i in expected if i not in present]
        if empty:
            raise MetakitError(
                f"{data.name}: intent(s) {empty[:3]} have no sentences in {data.source} (empty classes); "
                f"the files are incomplete, replace them with the official ones."
            )
    if data.domains is not None:
        missing = sorted(present - set(data.domains))
        if missing:
            raise MetakitError(f"{data.name}: intent(s) {missing[:3]} have no domain in {data.source}.")


INPUTS = ("embeddings", "tokens")


def intent_dataset(
    data: IntentData,
    encoder: str | Encoder = DEFAULT_ENCODER,
    batch_size: int = 64,
    progress: bool = True,
    inputs: str = "embeddings",
    max_length: int = 128,
) -> ClassDataset:
    """Embed ``data``'s sentences (cached) and return them as a class dataset.

    Classes are the intents in sorted order; groups are their domains when ``data`` has them.
    ``inputs: tokens`` stores each sentence's token ids instead (float32 ``[n, L]``, at most
    ``max_length`` ids, padded with 0) for a backbone that runs the encoder itself
    (``backbone: transformer``, :mod:`metakit.text.encoder`); items and their order are the
    same either way, so the same seed draws the same episodes from both.
    """
    if inputs not in INPUTS:
        raise unknown_name("dataset inputs", inputs, INPUTS)
    data = data.deduplicated()
    _check_intents(data, None)
    names = sorted(set(data.intents))
    index = {n: i for i, n in enumerate(names)}
    if inputs == "tokens":
        if not isinstance(encoder, str):
            raise MetakitError("inputs: tokens needs encoder to name a registered text model, not an Encoder object.")
        from metakit.text.encoder import tokenize_texts

        features = tokenize_texts(data.texts, encoder, max_length)
    else:
        features = embed_texts(data.texts, encoder, what=data.name, batch_size=batch_size, progress=progress)
    return ClassDataset(
        name=data.name,
        images=features,
        labels=torch.tensor([index[i] for i in data.intents], dtype=torch.long),
        class_names=names,
        class_groups=[data.domains[n] for n in names] if data.domains is not None else None,
    )


# --------------------------------------------------------------------------------------------
# Readers of the official formats


def _read_csv(path: Path, delimiter: str, columns: Sequence[str], what: str) -> list[dict[str, str]]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = reader.fieldnames or []
            missing = [c for c in columns if c not in header]
            if missing:
                raise MetakitError(
                    f"{what}: {path} lacks column(s) {missing} (header {header}); use the official file."
                )
            return list(reader)
    except UnicodeDecodeError:
        raise MetakitError(f"{what}: {path} is not UTF-8 text; use the official file.") from None
    except csv.Error as exc:
        raise MetakitError(f"{what}: {path} is not valid CSV ({exc}); use the official file.") from None


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetakitError(f"{what}: {path} is not valid JSON ({type(exc).__name__}); use the official file.") from None


def read_banking77(folder: str | os.PathLike) -> IntentData:
    """Banking77 ``train.csv`` + ``test.csv`` (header ``text,category``); ``categories.json`` if present."""
    folder = Path(folder)
    texts, intents = [], []
    for part in ("train.csv", "test.csv"):
        for row in _read_csv(folder / part, ",", ("text", "category"), "banking77"):
            text, intent = (row["text"] or "").strip(), (row["category"] or "").strip()
            if text and intent:
                texts.append(text)
                intents.append(intent)
    data = IntentData("banking77", texts, intents, None, str(folder))
    expected = None
    if (folder / "categories.json").is_file():
        expected = _read_json(folder / "categories.json", "banking77")
        if not isinstance(expected, list) or not all(isinstance(c, str) for c in expected):
            raise MetakitError(f"banking77: {folder / 'categories.json'} must be a JSON list of intent names.")
    _check_intents(data, expected)
    return data


def read_hwu64(folder: str | os.PathLike) -> IntentData:
    """HWU64 fold files ``trainset/<label>.csv`` and ``testset/<label>.csv`` (``;``-separated).

    ``folder`` holds ``trainset/`` and ``testset/`` (the ``KFold_1`` folder). The label is the file
    name; every row's ``scenario`` + ``_`` + ``intent`` must equal it.
    """
    folder = Path(folder)
    texts, intents, domains = [], [], {}
    labels = sorted({p.stem for part in ("trainset", "testset") for p in (folder / part).glob("*.csv")})
    if not labels:
        raise MetakitError(f"hwu64: no <label>.csv files in {folder}/trainset or testset; use the official fold.")
    for part in ("trainset", "testset"):
        for label in labels:
            path = folder / part / f"{label}.csv"
            if not path.is_file():
                continue  # a label missing from one part is caught below if it has no sentences at all
            for row in _read_csv(path, ";", HWU64_COLUMNS, "hwu64"):
                scenario, intent = (row["scenario"] or "").strip(), (row["intent"] or "").strip()
                if f"{scenario}_{intent}" != label:
                    raise MetakitError(
                        f"hwu64: {path} holds a row of {scenario}_{intent}, not {label}; use the official fold."
                    )
                text = (row["answer_from_anno"] or row["answer_from_user"] or "").strip()
                if text:
                    texts.append(text)
                    intents.append(label)
                    domains[label] = scenario
    data = IntentData("hwu64", texts, intents, domains, str(folder))
    _check_intents(data, labels)
    return data


def read_clinc150(folder: str | os.PathLike) -> IntentData:
    """CLINC150 ``data_full.json`` (in-scope parts) with domains from ``domains.json``."""
    folder = Path(folder)
    raw = _read_json(folder / "data_full.json", "clinc150")
    if not isinstance(raw, dict) or not all(isinstance(raw.get(p), list) for p in CLINC150_PARTS):
        raise MetakitError(
            f"clinc150: {folder / 'data_full.json'} must be an object with lists {list(CLINC150_PARTS)} of "
            f"[utterance, intent] pairs; use the official file."
        )
    texts, intents = [], []
    for part in CLINC150_PARTS:
        for pair in raw[part]:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise MetakitError(f"clinc150: {part} entry {pair!r} is not an [utterance, intent] pair.")
            text, intent = pair[0].strip(), pair[1].strip()
            if text and intent and intent != "oos":
                texts.append(text)
                intents.append(intent)
    by_domain = _read_json(folder / "domains.json", "clinc150")
    if not isinstance(by_domain, dict) or not all(isinstance(v, list) for v in by_domain.values()):
        raise MetakitError(f"clinc150: {folder / 'domains.json'} must map each domain to a list of intents.")
    domains = {intent: domain for domain, names in by_domain.items() for intent in names}
    data = IntentData("clinc150", texts, intents, domains, str(folder))
    _check_intents(data, sorted(domains))
    return data


# --------------------------------------------------------------------------------------------
# Locating and downloading the files


def _hwu64_fold(location: Path) -> Path | None:
    for candidate in (location, location / "KFold_1"):
        if (candidate / "trainset").is_dir() and (candidate / "testset").is_dir():
            return candidate
    return None


def _files_in(names: Sequence[str]) -> Callable[[Path], Path | None]:
    return lambda location: location if all((location / n).is_file() for n in names) else None


def hwu64_manifest_sha256(fold: str | os.PathLike) -> str:
    """sha256 of the ``sha256sum`` manifest of a fold folder's CSV files (``KFold_1/<part>/<label>.csv``)."""
    fold = Path(fold)
    paths = sorted(
        (f"KFold_1/{p.parent.name}/{p.name}", p) for part in ("trainset", "testset") for p in (fold / part).glob("*.csv")
    )
    manifest = "".join(f"{sha256_file(p)}  {name}\n" for name, p in paths)
    return hashlib.sha256(manifest.encode()).hexdigest()


def _download_banking77(dest: Path) -> Path:
    for name, sha in BANKING77_FILES.items():
        fetch(f"{BANKING77_BASE}/{name}", dest / name, sha, what=f"Banking77 {name}")
    return dest


def _download_clinc150(dest: Path) -> Path:
    for name, sha in CLINC150_FILES.items():
        fetch(f"{CLINC150_BASE}/{name}", dest / name, sha, what=f"CLINC150 {name}")
    return dest


def _download_hwu64(dest: Path) -> Path:
    """Download the 128 files of fold 1 into a temporary folder; rename it to ``dest/KFold_1`` once verified."""
    final = dest / "KFold_1"
    manual = (
        f"download trainset/<label>.csv and testset/csv/<label>.csv from {HWU64_BASE} by hand into "
        f"{final}/trainset and {final}/testset, or set dataset.root"
    )
    if os.environ.get("METAKIT_OFFLINE"):
        raise MetakitError(f"HWU64 is not at {final} and METAKIT_OFFLINE is set; {manual}.")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".KFold_1.", suffix=".partial", dir=dest))
    try:
        for label in HWU64_LABELS:
            for part, remote in (("trainset", "trainset"), ("testset", "testset/csv")):
                try:
                    fetch(f"{HWU64_BASE}/{remote}/{label}.csv", tmp / part / f"{label}.csv", None, what=f"HWU64 {part}/{label}.csv")
                except MetakitError:
                    raise MetakitError(f"could not download HWU64 {part}/{label}.csv from {HWU64_BASE}; {manual}.") from None
        got = hwu64_manifest_sha256(tmp)
        if got != HWU64_MANIFEST_SHA256:
            raise MetakitError(
                f"checksum mismatch for HWU64 fold 1 downloaded from {HWU64_BASE}: manifest sha256 {got[:16]}..., "
                f"expected {HWU64_MANIFEST_SHA256[:16]}...; {manual}."
            )
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@dataclass(frozen=True)
class _Layout:
    name: str
    title: str
    expected: str  # the files a location must hold, for error messages
    find: Callable[[Path], Path | None]
    download: Callable[[Path], Path]

    @property
    def env(self) -> str:
        return f"METAKIT_{self.name.upper()}"

    def cache(self) -> Path:
        # cache_dir() without the name: a status line must not create folders; downloads make them.
        return cache_dir() / self.name


_LAYOUTS = {
    "banking77": _Layout("banking77", "Banking77", "train.csv and test.csv", _files_in(["train.csv", "test.csv"]), _download_banking77),
    "hwu64": _Layout("hwu64", "HWU64", "KFold_1/trainset/*.csv and KFold_1/testset/*.csv", _hwu64_fold, _download_hwu64),
    "clinc150": _Layout(
        "clinc150", "CLINC150", "data_full.json and domains.json", _files_in(["data_full.json", "domains.json"]),
        _download_clinc150,
    ),
}


def _user_locations(layout: _Layout, root: str | os.PathLike | None) -> list[tuple[Path, str]]:
    out = []
    if root is not None:
        out.append((Path(root).expanduser(), "dataset.root"))
    env = os.environ.get(layout.env)
    if env:
        out.append((Path(env).expanduser(), f"${layout.env}"))
    return out


def locate(name: str, root: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The folder holding dataset ``name``'s files: ``root``, ``$METAKIT_<NAME>``, or the cache (downloading)."""
    layout = _LAYOUTS[name]
    for location, origin in _user_locations(layout, root):
        if not location.is_dir():
            raise MetakitError(f"{layout.title} {origin} {location} is not a folder; point it at the folder holding {layout.expected}.")
        found = layout.find(location)
        if found is None:
            raise MetakitError(f"{layout.title} {origin} {location} does not hold {layout.expected}; point it at the folder that does.")
        return found
    cache = layout.cache()
    found = layout.find(cache) if cache.is_dir() else None
    if found is not None:
        return found
    if not download:
        raise MetakitError(
            f"{layout.title} is not available locally and download is off; place {layout.expected} in {cache} "
            f"(or set dataset.root or ${layout.env} to their folder)."
        )
    return layout.download(cache)


def _status(name: str) -> str:
    layout = _LAYOUTS[name]
    for location, origin in _user_locations(layout, None):
        if location.is_dir() and layout.find(location) is not None:
            return f"at {location} ({origin})"
    cache = layout.cache()
    if cache.is_dir() and layout.find(cache) is not None:
        return f"at {cache} (cache)"
    return f"not local (downloads to {cache}; or set ${layout.env})"


def banking77_status() -> str:
    """One line: where Banking77 is, or where it would be downloaded to."""
    return _status("banking77")


def hwu64_status() -> str:
    """One line: where HWU64 fold 1 is, or where it would be downloaded to."""
    return _status("hwu64")


def clinc150_status() -> str:
    """One line: where CLINC150 is, or where it would be downloaded to."""
    return _status("clinc150")


# --------------------------------------------------------------------------------------------
# Public loaders


def _intent_loader(name: str, read: Callable[[Path], IntentData], doc: str) -> Callable[..., ClassDataset]:
    """The public loader ``load_<name>``: the dataset's files found (:func:`locate`), read by ``read``, then encoded."""

    def load(
        root: str | os.PathLike | None = None,
        encoder: str = DEFAULT_ENCODER,
        batch_size: int = 64,
        download: bool = True,
        inputs: str = "embeddings",
        max_length: int = 128,
    ) -> ClassDataset:
        return intent_dataset(read(locate(name, root, download)), encoder, batch_size, inputs=inputs, max_length=max_length)

    load.__name__ = load.__qualname__ = f"load_{name}"
    load.__doc__ = doc
    return load


load_banking77 = _intent_loader("banking77", read_banking77, """Banking77 as embeddings: 77 intents (classes), no groups; use ``split: class``.

    Args:
        root: folder holding ``train.csv`` and ``test.csv`` (``None``: ``$METAKIT_BANKING77``, then
            the cache, downloading the official files there).
        encoder: registered sentence encoder (default all-MiniLM-L6-v2, needs ``metakit[text]``).
        batch_size: sentences per encoder forward pass (only used when the cache misses).
        download: fetch missing official files; ``False`` makes a missing file an error.
        inputs: ``embeddings`` (frozen sentence embeddings) or ``tokens`` (token ids for
            ``backbone: transformer``, which fine-tunes the encoder; see :func:`intent_dataset`).
        max_length: most token ids kept per sentence with ``inputs: tokens``.
    """)
load_hwu64 = _intent_loader("hwu64", read_hwu64, """HWU64 fold 1 as embeddings: 64 intents (classes) in 18 scenarios (groups); use ``split: domain``.

    ``root`` is the folder holding ``KFold_1/`` (or ``KFold_1`` itself); other arguments as
    :func:`load_banking77`.
    """)
load_clinc150 = _intent_loader("clinc150", read_clinc150, """CLINC150 as embeddings: 150 intents (classes) in 10 domains (groups); use ``split: domain``.

    ``root`` is the folder holding ``data_full.json`` and ``domains.json``; other arguments as
    :func:`load_banking77`.
    """)


# --------------------------------------------------------------------------------------------
# Your own texts: CSV / TSV / JSON Lines

_TABLE_HINT = {"csv": "a .csv with a header row (e.g. text,label)", "jsonl": 'a .jsonl of {"text": ..., "label": ...} lines'}


def _cell(value: object, kind: str, file: Path, line: int, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bool, int, float)):
        return str(value)
    raise MetakitError(
        f"{kind}: {file} line {line}: {column!r} holds {type(value).__name__} {json.dumps(value)[:40]}, not text; "
        f"make it a string."
    )


def _csv_rows(file: Path, kind: str, delimiter: str, wanted: Sequence[tuple[str, str]]) -> Iterator[tuple[int, dict]]:
    with open(file, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: spreadsheets write a byte-order mark
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h for h in (reader.fieldnames or []) if h is not None]
        if not header:
            raise MetakitError(f"{kind}: {file} is empty; it needs {_TABLE_HINT[kind]} and one row per text.")
        for option, column in wanted:
            if column not in header:
                raise MetakitError(
                    f"{kind}: {file} has no column {column!r} (its columns: {', '.join(header)}); set dataset.{option} "
                    f"to one of them."
                )
        for row in reader:
            yield reader.line_num, row


def _jsonl_rows(file: Path, kind: str, wanted: Sequence[tuple[str, str]]) -> Iterator[tuple[int, dict]]:
    with open(file, encoding="utf-8-sig") as f:
        for line, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise MetakitError(
                    f"{kind}: {file} line {line} is not valid JSON ({exc.msg}); fix or delete that line."
                ) from None
            if not isinstance(obj, dict):
                raise MetakitError(
                    f"{kind}: {file} line {line} is not a JSON object; each line must look like "
                    f'{{"text": "...", "label": "..."}}.'
                )
            for option, column in wanted:
                if column not in obj:
                    raise MetakitError(
                        f"{kind}: {file} line {line} has no {column!r} (its keys: {', '.join(map(str, obj)) or 'none'}); "
                        f"set dataset.{option} to one of them."
                    )
            yield line, obj


def read_table(
    path: str | os.PathLike | None,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    kind: str | None = None,
    delimiter: str | None = None,
) -> IntentData:
    """Labelled sentences from your CSV/TSV file or JSON Lines file.

    Args:
        path: the file. ``kind`` ``None`` picks JSON Lines for ``.jsonl``/``.ndjson``, else CSV.
        text_column: the column (JSON key) holding the sentence.
        label_column: the column holding its class label; labels are the class names.
        group_column: optional column holding the label's group (domain); a label must have
            one group throughout.
        kind: ``"csv"`` or ``"jsonl"``.
        delimiter: the CSV field separator (default: tab for ``.tsv``, else comma).

    Raises:
        MetakitError: a missing file or column (naming the columns there are), invalid JSON, an
            empty text or label, or a label in two groups; one line naming the file and line.
    """
    kind = kind or ("jsonl" if str(path).lower().endswith((".jsonl", ".ndjson")) else "csv")
    if path is None:
        raise MetakitError(f"dataset {kind} needs path: set dataset.path to {_TABLE_HINT[kind]}.")
    file = Path(path).expanduser()
    if not file.is_file():
        raise MetakitError(f"{kind} file {file} does not exist; set dataset.path to {_TABLE_HINT[kind]}.")
    wanted = [("text_column", text_column), ("label_column", label_column)]
    if group_column is not None:
        wanted.append(("group_column", group_column))
    for option, column in wanted:
        if not isinstance(column, str) or not column:
            raise MetakitError(f"{kind}: {option} must be a column name, got {column!r}.")
    if delimiter is None:
        delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise MetakitError(f"{kind}: delimiter must be one character (e.g. ',' or '\\t'), got {delimiter!r}.")
    texts, labels, domains, first_line = [], [], {}, {}
    try:
        rows = _jsonl_rows(file, kind, wanted) if kind == "jsonl" else _csv_rows(file, kind, delimiter, wanted)
        for line, row in rows:
            values = [_cell(row.get(column), kind, file, line, column) for _, column in wanted]
            if not any(values):
                continue  # a blank row, as spreadsheets leave at the end
            for (_, column), value in zip(wanted, values):
                if not value:
                    raise MetakitError(f"{kind}: {file} line {line} has an empty {column!r}; fill it in or delete the row.")
            text, label = values[0], values[1]
            if group_column is not None:
                group = values[2]
                known = domains.setdefault(label, group)
                if known != group:
                    raise MetakitError(
                        f"{kind}: {file}: label {label!r} is in group {known!r} (line {first_line[label]}) and {group!r} "
                        f"(line {line}); a label must belong to one group, fix {group_column!r}."
                    )
                first_line.setdefault(label, line)
            texts.append(text)
            labels.append(label)
    except UnicodeDecodeError:
        raise MetakitError(f"{kind}: {file} is not UTF-8 text; save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet).") from None
    except csv.Error as exc:
        raise MetakitError(f"{kind}: {file} is not valid CSV ({exc}); fix the quoting on that line.") from None
    if not texts:
        raise MetakitError(f"{kind}: {file} has no rows; it needs {_TABLE_HINT[kind]} and one row per text.")
    return IntentData(kind, texts, labels, domains if group_column is not None else None, str(file))


def load_csv(
    path: str | os.PathLike | None = None,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    delimiter: str | None = None,
    encoder: str = DEFAULT_ENCODER,
    batch_size: int = 64,
    inputs: str = "embeddings",
    max_length: int = 128,
) -> ClassDataset:
    """Your labelled texts from a CSV/TSV file, as frozen sentence embeddings (see :func:`read_table`).

    Classes are the labels (sorted), groups the ``group_column`` values; exact duplicate
    (text, label) rows are dropped. Embeddings are cached by the texts' hash, so a second load
    (or another run on the same file) does not run the encoder. ``inputs: tokens`` gives token
    ids for ``backbone: transformer`` instead (as :func:`load_banking77`).
    """
    data = read_table(path, text_column, label_column, group_column, kind="csv", delimiter=delimiter)
    return intent_dataset(data, encoder, batch_size, inputs=inputs, max_length=max_length)


def load_jsonl(
    path: str | os.PathLike | None = None,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    encoder: str = DEFAULT_ENCODER,
    batch_size: int = 64,
    inputs: str = "embeddings",
    max_length: int = 128,
) -> ClassDataset:
    """Your labelled texts from a JSON Lines file (one object per line); otherwise as :func:`load_csv`."""
    data = read_table(path, text_column, label_column, group_column, kind="jsonl")
    return intent_dataset(data, encoder, batch_size, inputs=inputs, max_length=max_length)


def table_status() -> str:
    """One line for ``metakit datasets``: how to point it at your file, and where embeddings are cached."""
    return (
        f"your texts: set dataset.path (text_column, label_column); embeddings cached in "
        f"{cache_dir() / 'text-embeddings'}"
    )


# --------------------------------------------------------------------------------------------
# Splits


def _take_groups(order: list[str], sizes: dict[str, int], target: int) -> list[str]:
    """Groups from ``order`` (removed from it) whose classes add up to at least ``target``.

    A pass in order takes each group that still fits under the target; if the target is not
    reached, the group that overshoots it least is added. Deterministic given ``order``.
    """
    chosen, count = [], 0
    for g in list(order):
        if count >= target:
            break
        if count + sizes[g] <= target:
            chosen.append(g)
            order.remove(g)
            count += sizes[g]
    if count < target and order:
        g = min(order, key=lambda x: (count + sizes[x] - target, order.index(x)))
        chosen.append(g)
        order.remove(g)
    return chosen


def domain_splits(
    dataset: ClassDataset, split: str, seed: int = 0, fractions: Sequence[float] = (0.7, 0.1, 0.2)
) -> dict[str, ClassDataset]:
    """``split: domain``: whole domains per split, sized by *intents* rather than by domains.

    Test and validation intents come from domains never seen in meta-training. Domains differ a
    lot in size (HWU64: 1 to 10 intents), so the generic ``group`` split, which cuts the number
    of domains by ``fractions``, can leave a split with too few intents for 10-way episodes.
    Here the domains are shuffled with ``seed`` and test, then validation, take domains until
    they hold at least ``round(fraction * intents)`` intents; the rest is for training.
    """
    if split != "domain":
        raise unknown_name(f"split for dataset {dataset.name!r}", split, ["domain", "group", "class"])
    if not dataset.class_groups:
        raise MetakitError(f"dataset {dataset.name!r} has no domains; use split: class.")
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise MetakitError(
            f"split fractions must be three non-negative numbers (train, val, test) summing to 1, got {list(fractions)}."
        )
    groups = dataset.groups
    sizes = {g: dataset.class_groups.count(g) for g in groups}
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    n = dataset.num_classes
    test = _take_groups(order, sizes, int(round(fractions[2] * n)))
    val = _take_groups(order, sizes, int(round(fractions[1] * n)))
    parts = {"train": set(order), "val": set(val), "test": set(test)}
    if not parts["train"]:
        raise MetakitError(f"split: domain left no training domains in {dataset.name!r}; lower the val/test fractions.")
    out = {}
    for part, chosen in parts.items():
        classes = [c for c, g in enumerate(dataset.class_groups) if g in chosen]
        out[part] = dataset.subset(classes, f"{dataset.name}/{part}")
    return out


# --------------------------------------------------------------------------------------------
# Registry entries (named in metakit.text.plugin, built when a dataset is first asked for)

# Intent classification on frozen sentence embeddings (encoding needs metakit[text]).
# Items are 384-d all-MiniLM-L6-v2 embeddings, cached on disk after the first load.
_TEXT = "metakit.text.datasets"


def _intent_spec(name: str, summary: str, source: str, license: str, by_domain: bool) -> DatasetSpec:
    """The entry of intent dataset ``name`` (``load_<name>``, ``<name>_status``); ``by_domain`` adds ``split: domain``."""
    splitter, splits = (f"{_TEXT}:domain_splits", ("domain", "group", "class")) if by_domain else (None, ("class",))
    return DatasetSpec(name=name, summary=summary, source=source, license=license, task_type="classification",
                       loader=f"{_TEXT}:load_{name}", status=f"{_TEXT}:{name}_status", splitter=splitter, splits=splits)


BANKING77_SPEC = _intent_spec(
    "banking77",
    "Banking77 (Casanueva et al. 2020): 13,083 online-banking queries, 77 intents, one domain; "
    "frozen all-MiniLM-L6-v2 embeddings; split by intent (split: class).",
    "https://github.com/PolyAI-LDN/task-specific-datasets (banking_data/train.csv, test.csv; "
    "downloaded at a pinned commit, sha256-verified)",
    "CC BY 4.0",
    by_domain=False,
)
HWU64_SPEC = _intent_spec(
    "hwu64",
    "HWU64 (Liu et al. 2019), fold 1: 11,036 home-assistant utterances, 64 intents in 18 scenarios; "
    "frozen all-MiniLM-L6-v2 embeddings; split by scenario (split: domain).",
    "https://github.com/xliuhw/NLU-Evaluation-Data (CrossValidation/.../KFold_1, 128 CSVs; downloaded "
    "at a pinned commit, verified by the sha256 of their manifest)",
    "CC BY 4.0",
    by_domain=True,
)
CLINC150_SPEC = _intent_spec(
    "clinc150",
    "CLINC150 (Larson et al. 2019): 22,500 in-scope queries, 150 intents in 10 domains; "
    "frozen all-MiniLM-L6-v2 embeddings; split by domain (split: domain).",
    "https://github.com/clinc/oos-eval (data/data_full.json, domains.json; downloaded at a pinned "
    "commit, sha256-verified)",
    "CC BY 3.0",
    by_domain=True,
)


def _table_spec(kind: str) -> DatasetSpec:
    """Your own labelled texts in a ``.csv`` or ``.jsonl`` (README "Your own data")."""
    return DatasetSpec(
        name=kind,
        summary=f"Your labelled texts in a .{kind} (text_column, label_column, optional group_column), "
        "as frozen all-MiniLM-L6-v2 embeddings (needs metakit[text]).",
        source="your own files (dataset.path)",
        license="yours",
        task_type="classification",
        loader=f"{_TEXT}:load_{kind}",
        status=f"{_TEXT}:table_status",
    )


CSV_SPEC = _table_spec("csv")
JSONL_SPEC = _table_spec("jsonl")
