"""metakit.recsys: MovieLens loaders on generated files, split logic, MeLU's local/global update, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from metakit.cli import main
from metakit.errors import MetakitError
from metakit.recsys import movielens as ml
from metakit.recsys.config import load_recsys_config
from metakit.recsys.melu import Features, MetaTrainConfig, RatingNet, adapt, make_batch, meta_loss, meta_train
from metakit.recsys.metrics import ndcg_at_k, score_predictions
from metakit.recsys.synthetic import SyntheticSpec, generate, synthetic_movielens, write_movielens
from metakit.recsys.tasks import TaskRules, build_split, check_no_leakage, training_task

REPO = Path(__file__).resolve().parents[1]
SMALL = SyntheticSpec(users=120, items=400, max_ratings=120, seed=3)


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own cache, so what one test extracts never satisfies another."""
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(ml.ENV_VAR, raising=False)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny batched ops: one thread is ~5x faster than two on a shared machine; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write(path: Path, lines: list[str]) -> None:
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


def make_ml100k(folder: Path) -> Path:
    """A tiny ml-100k/ folder in the official format (tab / '|' separators, latin-1, 19 genre flags)."""
    folder.mkdir(parents=True, exist_ok=True)
    genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
              "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
    _write(folder / "u.genre", [f"{g}|{i}" for i, g in enumerate(genres)])
    _write(folder / "u.occupation", ["administrator", "artist", "student", "writer"])
    _write(folder / "u.user", ["1|24|M|student|85711", "2|53|F|writer|94043",
                               "3|15|M|artist|V3N4P"])
    flags1 = ["0"] * 19
    flags1[3] = flags1[4] = flags1[5] = "1"  # Animation, Children's, Comedy
    flags2 = ["0"] * 19
    flags2[8] = "1"  # Drama
    _write(folder / "u.item", [
        "|".join(["1", "Toy Story (1995)", "01-Jan-1995", "", "http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)", *flags1]),
        "|".join(["2", "Café au lait (1993)", "", "", "http://us.imdb.com/Title?Caf%E9", *flags2]),
    ])
    _write(folder / "u.data", ["1\t1\t5\t881250949", "2\t1\t3\t891717742", "3\t2\t1\t878887116", "1\t2\t4\t881250950"])
    return folder


def make_ml1m(folder: Path) -> Path:
    """A tiny ml-1m/ folder in the official format ('::' separators, latin-1, codes for age and occupation)."""
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / "users.dat", ["1::F::1::10::48067", "2::M::56::16::70072", "3::M::25::15::55117-2117"])
    _write(folder / "movies.dat", ["1::Toy Story (1995)::Animation|Children's|Comedy",
                                   "2::Cité des enfants perdus, La (City of Lost Children, The) (1995)::Adventure|Sci-Fi",
                                   "3::Unrated Film (2000)::Drama"])
    _write(folder / "ratings.dat", ["1::1::5::978300760", "1::2::3::978302109", "2::1::4::978301968", "3::3::2::978300275"])
    return folder


def official_zip(tmp_path: Path, name: str = "ml-100k") -> Path:
    src = make_ml100k(tmp_path / "src" / name) if name == "ml-100k" else make_ml1m(tmp_path / "src" / name)
    path = tmp_path / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(src.iterdir()):
            zf.write(f, f"{name}/{f.name}")
    return path


def patch_archive(monkeypatch: pytest.MonkeyPatch, name: str, sha256: str) -> None:
    a = ml.ARCHIVES[name]
    monkeypatch.setitem(ml.ARCHIVES, name, ml.Archive(a.name, a.url, sha256, a.size, a.required))


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


# -- loaders ---------------------------------------------------------------------------------------


