"""metakit predict / metakit.load: your classes, your items, labelled as evaluation would label them.

Runs are tiny (Conv-4 with 8 channels, 1 meta-training step) on a small Glyphs build (16 px, 5
drawers, the 226 letters of two Unicode blocks that all 16 fonts draw) kept in a module-wide
cache, so the whole file takes well under a minute. The central check writes fixed test episodes
as PNG folders and asserts that, for every registered learner, predicting them gives the labels
and the accuracy ``evaluate_learner`` computes on the same episodes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import metakit
from metakit.cli import main
from metakit.config import config_from_dict
from metakit.datasets.export import write_task
from metakit.episodes import FixedEpisodes
from metakit.errors import MetakitError
from metakit.evaluation import evaluate_learner, load_trained
from metakit.learners import LEARNERS
from metakit.predict import UNKNOWN, fit_temperature, list_images
from metakit.text import embeddings as te
from metakit.training import train

GLYPHS = {"name": "glyphs", "image_size": 16, "drawers": 5, "min_fonts": 16, "min_letters": 95, "split": "class"}
GLYPHS_OPTIONS = [f"{k}={v}" for k, v in GLYPHS.items() if k != "name"]

# Options that keep each learner's single training step and its adaptation cheap.
FAST = {
    "finetune": {"head_steps": 3},
    "baselinepp": {"head_steps": 3},
    "metabaseline": {"pretrain_steps": 1},
    "relation": {"hidden": 4},
    "logreg": {"max_iter": 10},
    "pmf": {"finetune_steps": 2, "lr_grid": [0.0, 0.001], "select_episodes": 1},
}
#: Learners that need data of their own kind, not images (tested with their data elsewhere).
SPECIAL = {"setfit_style": "fine-tunes a sentence encoder over token-id text items"}
#: Every built-in classification learner (a test may register its own; those are left out).
CLASSIFIERS = sorted(
    name for name, cls in LEARNERS.items()
    if cls.__module__.startswith("metakit.") and "classification" in cls.task_types and name not in SPECIAL
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache shared by the module's tests, so the small Glyphs build happens once."""
    return tmp_path_factory.mktemp("predict-cache")


@pytest.fixture(autouse=True)
def _use_module_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # After conftest's autouse fixture, which points every test at the session-wide cache.
    monkeypatch.setenv("METAKIT_CACHE", str(cache))


@pytest.fixture(scope="module")
def runs() -> dict[str, Path]:
    """Run directories by learner name, filled by :func:`trained` on first use."""
    return {}


def trained(runs: dict[str, Path], root: Path, learner: str) -> Path:
    """The run directory of ``learner``: a tiny config meta-trained for one step (once per module)."""
    if learner not in runs:
        config = config_from_dict({
            "name": f"predict-{learner}",
            "dataset": GLYPHS,
            "backbone": {"name": "conv4", "hidden": 8},
            "learner": {"name": learner, **FAST.get(learner, {})},
            "episodes": {"ways": 5, "shots": 1, "queries": 2, "meta_batch": 1},
            "eval": {"ways": [5], "shots": [2], "queries": 3, "episodes": 2, "val_episodes": 2},
            "train": {"steps": 1, "val_every": 1, "threads": 1},
        })
        out = root / f"run-{learner}"
        train(config, out, progress=False)
        runs[learner] = out
    return runs[learner]


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture
def protonet(runs: dict[str, Path], run_root: Path) -> Path:
    return trained(runs, run_root, "protonet")


def episodes_of(run: Path, count: int = 2, ways: int = 5, shots: int = 2, queries: int = 3):
    """The run, rebuilt, and fixed test episodes of it (as metakit evaluate draws them)."""
    exp = load_trained(run)
    return exp, FixedEpisodes(exp.source("test", ways, shots, queries), count, seed=7)


def write_episode(folder: Path, episode, options) -> list[str]:
    """SUPPORT/<class>/ and QUERY/ of one episode, in episode order; returns the class names."""
    names = [f"class{c}" for c in range(episode.ways)]  # sorted as the labels, so label i is folder i
    return write_task(folder, episode.support_x, episode.support_y, episode.query_x, episode.query_y, names, options,
                      shuffle_seed=None)


