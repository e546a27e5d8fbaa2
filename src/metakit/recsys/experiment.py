"""A recsys run: config -> ratings -> split -> every method fitted -> scenarios scored -> run directory.

Run directory (the layout of :class:`metakit.runs.RunPaths` where it applies)::

    RUN_DIR/
      config.yaml              resolved config (re-run it to reproduce the run)
      training.json            data and split statistics, per-method fit time, choices made on validation
      checkpoints/models.pt    every fitted method (network weights, MF factors, ...)
      training_curves.png      validation MAE per epoch of the neural methods
      evaluation.json          metrics per scenario and method (mean ± 95% CI over users), paired deltas
      mae_by_scenario.png      MAE ± CI per scenario per method
      report.md                all of it in words and tables

``evaluate`` rebuilds the data and split from ``config.yaml`` (deterministic in the seeds) and
checks they are the data the models were trained on, so a run can be re-scored at any time.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

from metakit.config import call_with_options
from metakit.errors import MetakitError
from metakit.recsys import baselines as bl
from metakit.recsys.config import RecsysConfig, recsys_config_from_dict
from metakit.recsys.melu import Features, MetaTrainConfig, RatingNet, meta_train, predict_tasks
from metakit.recsys.metrics import paired_difference, per_user_metrics, summarise
from metakit.recsys.movielens import RatingsData, load_movielens
from metakit.recsys.synthetic import SyntheticSpec, synthetic_movielens
from metakit.recsys.metamf import MetaMF, predict_metamf, train_metamf
from metakit.recsys.tanp import TaNP, predict_tanp, train_tanp
from metakit.recsys.tasks import (
    SCENARIOS, Split, UserTask, at_support_size, build_split, temporal_training_task, training_task, validation_sets,
)
from metakit.runs import Run, progress_bar, run_config_data, write_report
from metakit.utils import seed_everything, set_threads

console = Console(stderr=True)
Predictor = Callable[[Sequence[UserTask]], list[np.ndarray]]

#: Display names, in table order; MeLU variants are ``MeLU-<steps>``.
DISPLAY = {
    "global_mean": "global mean",
    "item_popularity": "item popularity",
    "mf": "biased MF",
    "nn_global": "NN, global",
    "nn_finetune": "NN + fine-tune",
    "metamf": "meta-MF",
    "tanp": "TaNP",
    "surprise_svd": "Surprise SVD (refit)",
}


def is_meta(key: str) -> bool:
    """Whether method ``key`` meta-learns (MeLU variants, meta-MF); the others are baselines."""
    return key.startswith("melu-") or key in ("metamf", "tanp")


def _loadable(obj: Any) -> Any:
    """``obj`` with NumPy arrays as tensors and NumPy scalars as Python numbers.

    ``torch.load(weights_only=True)`` refuses NumPy objects; the baselines rebuild their arrays
    with ``np.asarray``, which takes the tensors back unchanged.
    """
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _loadable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_loadable(v) for v in obj)
    return obj


def load_ratings(config: RecsysConfig) -> RatingsData:
    """The ratings the config names: generated synthetic files, or MovieLens (downloaded if needed)."""
    d = config.data
    if d.source == "synthetic":
        spec = call_with_options(SyntheticSpec, dict(d.synthetic), "data.synthetic")
        return synthetic_movielens(spec, d.format)
    return load_movielens(d.source, d.root, d.download)


def fingerprint(data: RatingsData) -> str:
    """A short hash of the ratings, to tell whether evaluation sees the training run's data."""
    h = hashlib.sha256()
    for arr in (data.user, data.item, data.rating, data.timestamp, data.user_features, data.item_genres, data.item_year):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


def _net(config: RecsysConfig, features: Features, init_rating: float) -> RatingNet:
    return RatingNet(features.user_sizes, features.genres.shape[1], features.num_years, config.model.embedding_dim,
                     config.model.hidden, init_rating, features.genres.shape[0] if config.model.item_ids else 0,
                     config.model.global_layers)


def method_keys(config: RecsysConfig) -> list[str]:
    """The run's method keys in table order (``melu`` expanded to ``melu-1``, ``melu-5``, ...)."""
    keys = [m for m in DISPLAY if m in config.methods]
    if "melu" in config.methods:
        keys += [f"melu-{s}" for s in config.melu.local_steps]
    return keys


