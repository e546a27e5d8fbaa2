"""metakit.recsys cold start: the CSV releases, support-size curves, fold-in MF and meta-learned MF.

Every file is generated here: MovieLens may not be redistributed, and tests never touch the network.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from metakit.cli import main
from metakit.errors import MetakitError
from metakit.recsys import baselines as bl
from metakit.recsys import movielens as ml
from metakit.recsys.melu import Features
from metakit.recsys.metamf import MetaMF, MetaMFTraining, meta_loss, predict_metamf, train_metamf
from metakit.recsys.synthetic import SyntheticSpec, synthetic_movielens
from metakit.recsys.tanp import TaNP, TaNPTraining, predict_tanp, tanp_loss
from metakit.recsys.tasks import (
    TaskRules, UserTask, at_support_size, build_split, temporal_training_task, validation_sets,
)

from test_imagesets import serve
from test_recsys import one_line, one_thread, own_cache  # noqa: F401  (autouse fixtures: own cache, one thread)

REPO = Path(__file__).resolve().parents[1]
SMALL = SyntheticSpec(users=120, items=400, max_ratings=120, seed=3)


@pytest.fixture(autouse=True)
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """Downloads are mocked here; a METAKIT_OFFLINE from the environment would stop them first."""
    monkeypatch.delenv("METAKIT_OFFLINE", raising=False)


def make_csv_release(folder: Path, ratings: list[str] | None = None) -> Path:
    """A tiny CSV release folder in the official format (header rows, UTF-8, quoted titles, half stars)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '11,"American President, The (1995)",Comedy|Drama|Romance\n'
        "193609,Andrew Dice Clay: Dice Rules (1991),Comedy\n"
        "200,Untitled,(no genres listed)\n", encoding="utf-8")
    rows = ratings if ratings is not None else ["1,1,4.0,964982703", "1,11,3.5,964981247", "5,193609,0.5,1537109082",
                                               "5,1,5.0,847434962", "7,200,2.5,1106635946"]
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (folder / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n", encoding="utf-8")
    return folder


def zip_folder(folder: Path, name: str, dest: Path) -> Path:
    with zipfile.ZipFile(dest, "w") as zf:
        for f in sorted(folder.iterdir()):
            zf.write(f, f"{name}/{f.name}")
    return dest


def patch_md5(monkeypatch: pytest.MonkeyPatch, name: str, md5: str | None) -> None:
    a = ml.ARCHIVES[name]
    monkeypatch.setitem(ml.ARCHIVES, name, ml.Archive(a.name, a.url, a.sha256, a.size, a.required, md5, a.md5_url))


# -- the CSV releases --------------------------------------------------------------------------------


def test_csv_parser_reads_the_official_format(tmp_path: Path) -> None:
    data = ml.read_movielens_csv(make_csv_release(tmp_path / "ml-latest-small"))
    assert (data.num_users, data.num_items, data.num_ratings) == (3, 4, 5)
    assert data.item_titles[1] == "American President, The (1995)"  # a quoted title with a comma
    assert sorted(data.rating.tolist()) == [0.5, 2.5, 3.5, 4.0, 5.0]  # half stars kept
    assert "(no genres listed)" not in data.genres and data.item_genres[2].sum() == 0
    assert [data.years[c] for c in data.item_year] == [1995, 1995, 0, 1991]  # items by id; a title without a year: unknown
    assert not data.has_user_features and data.user_vocab_sizes() == [1, 1, 1, 1]  # no demographics


@pytest.mark.parametrize("row, message", [("1,1,4.0", "has 3 comma-separated fields"),
                                          ("1,1,four,964982703", "rating 'four' is not a number"),
                                          ("1,1,4.2,964982703", "not a half star"),
                                          ("1,999,4.0,964982703", "rates id 999")])
def test_malformed_csv_is_one_clear_error(tmp_path: Path, row: str, message: str) -> None:
    folder = make_csv_release(tmp_path / "ml-25m", ["1,1,4.0,964982703", row])
    with pytest.raises(MetakitError, match=message) as exc:
        ml.read_movielens_csv(folder, "ml-25m")
    text = one_line(exc)
    assert "ratings.csv" in text and ("line 3" in text or "999" in text)


def test_csv_zip_placed_by_hand_is_checked_against_the_published_md5(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    zip_path = zip_folder(make_csv_release(tmp_path / "src"), "ml-25m", tmp_path / "ml-25m.zip")
    with pytest.raises(MetakitError, match="MD5 .* GroupLens publishes 6b51fb2759a8657d3bfcbfc42b592ada") as exc:
        ml.load_movielens("ml-25m", root=zip_path, download=False)  # our zip is not GroupLens' bytes
    one_line(exc)
    assert not (ml.movielens_dir() / "ml-25m").exists()
    patch_md5(monkeypatch, "ml-25m", hashlib.md5(zip_path.read_bytes()).hexdigest())
    assert ml.load_movielens("ml-25m", root=zip_path, download=False).num_ratings == 5
    assert sorted(p.name for p in ml.movielens_dir().iterdir()) == ["ml-25m"]  # extracted atomically, nothing else
    assert sorted(p.name for p in (ml.movielens_dir() / "ml-25m").iterdir()) == ["movies.csv", "ratings.csv"]


def test_latest_small_reads_its_md5_from_the_file_groupLens_publishes(tmp_path: Path) -> None:
    zip_path = zip_folder(make_csv_release(tmp_path / "src"), "ml-latest-small", tmp_path / "ml-latest-small.zip")
    with pytest.raises(MetakitError, match="ml-latest-small.zip.md5 is missing") as exc:
        ml.load_movielens("ml-latest-small", root=zip_path, download=False)
    assert "files.grouplens.org/datasets/movielens/ml-latest-small.zip.md5" in one_line(exc)
    side = tmp_path / "ml-latest-small.zip.md5"
    side.write_text(f"MD5 (ml-latest-small.zip) = {'0' * 32}\n")
    with pytest.raises(MetakitError, match="checksum mismatch"):
        ml.load_movielens("ml-latest-small", root=zip_path, download=False)
    side.write_text(f"{hashlib.md5(zip_path.read_bytes()).hexdigest()}  ml-latest-small.zip\n")
    assert ml.load_movielens("ml-latest-small", root=zip_path, download=False).num_ratings == 5


def test_csv_download_uses_the_official_url_and_renames_only_verified_bytes(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    payload = zip_folder(make_csv_release(tmp_path / "src"), "ml-32m", tmp_path / "payload.zip").read_bytes()
    requested = serve(monkeypatch, payload)
    with pytest.raises(MetakitError, match="GroupLens publishes d472be332d4daa821edc399621853b57") as exc:
        ml.load_movielens("ml-32m")  # the payload is not the official zip
    one_line(exc)
    assert [p.name for p in ml.movielens_dir().iterdir()] == []  # neither the zip nor a partial file stays
    patch_md5(monkeypatch, "ml-32m", hashlib.md5(payload).hexdigest())
    assert ml.load_movielens("ml-32m").num_ratings == 5
    assert requested == ["https://files.grouplens.org/datasets/movielens/ml-32m.zip"] * 2
    assert sorted(p.name for p in ml.movielens_dir().iterdir()) == ["ml-32m", "ml-32m.zip"]


def test_csv_release_offline_is_one_line_naming_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAKIT_OFFLINE", "1")
    with pytest.raises(MetakitError, match="files.grouplens.org/datasets/movielens/ml-25m.zip") as exc:
        ml.load_movielens("ml-25m")
    one_line(exc)


def test_a_run_without_its_data_is_one_line_and_leaves_no_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("METAKIT_OFFLINE", "1")
    out = tmp_path / "run"
    assert main(["recsys", "train", str(REPO / "configs" / "recsys-ml100k.yaml"), "data.source=ml-latest-small",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "ml-latest-small.zip" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_metakit_datasets_lists_the_csv_releases(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("ml-latest-small", "ml-25m", "ml-32m"):
        assert name in out


# -- curves and validation sets ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> ml.RatingsData:
    return synthetic_movielens(SMALL, "csv", folder=tmp_path_factory.mktemp("syn") / "csv")


def test_curve_tasks_keep_the_query_and_take_the_earliest_ratings(small_data: ml.RatingsData) -> None:
    split = build_split(small_data, TaskRules(new_user_fraction=0.25, new_item_fraction=0.25))
    tasks = split.scenarios["new_users"]
    curves = {n: at_support_size(tasks, n, 20) for n in (1, 3, 20)}
    users = [t.user for t in curves[1]]
    assert users and all([t.user for t in c] == users for c in curves.values())  # the same users at every size
    full = {t.user: t for t in tasks}
    for n, c in curves.items():
        for t in c:
            assert len(t.support_items) == n
            np.testing.assert_array_equal(t.query_items, full[t.user].query_items)  # the same query ratings
            np.testing.assert_array_equal(t.support_items, full[t.user].support_items[:n])
            assert t.support_times.max() <= full[t.user].support_times[n - 1:].min()  # the earliest ones
    sets = validation_sets(split, [1, 5])
    assert sets[0] is split.val and [len(t.support_items) for t in sets[1]] == [1] * len(sets[1])
    rng = np.random.default_rng(0)
    task = temporal_training_task(split, next(iter(split.train_by_user)), TaskRules(), rng)
    assert task is not None and task.support_times.max() <= task.query_times.min()  # support before query


def test_fold_in_uses_its_own_ridge_penalty(small_data: ml.RatingsData) -> None:
    split = build_split(small_data, TaskRules(new_user_fraction=0.25, new_item_fraction=0.25))
    mf = bl.BiasedMF(4, 5.0, 3, 0).fit(split, small_data.num_users, small_data.num_items)
    task = split.scenarios["new_users"][0]
    plain = mf.fold_in(task.support_items, task.support_ratings)
    mf.foldin_reg = 1e6  # an enormous penalty: the new user stays at the mean
    b, p = mf.fold_in(task.support_items, task.support_ratings)
    assert abs(b) < 1e-3 and np.abs(p).max() < 1e-3 and abs(plain[0]) > 1e-3
    best, scores = bl.select_mf(split, small_data.num_users, small_data.num_items, [4], [5.0], 3, 0,
                                validation_sets(split, [1, 3]), [1.0, 50.0])
    assert set(scores) == {"factors=4,reg=5.0", "factors=4,reg=5.0,foldin_reg=1.0", "factors=4,reg=5.0,foldin_reg=50.0"}
    chosen = "" if best.foldin_reg is None else f",foldin_reg={best.foldin_reg}"
    assert scores[f"factors=4,reg=5.0{chosen}"] == min(scores.values())


def test_surprise_peer_is_refitted_with_the_support(small_data: ml.RatingsData, monkeypatch: pytest.MonkeyPatch) -> None:
    split = build_split(small_data, TaskRules(new_user_fraction=0.25, new_item_fraction=0.25))
    with monkeypatch.context() as m:
        m.setitem(__import__("sys").modules, "surprise", None)  # as if Surprise were not installed
        with pytest.raises(MetakitError, match=r"pip install 'metakit\[recsys-peers\]'") as exc:
            bl.SurpriseSVD.require()
        one_line(exc)
    pytest.importorskip("surprise")
    svd = bl.SurpriseSVD(factors=2, epochs=3).fit(split)
    tasks = at_support_size(split.scenarios["new_users"], 3)[:5]
    first = svd.predict(tasks)
    assert [len(p) for p in first] == [len(t.query_items) for t in tasks]
    np.testing.assert_allclose(np.concatenate(first), np.concatenate(svd.predict(tasks)))  # seeded refit
    high = [UserTask(t.user, t.support_items, np.full(3, 5.0, np.float32), t.query_items, t.query_ratings,
                     t.support_times, t.query_times) for t in tasks]
    assert np.concatenate(svd.predict(high)).mean() > np.concatenate(first).mean()  # the support reached the model
    assert set(svd.state()) == {"factors", "reg", "epochs", "lr", "seed"}  # no ratings in the checkpoint
    again = bl.SurpriseSVD.from_state(svd.state()).fit(split)
    np.testing.assert_allclose(np.concatenate(again.predict(tasks)), np.concatenate(first))


# -- meta-learned MF ---------------------------------------------------------------------------------


def _tasks(split, n: int = 6) -> list[UserTask]:  # noqa: ANN001
    rng = np.random.default_rng(0)
    users = sorted(split.train_by_user)[:n]
    return [temporal_training_task(split, u, TaskRules(), rng) for u in users]


def test_meta_mf_adapts_the_user_only_and_learns_prior_and_step_sizes(small_data: ml.RatingsData) -> None:
    split = build_split(small_data, TaskRules(new_user_fraction=0.25, new_item_fraction=0.25))
    features = Features.from_data(small_data)
    torch.manual_seed(0)
    model = MetaMF(small_data.num_items, len(small_data.genres), len(small_data.years), factors=3, steps=2)
    model.mark_trained(split.train_item)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tasks = _tasks(split)
    loss = meta_loss(model, features, tasks, tasks)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} moved in the inner loop"
    loss.backward()
    for name in ("user_prior", "bias_prior", "log_lr_user", "log_lr_bias", "log_pseudo_count", "item_factors.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, f"{name} gets no meta-gradient"
    # One grouped computation equals one user at a time.
    together = predict_metamf(model, features, tasks)
    alone = [predict_metamf(model, features, [t])[0] for t in tasks]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    items = torch.arange(5)
    _, bias = model.items(items, features.genres[items], features.year[items])
    model.set_item_offset(np.full(small_data.num_items, 0.5))  # the popularity offset enters every item's bias
    _, moved = model.items(items, features.genres[items], features.year[items])
    torch.testing.assert_close(moved - bias, torch.full((5,), 0.5))
    # An item never trained on has no id part: its vector and bias come from its content alone.
    new_item = int(np.flatnonzero(split.new_item)[0])
    with torch.no_grad():
        model.item_factors.weight[new_item] += 100.0
        q, _ = model.items(torch.tensor([new_item]), features.genres[[new_item]], features.year[[new_item]])
    assert q.abs().max() < 10


def test_meta_mf_training_is_seeded_and_keeps_its_best_epoch(small_data: ml.RatingsData) -> None:
    split = build_split(small_data, TaskRules(new_user_fraction=0.25, new_item_fraction=0.25))
    features = Features.from_data(small_data)
    users = sorted(split.train_by_user)
    sets = validation_sets(split, [1, 3])

    def run() -> tuple[dict[str, object], MetaMF]:
        torch.manual_seed(0)
        model = MetaMF(small_data.num_items, len(small_data.genres), len(small_data.years), factors=3, steps=1)
        model.mark_trained(split.train_item)
        info = train_metamf(model, features, lambda rng: [temporal_training_task(split, u, TaskRules(), rng) for u in users],
                            lambda p: bl.validation_score(p, sets), MetaMFTraining(epochs=3, meta_batch=16), seed=1)
        return info, model

    (a, model), (b, _) = run(), run()
    assert [h["val_mae"] for h in a["history"]] == [h["val_mae"] for h in b["history"]]
    assert a["best_val_mae"] == min(h["val_mae"] for h in a["history"])
    assert bl.validation_score(lambda t: predict_metamf(model, features, t), sets) == pytest.approx(a["best_val_mae"])


def test_tanp_reads_users_from_their_support_ratings(small_data: ml.RatingsData) -> None:
    split = build_split(small_data, TaskRules(new_user_fraction=0.25, new_item_fraction=0.25))
    features = Features.from_data(small_data)
    torch.manual_seed(0)
    model = TaNP(features, embedding_dim=4, hidden=8, latent=4, clusters=3)
    model.mark_trained(split.train_item)
    tasks = _tasks(split)
    loss = tanp_loss(model, features, tasks, TaNPTraining())
    loss.backward()
    for name in ("deterministic.0.weight", "latent_mean.weight", "centres", "film.0.weight", "item_embedding.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, f"{name} gets no gradient"
    with torch.no_grad():
        for film in model.film:  # a non-trivial modulation, so the support reaches the decoder both ways
            film.weight.normal_(std=0.5)
    first = predict_tanp(model, features, tasks)
    assert [len(p) for p in first] == [len(t.query_items) for t in tasks]
    np.testing.assert_allclose(np.concatenate(first), np.concatenate(predict_tanp(model, features, tasks)))  # deterministic
    flipped = [UserTask(t.user, t.support_items, 6.0 - t.support_ratings, t.query_items, t.query_ratings,
                        t.support_times, t.query_times) for t in tasks]
    moved = np.abs(np.concatenate(predict_tanp(model, features, flipped)) - np.concatenate(first))
    assert moved.max() > 1e-4  # other support ratings, other predictions: the user is read from them
    alone = [predict_tanp(model, features, [t])[0] for t in tasks]
    for a, b in zip(first, alone):  # padding in a meta-batch changes nothing
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    model.set_item_offset(np.arange(small_data.num_items) % 3)  # a fixed per-item offset moves the output by itself
    shifted = predict_tanp(model, features, tasks)
    for a, b, t in zip(shifted, first, tasks):
        np.testing.assert_allclose(a - b, t.query_items % 3, rtol=1e-4, atol=1e-4)


# -- end to end ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_cold_start_curves_on_a_csv_release(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, report = tmp_path / "run", tmp_path / "eval.json"
    overrides = ["data.format=csv", "data.synthetic.users=150", "data.synthetic.items=200", "data.synthetic.max_ratings=120",
                 "model.embedding_dim=4", "model.hidden=[8]", "melu.local_steps=[1]", "melu.epochs=1",
                 "baselines.nn_epochs=1", "baselines.mf_regs=[5.0]", "baselines.mf_factors=[2]", "baselines.mf_iters=2",
                 "baselines.finetune_steps=[1]", "baselines.finetune_lrs=[0.01]", "baselines.mf_foldin_regs=[20.0]",
                 "melu.local_lr_grid=[]", "metamf.epochs=2", "metamf.factors=[2]", "tanp.epochs=1", "tanp.hidden=8", "eval.support_sizes=[1, 3]",
                 "eval.ndcg_k=[3, 10]", "threads=1",
                 "methods=[global_mean, item_popularity, mf, nn_global, nn_finetune, melu, metamf, tanp]"]
    assert main(["recsys", "train", str(REPO / "configs" / "recsys-melu-synthetic.yaml"), *overrides,
                 "--out", str(out), "--evaluate", "--json", str(report), "--no-progress"]) == 0
    assert "no user demographics" in capsys.readouterr().err
    result = json.loads(report.read_text())
    curve = result["curves"]["new_users"]
    assert curve["users"] > 0 and set(curve["sizes"]) == {"1", "3"}
    assert set(curve["sizes"]["1"]) == {"global_mean", "item_popularity", "mf", "nn_global", "nn_finetune", "melu-1", "metamf",
                                        "tanp"}
    assert {"mae", "rmse", "ndcg@3", "ndcg@10"} <= set(curve["sizes"]["3"]["metamf"])
    for column in ("paper", "1", "3"):
        c = result["best_meta_vs_best_baseline"]["new_users"][column]
        assert c["meta"] in ("melu-1", "metamf", "tanp") and c["baseline"] not in ("melu-1", "metamf", "tanp")
        assert c["winner"] in (c["meta"], c["baseline"], "tie")
    text = (out / "report.md").read_text()
    assert "Who wins" in text and "Cold-start curves" in text and "no user demographics" in text and (out / "mae_by_support_size.png").is_file()
    training = json.loads((out / "training.json").read_text())
    assert {"metamf", "tanp"} <= set(training["methods"]) and training["methods"]["mf"]["foldin_reg"] in (5.0, 20.0)