def run_cli(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------------------------
# predict = evaluate, for every learner


@pytest.mark.parametrize("learner", CLASSIFIERS)
def test_predicting_exported_episodes_gives_evaluates_labels_and_accuracy(learner, runs, run_root, tmp_path):
    run = trained(runs, run_root, learner)
    exp, episodes = episodes_of(run)
    model = metakit.load(run)
    for i, episode in enumerate(episodes):
        result = evaluate_learner(exp.learner, [episode])
        exp.learner.eval()  # evaluate_learner puts it back in training mode
        with torch.no_grad():  # what evaluate_learner computes, kept to compare labels one by one
            expected = exp.learner.adapt(episode.support_x, episode.support_y, episode.ways)(episode.query_x).argmax(-1)
        names = write_episode(tmp_path / f"episode{i}", episode, model.spec.image_options)
        model.fit_folder(tmp_path / f"episode{i}" / "support")
        labels = model.predict_files(list_images(tmp_path / f"episode{i}" / "query"))
        assert labels == [names[j] for j in expected.tolist()]
        truth = [names[j] for j in episode.query_y.tolist()]
        hits = torch.tensor([a == b for a, b in zip(labels, truth)], dtype=torch.float)
        assert hits.mean().item() == result.mean


def test_png_round_trip_reproduces_the_episode_tensors(protonet, tmp_path):
    _, episodes = episodes_of(protonet, count=1)
    episode = episodes[0]
    model = metakit.load(protonet)
    write_episode(tmp_path, episode, model.spec.image_options)
    assert torch.equal(model.prepare(list_images(tmp_path / "query")), episode.query_x)
    # Exported files are drawn dark on white (Glyphs stores ink high and predict inverts back).
    first = np.asarray(Image.open(sorted((tmp_path / "query").iterdir())[0]))
    assert first.mean() > 127


# --------------------------------------------------------------------------------------------
# The Python API


def test_string_labels_tensors_and_images_agree(protonet, tmp_path):
    _, episodes = episodes_of(protonet, count=1)
    episode = episodes[0]
    names = ["cat", "dog", "emu", "fox", "gnu"]
    labels = [names[j] for j in episode.support_y.tolist()]
    model = metakit.load(protonet)
    model.fit(episode.support_x, labels)
    assert model.classes == names and model.ways == 5  # first-seen order
    predicted = model.predict(episode.query_x)
    probs, classes = model.predict_proba(episode.query_x)
    assert classes == names and probs.shape == (15, 5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(15))
    assert predicted == [names[j] for j in probs.argmax(-1).tolist()]

    # The same support set as uint8 tensors, as PIL images and as files: the same predictions.
    write_episode(tmp_path, episode, model.spec.image_options)
    files = list_images(tmp_path / "support")
    pil = [Image.open(f) for f in files]
    query_files = list_images(tmp_path / "query")
    uint8 = (episode.support_x * 255).round().to(torch.uint8)
    for support in (uint8, pil, files):
        assert model.fit(support, labels).predict(query_files) == predicted
    # Integer labels are named by str().
    assert set(model.fit(episode.support_x, episode.support_y.tolist()).predict(episode.query_x)) <= {"0", "1", "2", "3", "4"}


def test_more_ways_than_trained_for_metric_learners_but_not_for_a_fixed_head(runs, run_root):
    _, episodes = episodes_of(trained(runs, run_root, "protonet"), ways=7)
    episode = episodes[0]
    model = metakit.load(runs["protonet"]).fit(episode.support_x, episode.support_y)
    assert model.ways == 7 and len(model.predict(episode.query_x)) == 21
    maml = metakit.load(trained(runs, run_root, "maml"))
    with pytest.raises(MetakitError, match="at most 5 classes") as err:
        maml.fit(episode.support_x, episode.support_y)
    assert "\n" not in str(err.value)


def test_min_confidence_top_k_and_batching(protonet):
    _, episodes = episodes_of(protonet, count=1)
    episode = episodes[0]
    model = metakit.load(protonet).fit(episode.support_x, episode.support_y)
    plain = model.predict_top(episode.query_x, k=3)
    top = [p.probability for p in plain]
    threshold = float(np.median(top))
    gated = model.predict(episode.query_x, min_confidence=threshold)
    assert gated == [UNKNOWN if p.probability < threshold else p.label for p in plain]
    assert 0 < gated.count(UNKNOWN) < len(gated)
    assert UNKNOWN not in model.predict(episode.query_x, min_confidence=0.0)
    for p in plain:
        assert len(p.top) == 3 and p.top[0] == (p.label, p.probability)
        assert p.top[0][1] >= p.top[1][1] >= p.top[2][1]
    assert len(model.predict_top(episode.query_x, k=50)[0].top) == 5  # cut to the number of classes
    # Batches of 4 change nothing for a learner that labels items one by one.
    model.batch_size = 4
    assert not model.batch_dependent
    assert [p.label for p in model.predict_top(episode.query_x)] == [p.label for p in plain]
    with pytest.raises(MetakitError, match="probability between 0 and 1"):
        model.predict(episode.query_x, min_confidence=1.5)


def test_fit_temperature_recovers_the_temperature_of_the_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 5, generator=g) * 3
    labels = torch.multinomial((logits / 2.5).softmax(-1), 1, generator=g).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)
    # Labels that always follow the argmax call for a colder softmax, not a warmer one.
    assert fit_temperature(logits, logits.argmax(-1)) < 0.1