def display_name(key: str) -> str:
    """``melu-5`` -> ``MeLU-5``; baselines by :data:`DISPLAY`."""
    return f"MeLU-{key.split('-', 1)[1]}" if key.startswith("melu-") else DISPLAY[key]


def _progress(enabled: bool) -> Progress:
    return progress_bar("{task.description}", console, enabled, transient=True)


def train_recsys(config: RecsysConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Fit every method of ``config`` and write the run directory ``out``; returns the training summary."""
    config.check()
    if "surprise_svd" in config.methods:  # before any fitting: a missing library is one line, not a late crash
        bl.SurpriseSVD.require()
    threads = set_threads(config.threads)
    seed_everything(config.seed)
    start = time.perf_counter()
    # Data first: a missing or damaged dataset fails before the run directory is created.
    data = load_ratings(config)
    split = build_split(data, config.tasks)
    run = Run(out, domain="recsys")
    run.create(config.to_yaml(), fresh_log=False)  # the fits log their epochs in training.json
    features = Features.from_data(data)
    mu = float(split.train_rating.mean())
    val_sets = validation_sets(split, config.eval.support_sizes)
    states: dict[str, Any] = {"fingerprint": fingerprint(data)}
    if not data.has_user_features and any(m in config.methods for m in ("melu", "nn_global", "nn_finetune", "tanp")):
        console.print(f"{data.name} has no user demographics: MeLU, TaNP and the NN baselines read a user from its "
                      f"ratings and item content only (every user has the same feature codes); meta-MF and MF need none.")
    methods: dict[str, dict[str, Any]] = {}
    b = config.baselines
    with _progress(progress) as bar:

        def epochs(label: str, total: int) -> Callable[[int, float, float], None]:
            task = bar.add_task(label, total=total, info="")
            return lambda e, loss, val: bar.update(task, completed=e, info=f"train MSE {loss:.3f}, val MAE {val:.4f}")

        for key in method_keys(config):
            t0 = time.perf_counter()
            seed = config.seed + 1000 * (list(DISPLAY).index(key) if key in DISPLAY else 10 + int(key.split("-")[1]))
            info: dict[str, Any] = {}
            if key == "global_mean":
                states[key] = bl.GlobalMean().fit(split).state()
            elif key == "item_popularity":
                states[key] = bl.ItemPopularity(b.popularity_shrinkage).fit(split, data.num_items).state()
            elif key == "mf":
                mf, scores = bl.select_mf(split, data.num_users, data.num_items, b.mf_factors, b.mf_regs, b.mf_iters, seed,
                                          val_sets, b.mf_foldin_regs)
                states[key] = mf.state()
                info = {"factors": mf.factors, "reg": mf.reg, "foldin_reg": mf.foldin_reg if mf.foldin_reg else mf.reg,
                        "val_mae_by_setting": scores}
            elif key == "metamf":
                states[key], info = _fit_metamf(config, features, split, mu, seed, val_sets, epochs)
            elif key == "surprise_svd":
                svd, scores = bl.select_surprise(split, b.surprise_factors, b.surprise_regs, b.surprise_epochs, seed,
                                                 val_sets)
                states[key] = svd.state()
                info = {"factors": svd.factors, "reg": svd.reg, "val_mae_by_setting": scores}
            elif key == "tanp":
                states[key], info = _fit_tanp(config, features, split, mu, seed, val_sets, epochs)
            elif key in ("nn_global", "nn_finetune"):
                if "nn_global_weights" not in states:  # fine-tuning starts from the global network
                    g_seed = config.seed + 1000 * list(DISPLAY).index("nn_global")
                    torch.manual_seed(g_seed)
                    net = _net(config, features, mu)
                    info.update(bl.train_global(net, features, split, b.nn_epochs, b.nn_batch, b.nn_lr, g_seed,
                                                on_epoch=epochs("NN, global", b.nn_epochs)))
                    states["nn_global_weights"] = net.state_dict()
                states[key] = {"steps": 0, "lr": 0.0}
                if key == "nn_finetune":
                    net = _net(config, features, mu)
                    net.load_state_dict(states["nn_global_weights"])
                    steps, lr, scores = bl.select_finetune(net, features, split.val, b.finetune_steps, b.finetune_lrs)
                    states[key] = {"steps": steps, "lr": lr}
                    info.update({"steps": steps, "lr": lr, "val_mae_by_setting": scores})
            else:
                states[key], info = _fit_melu(config, key, features, split, mu, seed, epochs)
            methods[key] = {**info, "fit_seconds": time.perf_counter() - t0}
    run.save("models", _loadable(states))
    summary = {
        "data": data.describe(),
        "user_demographics": data.has_user_features,
        "fingerprint": states["fingerprint"],
        "split": split.stats,
        "methods": methods,
        "seed": config.seed,
        "threads": threads,
        "train_seconds": time.perf_counter() - start,
    }
    from metakit.recsys.report import run_report

    write_report(run.root, run_report(run.root, training=summary))
    return summary


def _fit_melu(config: RecsysConfig, key: str, features: Features, split: Split, mu: float, seed: int,
              epochs: Callable[[str, int], Callable[[int, float, float], None]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Meta-train one MeLU variant (per local lr of the grid, keeping the best on validation users)."""
    steps = int(key.split("-")[1])
    m = config.melu
    users = sorted(split.train_by_user)

    def make_tasks(rng: np.random.Generator) -> list[UserTask]:
        return [t for t in (training_task(split, u, config.tasks, rng) for u in users) if t is not None]

    best: tuple[float, dict[str, Any], dict[str, Any]] | None = None
    scores: dict[str, float] = {}
    for local_lr in m.local_lr_grid or [m.local_lr]:
        cfg = MetaTrainConfig(**m.training_settings(), local_steps=steps, local_lr=local_lr, epochs=m.epochs)
        torch.manual_seed(seed)  # every grid point starts from the same initial network
        net = _net(config, features, mu)
        label = display_name(key) + (f" (local lr {local_lr})" if m.local_lr_grid else "")
        info = meta_train(net, features, make_tasks, split.val, cfg, seed, on_epoch=epochs(label, m.epochs))
        learned = info.pop("local_lr")
        scores[f"local_lr={local_lr}"] = info["best_val_mae"]
        if best is None or info["best_val_mae"] < best[0]:
            state = {"weights": net.state_dict(), "steps": steps, "lr": learned}
            best = (info["best_val_mae"], state, {**info, "local_lr": local_lr})
    assert best is not None
    info = best[2]
    if m.local_lr_grid:
        info["val_mae_by_local_lr"] = scores
    if isinstance(best[1]["lr"], dict):  # Meta-SGD: summarise the learned step sizes per tensor
        info["learned_local_lr_mean"] = {n: float(v.mean()) for n, v in best[1]["lr"].items()}
    return best[1], info


def _metamf(features: Features, factors: int, steps: int, init_lr: float, mu: float) -> MetaMF:
    return MetaMF(features.genres.shape[0], features.genres.shape[1], features.num_years, factors, steps, init_lr, mu)


def _task_maker(config: RecsysConfig, split: Split, temporal: bool) -> Callable[[np.random.Generator], list[UserTask]]:
    """The epoch's training tasks, one per training user: in time order (as tested) or a random partition."""
    users = sorted(split.train_by_user)
    draw = temporal_training_task if temporal else training_task
    return lambda rng: [t for t in (draw(split, u, config.tasks, rng) for u in users) if t is not None]


def _popularity_offset(config: RecsysConfig, split: Split, features: Features, mu: float) -> np.ndarray:
    """Each item's item-popularity score minus the training mean (the offset meta-MF and TaNP may learn a residual to)."""
    num_items = features.genres.shape[0]
    return bl.ItemPopularity(config.baselines.popularity_shrinkage).fit(split, num_items).scores - mu


def _tanp(config: RecsysConfig, features: Features, mu: float) -> TaNP:
    t = config.tanp
    return TaNP(features, t.embedding_dim, t.hidden, t.latent, t.clusters, t.decoder_layers, mu)


def _fit_tanp(config: RecsysConfig, features: Features, split: Split, mu: float, seed: int,
              val_sets: list[list[UserTask]],
              epochs: Callable[[str, int], Callable[[int, float, float], None]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train TaNP; the epoch is chosen on the validation sets."""
    t = config.tanp
    torch.manual_seed(seed)
    model = _tanp(config, features, mu)
    model.mark_trained(split.train_item)
    if t.popularity_offset:
        model.set_item_offset(_popularity_offset(config, split, features, mu))
    info = train_tanp(model, features, _task_maker(config, split, t.temporal),
                      lambda predict: bl.validation_score(predict, val_sets), t, seed, on_epoch=epochs("TaNP", t.epochs))
    return {"weights": model.state_dict()}, info


def _fit_metamf(config: RecsysConfig, features: Features, split: Split, mu: float, seed: int,
                val_sets: list[list[UserTask]],
                epochs: Callable[[str, int], Callable[[int, float, float], None]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Meta-train meta-MF once per size of ``metamf.factors``; keep the best on the validation sets."""
    m = config.metamf
    make_tasks = _task_maker(config, split, m.temporal)
    best: tuple[float, dict[str, Any], dict[str, Any]] | None = None
    scores: dict[str, float] = {}
    for k in m.factors:
        torch.manual_seed(seed)
        model = _metamf(features, k, m.steps, m.init_lr, mu)
        model.mark_trained(split.train_item)
        if m.popularity_offset:
            model.set_item_offset(_popularity_offset(config, split, features, mu))
        label = "meta-MF" + (f" (factors {k})" if len(m.factors) > 1 else "")
        info = train_metamf(model, features, make_tasks, lambda predict: bl.validation_score(predict, val_sets), m,
                            seed, on_epoch=epochs(label, m.epochs))
        scores[f"factors={k}"] = info["best_val_mae"]
        if best is None or info["best_val_mae"] < best[0]:
            best = (info["best_val_mae"], {"weights": model.state_dict(), "factors": k}, {**info, "factors": k})
    assert best is not None
    if len(m.factors) > 1:
        best[2]["val_mae_by_factors"] = scores
    return best[1], best[2]


def load_recsys_run(run_dir: str | Path) -> RecsysConfig:
    """A recsys run directory's resolved config."""
    data = run_config_data(run_dir, "", "`metakit recsys train`")
    if "tasks" not in data or "melu" not in data:
        raise MetakitError(f"{run_dir} is not a recsys run (its config.yaml has no tasks/melu sections); "
                           f"use `metakit evaluate` for meta-learning runs.")
    return recsys_config_from_dict(data)


def predictors(config: RecsysConfig, states: dict[str, Any], features: Features, split: Split) -> dict[str, Predictor]:
    """A query-prediction function per fitted method of the run (``split``: the run's, rebuilt from its config)."""
    out: dict[str, Predictor] = {}
    for key in method_keys(config):
        if key not in states:
            raise MetakitError(f"the run has no fitted {key}; train it again with this config.")
        s = states[key]
        if key == "global_mean":
            out[key] = bl.GlobalMean.from_state(s).predict
        elif key == "item_popularity":
            out[key] = bl.ItemPopularity.from_state(s).predict
        elif key == "mf":
            out[key] = bl.BiasedMF.from_state(s).predict
        elif key == "surprise_svd":
            out[key] = bl.SurpriseSVD.from_state(s).fit(split).predict
        elif key == "tanp":
            tanp = _tanp(config, features, 0.0)
            tanp.load_state_dict(s["weights"])
            out[key] = lambda tasks, tanp=tanp: predict_tanp(tanp, features, tasks)
        elif key == "metamf":
            model = _metamf(features, int(s["factors"]), config.metamf.steps, config.metamf.init_lr, 0.0)
            model.load_state_dict(s["weights"])
            out[key] = lambda tasks, model=model: predict_metamf(model, features, tasks)
        else:
            net = _net(config, features, 0.0)
            if key in ("nn_global", "nn_finetune"):
                net.load_state_dict(states["nn_global_weights"])
                steps, lr = (0, 0.0) if key == "nn_global" else (s["steps"], s["lr"])
            else:
                net.load_state_dict(s["weights"])
                steps, lr = s["steps"], s["lr"]
            out[key] = lambda tasks, net=net, steps=steps, lr=lr: predict_tasks(net, features, tasks, steps, lr)
    return out


def evaluate_recsys(run_dir: str | Path, progress: bool = True, write: bool = True) -> dict[str, Any]:
    """Score every method of a trained run on every scenario of its config; write the files (see module doc)."""
    run_dir = Path(run_dir)
    config = load_recsys_run(run_dir)
    run = Run(run_dir)
    if not run.checkpoint("models").is_file():
        raise MetakitError(f"{run.checkpoint('models')} not found; train the run first (metakit recsys train CONFIG --out {run_dir}).")
    states = run.load("models", f"train again (metakit recsys train CONFIG --out {run_dir})", keys=("fingerprint",))
    threads = set_threads(config.threads)
    data = load_ratings(config)
    if fingerprint(data) != states.get("fingerprint"):
        raise MetakitError(f"the data of {config.data.source} differ from those {run_dir} was trained on; "
                           f"train again on the current data.")
    split = build_split(data, config.tasks)
    features = Features.from_data(data)
    preds = predictors(config, states, features, split)
    ks = config.eval.ndcg_k
    results: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    comparison: dict[str, Any] = {}
    sizes = sorted(set(config.eval.support_sizes))
    curve_scenarios = [c for c in config.eval.curve_scenarios if sizes]
    start = time.perf_counter()
    with _progress(progress) as bar:
        total = (len(config.eval.scenarios) + len(curve_scenarios) * len(sizes)) * len(preds)
        task = bar.add_task("scoring", total=total, info="")

        def score(label: str, tasks: list[UserTask]) -> tuple[dict[str, Any], dict[str, dict[str, list[float]]]]:
            truths = [t.query_ratings for t in tasks]
            users = [t.user for t in tasks]
            summaries, per_user = {}, {}
            for key, predict in preds.items():
                bar.update(task, info=f"{label}: {display_name(key)}")
                per_user[key] = per_user_metrics(predict(tasks), truths, users, ks) if tasks else {"mae": []}
                summaries[key] = summarise(per_user[key]) if tasks else {"users": 0}
                bar.advance(task)
            return summaries, per_user

        for scenario in config.eval.scenarios:
            tasks = split.scenarios[scenario]
            results[scenario], per_user = score(SCENARIOS[scenario], tasks)
            paired[scenario] = {
                mk: {bk: paired_difference(per_user[mk]["mae"], per_user[bk]["mae"]) for bk in preds if not is_meta(bk)}
                for mk in preds if is_meta(mk) and tasks
            }
            comparison.setdefault(scenario, {})["paper"] = best_meta_vs_baseline(results[scenario], per_user)
        for scenario in curve_scenarios:
            curves[scenario] = {"users": 0, "sizes": {}}
            for size in sizes:
                tasks = at_support_size(split.scenarios[scenario], size, max(sizes))
                curves[scenario]["users"] = len(tasks)
                curves[scenario]["sizes"][str(size)], per_user = score(f"{SCENARIOS[scenario]}, {size} ratings", tasks)
                comparison.setdefault(scenario, {})[str(size)] = best_meta_vs_baseline(
                    curves[scenario]["sizes"][str(size)], per_user)
    result = {
        "run": str(run_dir),
        "data": data.describe(),
        "split": split.stats,
        "scenarios": {s: SCENARIOS[s] for s in config.eval.scenarios},
        "methods": {k: display_name(k) for k in preds},
        "results": results,
        "paired_mae_vs_baselines": paired,
        "curves": curves,
        "support_sizes": sizes,
        "best_meta_vs_best_baseline": comparison,
        "ndcg_k": ks,
        "threads": threads,
        "eval_seconds": time.perf_counter() - start,
        "config": asdict(config),
    }
    if write:
        from metakit.recsys.report import run_report

        write_report(run_dir, run_report(run_dir, evaluation=result))
    return result


def best_meta_vs_baseline(summaries: dict[str, Any], per_user: dict[str, dict[str, list[float]]]) -> dict[str, Any] | None:
    """The best meta-learner against the best baseline by MAE on these users, paired (``None``: one side missing).

    ``difference`` is the meta-learner's MAE minus the baseline's, mean ± 95% CI over the same
    users; ``winner`` is the side whose CI excludes 0 in its favour, or ``"tie"``.
    """
    maes = {k: r["mae"]["mean"] for k, r in summaries.items() if "mae" in r}
    meta = [k for k in maes if is_meta(k)]
    base = [k for k in maes if not is_meta(k)]
    if not meta or not base:
        return None
    m = min(meta, key=maes.get)
    b = min(base, key=maes.get)
    d = paired_difference(per_user[m]["mae"], per_user[b]["mae"])
    winner = m if d["mean"] + d["ci95"] < 0 else b if d["mean"] - d["ci95"] > 0 else "tie"
    return {"meta": m, "baseline": b, "meta_mae": maes[m], "baseline_mae": maes[b], "difference": d, "winner": winner}


def results_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One flat row per scenario and method (for tables and JSON consumers)."""
    rows = []
    for scenario, by_method in result["results"].items():
        for key, r in by_method.items():
            rows.append({"scenario": scenario, "method": result["methods"][key], **r})
    return rows