def test_ml100k_parser_reads_the_official_format(tmp_path: Path) -> None:
    data = ml.read_ml100k(make_ml100k(tmp_path / "ml-100k"))
    assert (data.num_users, data.num_items, data.num_ratings) == (3, 2, 4)
    assert data.item_titles[1] == "Café au lait (1993)"  # latin-1, not UTF-8
    assert data.genres[0] == "unknown" and len(data.genres) == 19
    assert data.item_genres[0].nonzero()[0].tolist() == [3, 4, 5]
    assert [data.years[c] for c in data.item_year] == [1995, 0]  # empty release date -> unknown year
    ages = [data.user_vocab["age"][c] for c in data.user_features[:, 1]]
    assert ages == ["18", "50", "1"]  # 24 -> 18-24, 53 -> 50-55, 15 -> under 18
    zips = [data.user_vocab["zip"][c] for c in data.user_features[:, 3]]
    assert zips == ["8", "9", "V"]
    assert data.rating.tolist() == [5.0, 3.0, 1.0, 4.0] and data.timestamp[0] == 881250949


def test_metakit_datasets_lists_movielens(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(ml.ENV_VAR, str(tmp_path / "placed"))
    make_ml100k(tmp_path / "placed" / "ml-100k")  # 100K placed by hand, 1M absent
    assert main(["datasets", "--json", str(tmp_path / "d.json")]) == 0
    rows = {row["name"]: row for row in json.loads((tmp_path / "d.json").read_text())}
    assert rows["ml-100k"]["type"] == rows["ml-1m"]["type"] == "recommendation"
    assert "GroupLens" in rows["ml-1m"]["license"] and "ml-1m.zip" in rows["ml-1m"]["source"]
    assert rows["ml-100k"]["status"].startswith("found through $METAKIT_MOVIELENS")
    assert rows["ml-1m"]["status"].startswith("downloaded on first use")
    capsys.readouterr()
    # A ratings dataset in a classification config says where it belongs instead of failing oddly.
    assert main(["train", "configs/quickstart.yaml", "dataset.name=ml-100k", "--out", str(tmp_path / "r")]) == 2
    assert "use it with metakit recsys" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_ml1m_parser_reads_the_official_format(tmp_path: Path) -> None:
    data = ml.read_ml1m(make_ml1m(tmp_path / "ml-1m"))
    assert (data.num_users, data.num_items, data.num_ratings) == (3, 3, 4)
    assert data.item_titles[1].startswith("Cité des enfants")
    assert [data.genres[g] for g in data.item_genres[1].nonzero()[0]] == ["Adventure", "Sci-Fi"]
    assert [data.years[c] for c in data.item_year] == [1995, 1995, 2000]
    assert [data.user_vocab["gender"][c] for c in data.user_features[:, 0]] == ["F", "M", "M"]
    assert [data.user_vocab["occupation"][c] for c in data.user_features[:, 2]] == ["10", "16", "15"]


def test_malformed_line_is_one_clear_error(tmp_path: Path) -> None:
    folder = make_ml1m(tmp_path / "ml-1m")
    _write(folder / "ratings.dat", ["1::1::5::978300760", "1::2::three::978302109"])
    with pytest.raises(MetakitError, match="ratings.dat line 2") as exc:
        ml.read_ml1m(folder)
    one_line(exc)


@pytest.mark.parametrize("fmt", ["ml-1m", "ml-100k"])
def test_synthetic_files_round_trip_through_the_real_parsers(tmp_path: Path, fmt: str) -> None:
    raw = generate(SMALL)
    folder = write_movielens(raw, tmp_path / fmt, fmt)
    data = ml.read_ml1m(folder) if fmt == "ml-1m" else ml.read_ml100k(folder)
    assert data.num_ratings == len(raw.ratings)
    assert np.bincount(data.user).min() >= SMALL.min_ratings  # 20+ ratings per user
    assert set(np.unique(data.rating).tolist()) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert any("é" in t for t in data.item_titles)
    counts = np.sort(np.bincount(data.item, minlength=data.num_items))[::-1]
    assert counts[: len(counts) // 10].sum() > 0.3 * counts.sum()  # popularity skew: top 10% of items, >30% of ratings
    assert [data.genres[g] for g in data.item_genres[0].nonzero()[0]] == [ml.ML1M_GENRES[g] for g in raw.genres[0]]


def test_synthetic_generation_is_seeded() -> None:
    a, b = generate(SMALL), generate(SMALL)
    assert np.array_equal(a.ratings, b.ratings) and a.genres == b.genres
    assert not np.array_equal(a.ratings, generate(SyntheticSpec(users=120, items=400, max_ratings=120, seed=4)).ratings)


# -- archives: manual placement, download, checksum, corruption --------------------------------------


def test_manual_zip_is_verified_and_extracted_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zip_path = official_zip(tmp_path)
    patch_archive(monkeypatch, "ml-100k", hashlib.sha256(zip_path.read_bytes()).hexdigest())
    data = ml.load_movielens("ml-100k", root=zip_path, download=False)
    assert data.num_ratings == 4
    cache = ml.movielens_dir()
    assert sorted(p.name for p in cache.iterdir()) == ["ml-100k"]  # no temporary folder left
    assert ml.load_movielens("ml-100k", root=tmp_path / "src").num_ratings == 4  # extracted folder placed by hand


def test_download_uses_the_official_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = official_zip(tmp_path, "ml-1m").read_bytes()
    patch_archive(monkeypatch, "ml-1m", hashlib.sha256(payload).hexdigest())
    monkeypatch.delenv("METAKIT_OFFLINE", raising=False)
    requested = []

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    def urlopen(req: urllib.request.Request, timeout: float | None = None) -> Response:
        requested.append(req.full_url)
        return Response(payload)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    assert ml.load_movielens("ml-1m").num_ratings == 4
    assert requested == ["https://files.grouplens.org/datasets/movielens/ml-1m.zip"]
    assert ml.movielens_status("ml-1m").startswith("extracted in")


def test_wrong_checksum_is_refused(tmp_path: Path) -> None:
    zip_path = official_zip(tmp_path)  # not the official bytes: its sha256 differs from ARCHIVES'
    with pytest.raises(MetakitError, match="checksum mismatch") as exc:
        ml.load_movielens("ml-100k", root=zip_path)
    assert "ml-100k.zip" in one_line(exc)
    assert not (ml.movielens_dir() / "ml-100k").exists()


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "bad crc"])
def test_corrupt_zip_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    good = official_zip(tmp_path).read_bytes()
    if damage == "truncated":
        bad = good[: len(good) // 2]
    elif damage == "not a zip":
        bad = b"<html>404 not found</html>"
    else:  # flip a byte inside the stored (uncompressed) u.data payload: the CRC check catches it
        at = good.index(b"881250949")
        bad = good[:at] + b"9" + good[at + 1:]
    path = tmp_path / "placed" / "ml-100k.zip"
    path.parent.mkdir()
    path.write_bytes(bad)
    patch_archive(monkeypatch, "ml-100k", hashlib.sha256(bad).hexdigest())  # checksum passes; the zip itself is bad
    with pytest.raises(MetakitError, match="corrupt|not a readable zip") as exc:
        ml.load_movielens("ml-100k", root=path.parent)
    one_line(exc)
    assert not (ml.movielens_dir() / "ml-100k").exists()
    assert not [p for p in ml.movielens_dir().iterdir() if p.name.startswith(".")]


def test_missing_data_offline_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAKIT_OFFLINE", "1")
    with pytest.raises(MetakitError, match="files.grouplens.org/datasets/movielens/ml-1m.zip") as exc:
        ml.load_movielens("ml-1m")
    one_line(exc)


# -- tasks and scenarios ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> ml.RatingsData:
    return synthetic_movielens(SMALL, folder=tmp_path_factory.mktemp("syn") / "ml-1m")


def test_split_follows_the_paper_and_never_leaks_query_ratings(small_data: ml.RatingsData) -> None:
    rules = TaskRules(new_user_fraction=0.25, new_item_fraction=0.25)
    split = build_split(small_data, rules)
    trained = set(zip(split.train_user.tolist(), split.train_item.tolist()))
    first_user = {u: small_data.timestamp[small_data.user == u].min() for u in range(small_data.num_users)}
    latest_existing = max(t for u, t in first_user.items() if not split.new_user[u])
    assert all(first_user[u] >= latest_existing for u in np.flatnonzero(split.new_user))
    assert split.stats["tasks"]["warm"] > 0 and split.stats["tasks"]["new_users"] > 0
    for name, tasks in split.scenarios.items():
        for t in tasks:
            assert len(t.query_items) == rules.query
            assert rules.min_ratings <= len(t.query_items) + len(t.support_items)
            assert t.support_times.max() <= t.query_times.min()  # query = the last ratings by time
            assert not {(t.user, i) for i in t.query_items.tolist()} & trained
            assert bool(split.new_user[t.user]) == name.startswith("new_users")
            assert split.new_item[t.query_items].all() == name.endswith("new_items")
            assert split.new_item[t.query_items].any() == name.endswith("new_items")
    assert not split.new_user[split.train_user].any() and not split.new_item[split.train_item].any()
    # The checker itself catches a leak.
    leaky = split.scenarios["warm"][0]
    split.train_user = np.r_[split.train_user, leaky.user]
    split.train_item = np.r_[split.train_item, leaky.query_items[0]]
    with pytest.raises(AssertionError, match="warm"):
        check_no_leakage(split)


def test_training_tasks_come_from_training_ratings_only(small_data: ml.RatingsData) -> None:
    rules = TaskRules()
    split = build_split(small_data, rules)
    rng = np.random.default_rng(0)
    trained = set(zip(split.train_user.tolist(), split.train_item.tolist()))
    for u in split.train_by_user:
        t = training_task(split, u, rules, rng)
        assert t is not None
        assert {(u, i) for i in [*t.support_items.tolist(), *t.query_items.tolist()]} <= trained
        assert not set(t.support_items.tolist()) & set(t.query_items.tolist())


def test_unknown_scenario_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = REPO / "configs" / "recsys-melu-synthetic.yaml"
    with pytest.raises(MetakitError, match="unknown scenario 'cold_start'.*new_users") as exc:
        load_recsys_config(config, ["eval.scenarios=[warm, cold_start]"])
    one_line(exc)
    assert main(["recsys", "train", str(config), "eval.scenarios=[new_user]", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown scenario 'new_user'" in err and "Did you mean" in err
    assert not (tmp_path / "r").exists()


def test_bad_task_rules_are_refused() -> None:
    with pytest.raises(MetakitError, match="min_ratings"):
        TaskRules(min_ratings=10, query=10).check()
    with pytest.raises(MetakitError, match="new_user_fraction"):
        TaskRules(new_user_fraction=1.0).check()


# -- MeLU: local and global parameters -------------------------------------------------------------


def tiny_net(data: ml.RatingsData) -> tuple[RatingNet, Features]:
    torch.manual_seed(0)
    f = Features.from_data(data)
    return RatingNet(f.user_sizes, f.genres.shape[1], f.num_years, embedding_dim=4, hidden=[8]).double(), f


def _double(batch):  # noqa: ANN001, ANN202
    batch.genres, batch.rating, batch.mask = batch.genres.double(), batch.rating.double(), batch.mask.double()
    return batch


def test_inner_loop_adapts_local_parameters_only(small_data: ml.RatingsData) -> None:
    net, f = tiny_net(small_data)
    split = build_split(small_data, TaskRules())
    tasks = split.scenarios["warm"][:3]
    users = [t.user for t in tasks]
    support = _double(make_batch(f, users, [t.support_items for t in tasks], [t.support_ratings for t in tasks]))
    assert set(net.global_names) == {n for n, _ in net.named_parameters() if "embedding" in n}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    params = adapt(net, net.embed(support), support.rating, support.mask, steps=5, lr=0.05, create_graph=True)
    assert set(params) == set(net.local_names)
    assert all(params[n].shape[0] == len(tasks) for n in params)
    assert any(not torch.equal(params[n][0], before[n]) for n in params)  # local parameters moved ...
    assert not torch.equal(params["output.bias"][0], params["output.bias"][1])  # ... per user
    for n, p in net.named_parameters():  # ... and the module, global embeddings included, did not
        assert torch.equal(p, before[n]), n


def test_batched_inner_loop_equals_one_user_at_a_time(small_data: ml.RatingsData) -> None:
    net, f = tiny_net(small_data)
    tasks = build_split(small_data, TaskRules()).scenarios["warm"][:4]

    def adapted(part):  # noqa: ANN001, ANN202
        s = _double(make_batch(f, [t.user for t in part], [t.support_items for t in part], [t.support_ratings for t in part]))
        return adapt(net, net.embed(s), s.rating, s.mask, steps=3, lr=0.05, create_graph=False)

    together = adapted(tasks)
    for j, t in enumerate(tasks):  # padding and batching change nothing
        alone = adapted([t])
        for n in together:
            torch.testing.assert_close(together[n][j], alone[n][0], rtol=1e-10, atol=1e-12)


def four_user_batches(small_data: ml.RatingsData):
    """A tiny network, its features, the split, and float64 support / query batches of four training users."""
    net, f = tiny_net(small_data)
    split = build_split(small_data, TaskRules())
    part = [training_task(split, u, TaskRules(), np.random.default_rng(0)) for u in list(split.train_by_user)[:4]]
    users = [t.user for t in part]
    support = _double(make_batch(f, users, [t.support_items for t in part], [t.support_ratings for t in part]))
    query = _double(make_batch(f, users, [t.query_items for t in part], [t.query_ratings for t in part]))
    return net, f, split, support, query


def test_outer_loop_updates_global_embeddings(small_data: ml.RatingsData) -> None:
    net, _, _, support, query = four_user_batches(small_data)
    for first_order in (False, True):
        net.zero_grad()
        meta_loss(net, support, query, steps=2, lr=0.05, first_order=first_order).backward()
        for n, p in net.named_parameters():
            if n.startswith("user_embeddings") or n == "output.bias":
                assert p.grad is not None and p.grad.abs().sum() > 0, (n, first_order)


def test_meta_training_is_seeded(small_data: ml.RatingsData) -> None:
    split = build_split(small_data, TaskRules())
    rules = TaskRules()
    users = sorted(split.train_by_user)

    def run() -> dict[str, torch.Tensor]:
        net, f = tiny_net(small_data)
        net.float()
        make = lambda rng: [t for t in (training_task(split, u, rules, rng) for u in users) if t]  # noqa: E731
        meta_train(net, f, make, split.val, MetaTrainConfig(local_steps=2, epochs=2, meta_batch=8), seed=5)
        return net.state_dict()

    a, b = run(), run()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_meta_sgd_step_sizes_are_meta_learned_and_leave_the_module_alone(small_data: ml.RatingsData) -> None:
    net, f, split, support, query = four_user_batches(small_data)
    lrs = {n: torch.full_like(p, 0.05).requires_grad_(True) for n, p in net.local_parameters().items()}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    with_dict = adapt(net, net.embed(support), support.rating, support.mask, steps=2, lr=lrs, create_graph=False)
    with_float = adapt(net, net.embed(support), support.rating, support.mask, steps=2, lr=0.05, create_graph=False)
    for n in with_dict:  # element-wise step sizes all equal to 0.05 are plain MAML's step
        torch.testing.assert_close(with_dict[n], with_float[n], rtol=1e-10, atol=1e-12)
    meta_loss(net, support, query, steps=2, lr=lrs, first_order=False).backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in lrs.values())  # the step sizes get gradients
    for n, p in net.named_parameters():
        assert torch.equal(p, before[n]), n

    rules = TaskRules()
    make = lambda rng: [t for t in (training_task(split, u, rules, rng) for u in sorted(split.train_by_user)) if t]  # noqa: E731
    net.float()
    info = meta_train(net, f, make, split.val, MetaTrainConfig(local_steps=1, local_lr=0.05, epochs=1, meta_batch=8,
                                                               learn_local_lr=True), seed=0)
    learned = info["local_lr"]
    assert set(learned) == set(net.local_names)
    assert all(learned[n].shape == p.shape for n, p in net.local_parameters().items())
    assert any(not torch.allclose(v, torch.full_like(v, 0.05)) for v in learned.values())
    with pytest.raises(MetakitError, match="second-order"):
        meta_train(net, f, make, split.val, MetaTrainConfig(first_order=True, learn_local_lr=True), seed=0)
    with pytest.raises(MetakitError, match="first_order=false"):
        load_recsys_config(REPO / "configs" / "recsys-melu-synthetic.yaml", ["melu.learn_local_lr=true", "melu.first_order=true"])
    with pytest.raises(MetakitError, match="local_lr_grid"):
        load_recsys_config(REPO / "configs" / "recsys-melu-synthetic.yaml", ["melu.local_lr_grid=[0.1, 0]"])


def test_global_decision_layers_stay_out_of_the_inner_loop(small_data: ml.RatingsData) -> None:
    f = Features.from_data(small_data)
    torch.manual_seed(0)
    net = RatingNet(f.user_sizes, f.genres.shape[1], f.num_years, embedding_dim=4, hidden=[8, 8], global_layers=1).double()
    assert set(net.local_names) == {"decision.1.weight", "decision.1.bias", "output.weight", "output.bias"}
    assert {"decision.0.weight", "decision.0.bias"} <= set(net.global_names)
    tasks = build_split(small_data, TaskRules()).scenarios["warm"][:2]
    s = _double(make_batch(f, [t.user for t in tasks], [t.support_items for t in tasks], [t.support_ratings for t in tasks]))
    params = adapt(net, net.embed(s), s.rating, s.mask, steps=2, lr=0.05, create_graph=False)
    assert set(params) == set(net.local_names)
    assert net.decide(net.embed(s), params).shape == s.rating.shape  # the global layer is shared by all tasks
    with pytest.raises(MetakitError, match="global_layers"):
        RatingNet(f.user_sizes, f.genres.shape[1], f.num_years, hidden=[8], global_layers=2)


def test_item_id_embeddings_are_global_and_neutral_for_untrained_items(small_data: ml.RatingsData) -> None:
    f = Features.from_data(small_data)
    torch.manual_seed(0)
    net = RatingNet(f.user_sizes, f.genres.shape[1], f.num_years, embedding_dim=4, hidden=[8], num_items=small_data.num_items)
    assert "item_embedding.weight" in net.global_names
    split = build_split(small_data, TaskRules())
    rules = TaskRules()
    make = lambda rng: [t for t in (training_task(split, u, rules, rng) for u in sorted(split.train_by_user)) if t]  # noqa: E731
    meta_train(net, f, make, [], MetaTrainConfig(local_steps=1, epochs=1, meta_batch=8), seed=0)
    weight = net.item_embedding.weight.detach()
    trained = np.zeros(small_data.num_items, dtype=bool)
    trained[split.train_item] = True
    assert weight[torch.from_numpy(trained)].abs().sum() > 0  # items seen in training got an identity ...
    assert torch.equal(weight[torch.from_numpy(~trained)], torch.zeros_like(weight[torch.from_numpy(~trained)]))  # ... new ones none
    batch = make_batch(f, [0], [np.array([0, 1])])
    batch.item = None
    with pytest.raises(MetakitError, match="item ids"):
        net.embed(batch)


# -- metrics ---------------------------------------------------------------------------------------


def test_ndcg_and_summaries() -> None:
    true = np.array([5.0, 3.0, 1.0])
    assert ndcg_at_k(np.array([3.0, 2.0, 1.0]), true, 3) == pytest.approx(1.0)
    worst = (2**1 - 1) / 1 + (2**3 - 1) / np.log2(3) + (2**5 - 1) / 2
    ideal = (2**5 - 1) / 1 + (2**3 - 1) / np.log2(3) + (2**1 - 1) / 2
    assert ndcg_at_k(np.array([1.0, 2.0, 3.0]), true, 3) == pytest.approx(worst / ideal)
    assert ndcg_at_k(np.array([1.0, 2.0, 3.0]), true, 1) == pytest.approx(1 / 31)
    s = score_predictions([np.array([4.0, 4.0]), np.array([2.0, 2.0])], [np.array([5.0, 3.0]), np.array([2.0, 4.0])], [0, 1])
    assert s["users"] == 2 and s["mae"]["mean"] == pytest.approx(1.0)
    assert s["rmse"]["mean"] == pytest.approx(np.sqrt((1.0 + 2.0) / 2))


# -- end to end ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_train_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    out, report = tmp_path / "run", tmp_path / "eval.json"
    overrides = ["data.synthetic.users=120", "data.synthetic.items=200", "data.synthetic.max_ratings=120",
                 "model.embedding_dim=4", "model.hidden=[8]", "melu.epochs=2", "baselines.nn_epochs=1",
                 "baselines.mf_regs=[5.0]", "baselines.mf_factors=[2, 4]", "baselines.mf_iters=3",
                 "baselines.finetune_steps=[1]", "baselines.finetune_lrs=[0.01]", "melu.local_lr_grid=[0.01, 0.1]",
                 "threads=1"]
    assert main(["recsys", "train", str(REPO / "configs" / "recsys-melu-synthetic.yaml"), *overrides,
                 "--out", str(out), "--evaluate", "--json", str(report), "--no-progress"]) == 0
    for name in ("config.yaml", "training.json", "evaluation.json", "report.md", "mae_by_scenario.png",
                 "training_curves.png", "checkpoints/models.pt"):
        assert (out / name).is_file(), name
    result = json.loads(report.read_text())
    assert set(result["results"]) == {"warm", "new_users", "new_items", "new_users_new_items"}
    methods = {"global_mean", "item_popularity", "mf", "nn_global", "nn_finetune", "melu-1", "melu-5"}
    assert set(result["results"]["warm"]) == methods
    warm = result["results"]["warm"]["melu-5"]
    assert 0 < warm["mae"]["mean"] < 2 and 0 < warm["ndcg@3"]["mean"] <= 1 and warm["mae"]["ci95"] > 0
    assert "MeLU-5" in (out / "report.md").read_text()
    training = json.loads((out / "training.json").read_text())["methods"]
    assert {"factors=2,reg=5.0", "factors=4,reg=5.0"} <= set(training["mf"]["val_mae_by_setting"])
    for key in ("melu-1", "melu-5"):  # MeLU's local lr is chosen on validation users, as the baselines' settings
        by_lr = training[key]["val_mae_by_local_lr"]
        assert set(by_lr) == {"local_lr=0.01", "local_lr=0.1"}
        assert f"local_lr={training[key]['local_lr']}" == min(by_lr, key=by_lr.get)
    capsys.readouterr()
    assert main(["recsys", "evaluate", str(out), "--json", str(tmp_path / "again.json"), "--no-progress"]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["results"] == result["results"]  # re-scoring a run is deterministic
    assert "existing items for new users" in capsys.readouterr().out


def test_evaluate_refuses_a_non_recsys_directory(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["recsys", "evaluate", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