def test_calibrate_on_validation_episodes(protonet):
    model = metakit.load(protonet, calibrate=True)
    c = model.calibration
    assert c["episodes"] == 2 and c["items"] == 2 * 5 * 3
    assert c["temperature"] == model.temperature > 0
    assert c["nll_after"] <= c["nll_before"]


def test_predict_before_fit_and_wrong_inputs_fail_in_one_line(protonet):
    model = metakit.load(protonet)
    with pytest.raises(MetakitError, match="call fit"):
        model.predict(torch.zeros(2, 1, 16, 16))
    with pytest.raises(MetakitError, match=r"shape \[3, 1, 28, 28\].*\[n, 1, 16, 16\]"):
        model.fit(torch.zeros(3, 1, 28, 28), ["a", "b", "c"])
    with pytest.raises(MetakitError, match="one label per item"):
        model.fit(torch.zeros(3, 1, 16, 16), ["a", "b"])
    with pytest.raises(MetakitError, match="at least 2 classes"):
        model.fit(torch.zeros(3, 1, 16, 16), ["a", "a", "a"])
    with pytest.raises(MetakitError, match="fit_table"):
        model.fit_table("support.csv")


def test_import_metakit_stays_light():
    code = "import sys, metakit; assert callable(metakit.load); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# --------------------------------------------------------------------------------------------
# The command line


def test_cli_writes_csv_table_and_json(protonet, tmp_path, capsys):
    _, episodes = episodes_of(protonet, count=1)
    episode = episodes[0]
    model = metakit.load(protonet)
    names = write_episode(tmp_path / "task", episode, model.spec.image_options)
    out, js = tmp_path / "pred.csv", tmp_path / "pred.json"
    code, stdout, _ = run_cli(capsys, [
        "predict", str(protonet), "--support", str(tmp_path / "task" / "support"), "--query", str(tmp_path / "task" / "query"),
        "--out", str(out), "--top-k", "2", "--json", str(js), "--show", "4", "--no-progress",
    ])
    assert code == 0
    rows = read_rows(out)
    assert list(rows[0]) == ["file", "label", "probability", "label_2", "probability_2"]
    files = list_images(tmp_path / "task" / "query")
    assert [r["file"] for r in rows] == [str(f) for f in files]
    assert [r["label"] for r in rows] == model.fit_folder(tmp_path / "task" / "support").predict_files(files)
    assert all(float(r["probability"]) >= float(r["probability_2"]) for r in rows) and set(names) >= {r["label"] for r in rows}
    assert "11 more rows" in stdout and "labelled 15 items" in stdout
    data = json.loads(js.read_text())
    assert data["classes"] == names and data["items"] == 15 and data["predictions"][0]["label"] == rows[0]["label"]


def test_cli_single_query_image_and_min_confidence(protonet, tmp_path, capsys):
    _, episodes = episodes_of(protonet, count=1)
    write_episode(tmp_path / "task", episodes[0], metakit.load(protonet).spec.image_options)
    image = sorted((tmp_path / "task" / "query").iterdir())[0]
    out = tmp_path / "one.csv"
    code, stdout, _ = run_cli(capsys, ["predict", str(protonet), "--support", str(tmp_path / "task" / "support"),
                                       "--query", str(image), "--out", str(out), "--min-confidence", "1", "--no-progress"])
    assert code == 0
    rows = read_rows(out)
    assert len(rows) == 1 and rows[0]["label"] == UNKNOWN and float(rows[0]["probability"]) < 1
    assert "1 item(s) below --min-confidence" in stdout


def _corrupt_query(task: Path) -> None:
    (sorted((task / "query").iterdir())[3]).write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")


def _empty_support(task: Path) -> None:
    for folder in (task / "support").iterdir():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


def _empty_class(task: Path) -> None:
    (task / "support" / "class9").mkdir()


def _one_class(task: Path) -> None:
    for folder in sorted((task / "support").iterdir())[1:]:
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()


def _loose_image(task: Path) -> None:
    (task / "support" / "stray.png").write_bytes((task / "support" / "class0" / "000.png").read_bytes())


def _no_checkpoint(task: Path) -> None:
    (task / "run" / "checkpoints" / "best.pt").unlink()


def _no_config(task: Path) -> None:
    (task / "run" / "config.yaml").unlink()


def _no_query(task: Path) -> None:
    shutil.rmtree(task / "query")


@pytest.mark.parametrize(("break_it", "extra", "needle"), [
    (_empty_support, [], "holds no class folders"),
    (_empty_class, [], "class9/ holds no image files"),
    (_one_class, [], "at least 2 classes"),
    (_loose_image, [], "stray.png is not inside a class folder"),
    (_corrupt_query, [], "cannot read"),
    (_no_query, [], "query does not exist"),
    (_no_checkpoint, [], "best.pt not found; train the run first"),
    (_no_config, [], "not a metakit run directory"),
    (None, ["--min-confidence", "1.5"], "between 0 and 1"),
    (None, ["--top-k", "0"], "--top-k must be >= 1"),
], ids=lambda v: getattr(v, "__name__", None) or (" ".join(v) if isinstance(v, list) else str(v)[:12]))
def test_cli_bad_input_one_line_exit_2_no_file(protonet, tmp_path, capsys, break_it, extra, needle):
    task = tmp_path / "task"
    _, episodes = episodes_of(protonet, count=1)
    write_episode(task, episodes[0], metakit.load(protonet).spec.image_options)
    shutil.copytree(protonet, task / "run")
    if break_it is not None:
        break_it(task)
    out = tmp_path / "pred.csv"
    args = ["predict", str(task / "run"), "--support", str(task / "support"), "--query", str(task / "query"),
            "--out", str(out), "--json", str(tmp_path / "pred.json"), "--no-progress", *extra]
    code, _, err = run_cli(capsys, args)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith("error:") and needle in " ".join(lines)
    assert "Traceback" not in err
    assert not out.exists() and not (tmp_path / "pred.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pred")]  # no temporary file left


def test_cli_too_many_ways_for_maml_fails_in_one_line(runs, run_root, tmp_path, capsys):
    maml = trained(runs, run_root, "maml")
    _, episodes = episodes_of(maml, count=1, ways=6)
    write_episode(tmp_path / "task", episodes[0], metakit.load(maml).spec.image_options)
    code, _, err = run_cli(capsys, ["predict", str(maml), "--support", str(tmp_path / "task" / "support"),
                                    "--query", str(tmp_path / "task" / "query"), "--out", str(tmp_path / "p.csv")])
    assert code == 2 and "6 classes" in err and "at most 5" in err and not (tmp_path / "p.csv").exists()


# --------------------------------------------------------------------------------------------
# metakit datasets export


def test_export_then_predict_with_the_true_labels(protonet, tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, _ = run_cli(capsys, ["datasets", "export", "glyphs", *GLYPHS_OPTIONS, "--out", str(out),
                                       "--classes", "4", "--shots", "2", "--queries", "3", "--seed", "3"])
    assert code == 0 and "metakit predict RUN_DIR" in stdout
    classes = sorted(p.name for p in (out / "support").iterdir())
    assert len(classes) == 4 and all(len(list((out / "support" / c).iterdir())) == 2 for c in classes)
    truth = read_rows(out / "query_labels.csv")
    assert sorted(r["file"] for r in truth) == sorted(p.name for p in (out / "query").iterdir()) and len(truth) == 12
    assert {r["label"] for r in truth} == set(classes)
    assert [r["label"] for r in truth] != sorted(r["label"] for r in truth)  # shuffled: order gives nothing away
    # The exported classes are test classes: none of them is in the run's training split.
    train_names = set(load_trained(protonet).splits["train"].class_names)
    assert not train_names & set(classes)
    code, _, _ = run_cli(capsys, ["predict", str(protonet), "--support", str(out / "support"), "--query",
                                  str(out / "query"), "--out", str(tmp_path / "p.csv"), "--no-progress"])
    assert code == 0
    predicted = {Path(r["file"]).name: r["label"] for r in read_rows(tmp_path / "p.csv")}
    assert set(predicted) == {r["file"] for r in truth} and set(predicted.values()) <= set(classes)

    # Same seed, same task, byte for byte; another seed, another task.
    again, other = tmp_path / "again", tmp_path / "other"
    for folder, seed in ((again, "3"), (other, "4")):
        assert run_cli(capsys, ["datasets", "export", "glyphs", *GLYPHS_OPTIONS, "--out", str(folder), "--classes", "4",
                                "--shots", "2", "--queries", "3", "--seed", seed])[0] == 0

    def digest(folder: Path) -> str:
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()

    assert digest(again) == digest(out) != digest(other)


@pytest.mark.parametrize(("args", "needle"), [
    (["glyphs", *GLYPHS_OPTIONS, "--classes", "1"], "--classes must be an integer >= 2"),
    (["glyphs", *GLYPHS_OPTIONS, "--queries", "9"], "impossible episode spec"),
    (["glyphs", *GLYPHS_OPTIONS, "--split", "holdout"], "unknown split 'holdout'"),
    (["sinusoid"], "not made from image files"),
    (["glyphs", *GLYPHS_OPTIONS, "--out", "EXISTING"], "is not empty"),
    ([], "needs a dataset name"),
], ids=lambda v: " ".join(v[:1] + v[-2:]) if isinstance(v, list) else v[:16])
def test_export_bad_input(tmp_path, capsys, args, needle):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    out = tmp_path / "demo"
    args = [str(existing) if a == "EXISTING" else a for a in args]
    extra = [] if "--out" in args else ["--out", str(out)]
    code, _, err = run_cli(capsys, ["datasets", "export", *args, *extra])
    assert code == 2 and needle in err and "Traceback" not in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["existing"]
    assert (existing / "keep.txt").read_text() == "mine"


def test_datasets_without_action_still_lists(tmp_path, capsys):
    code, _, _ = run_cli(capsys, ["datasets", "--json", str(tmp_path / "d.json")])
    assert code == 0 and "glyphs" in {d["name"] for d in json.loads((tmp_path / "d.json").read_text())}


# --------------------------------------------------------------------------------------------
# Text runs: sentences in CSV / JSONL, embedded by the run's encoder


class WordHashEncoder(te.Encoder):
    """Hashed bag of words, unit-normalised: instant and deterministic, with real class signal."""

    name = "predict-words"

    def cache_id(self) -> str:
        return "predict-words-v1"

    def encode(self, texts, batch_size=64):  # noqa: ANN001, ANN201
        out = np.zeros((len(texts), 384), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 384] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


te.register_encoder(WordHashEncoder.name, WordHashEncoder)


def sentence(intent: str, k: int) -> str:
    return f"{intent} {intent}ish please help number{k}"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """A centroid run over Banking77-format files with 20 intents, embedded by the word-hash encoder."""
    root = tmp_path_factory.mktemp("banking")
    for part in ("train", "test"):
        with open(root / f"{part}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "category"])
            for i in range(20):
                w.writerows([sentence(f"intent{i}", k), f"intent{i}"] for k in range(8 if part == "train" else 2))
    config = {
        "name": "text", "dataset": {"name": "banking77", "root": str(root), "encoder": WordHashEncoder.name,
                                    "download": False, "split": "class"},
        "backbone": {"name": "identity"}, "learner": {"name": "centroid"},
        "episodes": {"ways": 3, "shots": 1, "queries": 2, "meta_batch": 1},
        "eval": {"ways": [2], "shots": [1], "queries": 2, "episodes": 2, "val_episodes": 2},
        "train": {"steps": 1, "val_every": 1, "threads": 1},
    }
    out = tmp_path_factory.mktemp("text") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAKIT_CACHE", str(cache))
        train(config_from_dict(config), out, progress=False)
    return out


def test_text_run_labels_sentences_from_csv_and_jsonl(text_run, tmp_path, capsys):
    with open(tmp_path / "support.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["utterance", "intent"])
        w.writerows([sentence(name, k), name] for name in ("refund", "card", "transfer") for k in range(2))
    queries = [sentence(name, k) for name in ("transfer", "refund", "card") for k in (5, 6)]
    (tmp_path / "query.jsonl").write_text("".join(json.dumps({"utterance": q}) + "\n" for q in queries), encoding="utf-8")
    out = tmp_path / "pred.csv"
    code, _, err = run_cli(capsys, [
        "predict", str(text_run), "--support", str(tmp_path / "support.csv"), "--query", str(tmp_path / "query.jsonl"),
        "--text-column", "utterance", "--label-column", "intent", "--out", str(out), "--top-k", "3", "--no-progress",
    ])
    assert code == 0, err
    rows = read_rows(out)
    assert list(rows[0])[:3] == ["text", "label", "probability"] and [r["text"] for r in rows] == queries
    assert [r["label"] for r in rows] == ["transfer"] * 2 + ["refund"] * 2 + ["card"] * 2
    # The API, from sentences directly.
    model = metakit.load(text_run)
    assert model.spec.kind == "text" and model.spec.encoder == WordHashEncoder.name
    labels = model.fit([sentence("a", 0), sentence("b", 0)], ["a", "b"]).predict([sentence("b", 9), sentence("a", 9)])
    assert labels == ["b", "a"]


def test_text_run_bad_table_fails_in_one_line(text_run, tmp_path, capsys):
    (tmp_path / "support.csv").write_text("text,label\nhello there,greeting\n", encoding="utf-8")
    (tmp_path / "query.csv").write_text("sentence\nhi\n", encoding="utf-8")
    out = tmp_path / "pred.csv"
    base = ["predict", str(text_run), "--out", str(out), "--query", str(tmp_path / "query.csv"), "--support"]
    code, _, err = run_cli(capsys, [*base, str(tmp_path / "support.csv")])
    assert code == 2 and "at least 2 classes" in err and not out.exists()
    (tmp_path / "support.csv").write_text("text,label\nhello there,greeting\nbye now,farewell\n", encoding="utf-8")
    code, _, err = run_cli(capsys, [*base, str(tmp_path / "support.csv")])
    assert code == 2 and "no 'text' column (header: sentence)" in err and not out.exists()



class LetterTokens:
    """A text model that only tokenizes: one id per letter, between [CLS]=101 and [SEP]=102."""

    name = "predict-letters"
    pad_id = 0

    def tokenize(self, texts, max_length):  # noqa: ANN001, ANN201
        return [([101] + [ord(c) for c in t if c != " "] + [102])[:max_length] for t in texts]


def test_token_id_runs_get_sentences_tokenized_and_padded_to_their_width():
    from metakit.backbones import build_backbone
    from metakit.learners import TaskInfo, build_learner
    from metakit.predict import FewShotModel, InputSpec
    from metakit.text.encoder import register_text_model

    register_text_model(LetterTokens.name, LetterTokens)
    learner = build_learner("protonet", build_backbone("identity", (6,)), TaskInfo("classification", (6,), 2))
    model = FewShotModel(learner, InputSpec("text", (6,), "banking77", encoder=LetterTokens.name, tokens=True))
    x = model.prepare(["ab", "abcdefgh"])
    assert x.tolist() == [[101, 97, 98, 102, 0, 0], [101, 97, 98, 99, 100, 101]]  # padded; truncated to 6
    assert model.fit(["ab", "xy"], ["first", "second"]).predict(["ab", "xy"]) == ["first", "second"]
