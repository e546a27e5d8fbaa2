"""What a recsys run's report says: the markdown report, the MAE-per-scenario plot and the training curves.

``run_report`` builds ``report.md`` from the files in the run directory (config, training
summary, evaluation), so it can be rebuilt at any time, with the figures and JSON just computed;
:func:`metakit.runs.write_report` writes it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metakit.recsys.tasks import SCENARIOS
from metakit.runs import Plot, Report, RunPaths, pyplot, read_json, run_config_data


def fmt(r: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean ± ci`` of a metric summary, ``-`` when absent."""
    return f"{r['mean']:.{digits}f} ± {r['ci95']:.{digits}f}" if r else "-"


def results_markdown(result: dict[str, Any]) -> str:
    """One table: a row per scenario and method with users, MAE, RMSE and nDCG@k (mean ± 95% CI)."""
    ks = result["ndcg_k"]
    head = ["scenario", "method", "users", "MAE", "RMSE", *[f"nDCG@{k}" for k in ks]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for scenario, by_method in result["results"].items():
        maes = {k: r["mae"]["mean"] for k, r in by_method.items() if "mae" in r}
        best = min(maes, key=maes.get) if maes else None
        for key, r in by_method.items():
            name = result["methods"][key]
            mae = fmt(r.get("mae"))
            if key == best:
                name, mae = f"**{name}**", f"**{mae}**"
            cells = [SCENARIOS[scenario], name, str(r["users"]), mae, fmt(r.get("rmse")),
                     *[fmt(r.get(f"ndcg@{k}")) for k in ks]]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves_markdown(result: dict[str, Any]) -> str:
    """The cold-start curves: per scenario, a row per method with MAE (± CI) at each support size."""
    curves = result.get("curves") or {}
    if not curves:
        return ""
    sizes = [str(n) for n in result["support_sizes"]]
    out = []
    for scenario, curve in curves.items():
        ks = result["ndcg_k"]
        out += [f"**{SCENARIOS[scenario]}**: {curve['users']} users with at least {sizes[-1]} support ratings; "
                f"support = their earliest n ratings, query = the same last ratings at every n. "
                f"MAE (RMSE, " + ", ".join(f"nDCG@{k}" for k in ks) + ") mean ± 95% CI over users; "
                "the last column is the paper's protocol on all users of the scenario.", "",
                "| method | " + " | ".join(f"n = {n}" for n in sizes) + " | paper |",
                "|---|" + "---:|" * (len(sizes) + 1)]
        paper = result["results"].get(scenario, {})
        for key, name in result["methods"].items():
            cells = []
            for n in sizes:
                r = curve["sizes"][n].get(key, {})
                cells.append(f"{fmt(r.get('mae'))} ({fmt(r.get('rmse'))}, " +
                             ", ".join(fmt(r.get(f'ndcg@{k}')) for k in ks) + ")" if r.get("mae") else "-")
            cells.append(fmt(paper.get(key, {}).get("mae")))
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def winners_markdown(result: dict[str, Any]) -> str:
    """Which side wins each scenario and support size: the best meta-learner vs the best baseline, paired."""
    comparison = result.get("best_meta_vs_best_baseline") or {}
    rows = []
    for scenario, by_size in comparison.items():
        for size, c in by_size.items():
            if not c:
                continue
            d = c["difference"]
            winner = "tie (CI includes 0)" if c["winner"] == "tie" else result["methods"][c["winner"]]
            rows.append(f"| {SCENARIOS[scenario]} | {'paper protocol' if size == 'paper' else size} | "
                        f"{result['methods'][c['meta']]} {c['meta_mae']:.3f} | {result['methods'][c['baseline']]} "
                        f"{c['baseline_mae']:.3f} | {d['mean']:+.3f} ± {d['ci95']:.3f} ({d['users']} users) | {winner} |")
    if not rows:
        return ""
    return "\n".join(["| scenario | support ratings | best meta-learner, MAE | best baseline, MAE | "
                      "meta minus baseline, paired 95% CI | winner |", "|---|---|---|---|---|---|", *rows])


def curve_plot(result: dict[str, Any]) -> Any | None:
    """MAE (± 95% CI) against support size, one panel per curve scenario, one line per method."""
    curves = result.get("curves") or {}
    if not curves:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.0 * len(curves), 3.8), squeeze=False)
    sizes = result["support_sizes"]
    for ax, (scenario, curve) in zip(axes[0], curves.items()):
        for key, name in result["methods"].items():
            pts = [(n, curve["sizes"][str(n)][key]["mae"]) for n in sizes if curve["sizes"][str(n)].get(key, {}).get("mae")]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["ci95"] for p in pts],
                            marker="o", ms=3, capsize=2, label=name, linestyle="--" if key in ("global_mean",) else "-")
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([str(n) for n in sizes])
        ax.set_xlabel("support ratings (the user's earliest)")
        ax.set_ylabel("query MAE (lower is better)")
        ax.set_title(f"{SCENARIOS[scenario]} ({curve['users']} users)", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def paired_markdown(result: dict[str, Any]) -> str:
    """MAE of each meta-learner minus each baseline's on the same users (negative: the meta-learner better)."""
    paired = result.get("paired_mae_vs_baselines") or {}
    rows = []
    for scenario, by_melu in paired.items():
        for melu, by_base in by_melu.items():
            cells = []
            for base, d in by_base.items():
                sign = "better" if d["mean"] + d["ci95"] < 0 else "worse" if d["mean"] - d["ci95"] > 0 else "tie"
                cells.append(f"{result['methods'][base]}: {d['mean']:+.3f} ± {d['ci95']:.3f} ({sign})")
            rows.append(f"| {SCENARIOS[scenario]} | {result['methods'][melu]} | " + "; ".join(cells) + " |")
    if not rows:
        return ""
    return "\n".join(["| scenario | method | MAE difference vs each baseline, paired over users (95% CI) |",
                      "|---|---|---|", *rows])


def mae_plot(result: dict[str, Any]) -> Any:
    """Grouped bars: MAE ± 95% CI per scenario (groups) and method (bars)."""
    plt = pyplot()
    scenarios = list(result["results"])
    methods = list(result["methods"])
    fig, ax = plt.subplots(figsize=(max(6.0, 2.4 * len(scenarios)), 4.0))
    width = 0.8 / max(1, len(methods))
    for j, key in enumerate(methods):
        xs, ys, es = [], [], []
        for i, s in enumerate(scenarios):
            r = result["results"][s].get(key, {})
            if "mae" in r:
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(r["mae"]["mean"])
                es.append(r["mae"]["ci95"])
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=result["methods"][key])
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels([SCENARIOS[s].replace(" for ", "\nfor ") for s in scenarios], fontsize=8)
    ax.set_ylabel("MAE (lower is better), 95% CI over users")
    lows = [r["mae"]["mean"] for by in result["results"].values() for r in by.values() if "mae" in r]
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 0.15), max(lows) + 0.1)
    ax.legend(fontsize=7, ncol=min(4, len(methods)))
    fig.tight_layout()
    return fig


def training_curves(summary: dict[str, Any]) -> Any | None:
    """Validation MAE per epoch of every method that trained for epochs (``None``: none did)."""
    curves = {k: m["history"] for k, m in summary["methods"].items() if m.get("history")}
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for key, hist in curves.items():
        name = f"MeLU-{key.split('-', 1)[1]}" if key.startswith("melu-") else key
        ax.plot([h["epoch"] for h in hist], [h["val_mae"] for h in hist], label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MAE (held-out users)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_report(
    run_dir: str | Path, training: dict[str, Any] | None = None, evaluation: dict[str, Any] | None = None
) -> Report:
    """The report of a run directory: ``report.md`` and its figures.

    ``training`` (the summary of a fit that just finished, with its training curves) and
    ``evaluation`` (fresh results, with the MAE plot) join the report as ``training.json`` and
    ``evaluation.json``; whichever is not given is read from the run directory.
    """
    paths = RunPaths(Path(run_dir))
    config = run_config_data(run_dir, "", "`metakit recsys train`")
    report = Report()
    if training is not None:
        report.data[paths.summary.name] = training
        curves = training_curves(training)
        if curves is not None:
            report.plots["training_curves.png"] = Plot(curves)
    else:
        training = read_json(paths.summary)
    if evaluation is not None:
        report.data[paths.evaluation.name] = evaluation
        report.plots["mae_by_scenario.png"] = Plot(mae_plot(evaluation))
        curve_fig = curve_plot(evaluation)
        if curve_fig is not None:
            report.plots["mae_by_support_size.png"] = Plot(curve_fig)
    else:
        evaluation = read_json(paths.evaluation)
    t = config["tasks"]
    lines = [
        f"# metakit recsys run `{config['name']}`",
        "",
        f"- data: {config['data']['source']}" + (f" {config['data']['synthetic'] or ''}" if config["data"]["source"] == "synthetic" else ""),
        f"- tasks: users with {t['min_ratings']}-{t['max_ratings']} ratings; query = last {t['query']} by time, "
        f"support = the earlier ones (at most {t['max_support']}); new users/items = latest "
        f"{t['new_user_fraction']:.0%}/{t['new_item_fraction']:.0%} by first appearance ({t['new_items_by']} for items)",
        f"- methods: {', '.join(config['methods'])}; MeLU local steps {config['melu']['local_steps']}, "
        f"local lr {config['melu'].get('local_lr_grid') or config['melu']['local_lr']}"
        f"{' (Meta-SGD: learned element-wise from it)' if config['melu'].get('learn_local_lr') else ''}, "
        f"{'first' if config['melu']['first_order'] else 'second'}-order",
        *([f"- meta-MF: factors {config['metamf']['factors']}, {config['metamf']['steps']} inner steps with learned "
           f"step sizes; TaNP: latent {config['tanp']['latent']}, {config['tanp']['clusters']} clusters, "
           f"kl_weight {config['tanp']['kl_weight']}"] if "metamf" in config and "tanp" in config else []),
        *([f"- cold-start curves: {', '.join(SCENARIOS[c] for c in config['eval']['curve_scenarios'])} at "
           f"{config['eval']['support_sizes']} support ratings"]
          if config["eval"].get("curve_scenarios") and config["eval"].get("support_sizes") else []),
        f"- seed: {config['seed']}; resolved config: `config.yaml`",
        "",
    ]
    if training:
        s = training["split"]
        lines += [
            "## Data and training",
            "",
            f"- {training['data']}",
            *(["- no user demographics in this release: MeLU, TaNP and the NN baselines read a user from its "
               "ratings and item content only (every user has the same feature codes)"]
              if training.get("user_demographics") is False else []),
            f"- split: {s['new_users']} new users, {s['new_items']} new items; training: {s['train_users']} users, "
            f"{s['train_ratings']:,} ratings; {s['val_tasks']} validation users (held out, for model selection)",
            "- tasks per scenario: " + ", ".join(f"{SCENARIOS[k]} {v}" for k, v in s["tasks"].items()),
            f"- fitting time: {training['train_seconds']:.1f} s with {training['threads']} thread(s)",
            "",
            "| method | fit (s) | chosen on validation users |",
            "|---|---:|---|",
        ]
        for key, m in training["methods"].items():
            chosen = {k: v for k, v in m.items()
                      if k in ("factors", "reg", "foldin_reg", "steps", "lr", "local_lr", "best_epoch", "best_val_mae")}
            text = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in chosen.items())
            lines.append(f"| {key} | {m['fit_seconds']:.1f} | {text or '-'} |")
        lines += ["", "![validation MAE per epoch](training_curves.png)", ""]
    if evaluation:
        lines += [
            "## Evaluation (mean ± 95% CI over users; best MAE in bold)",
            "",
            results_markdown(evaluation),
            "",
        ]
        winners = winners_markdown(evaluation)
        if winners:
            lines += ["### Who wins: the best meta-learner against the best baseline, paired over the same users", "",
                      winners, ""]
        curves = curves_markdown(evaluation)
        if curves:
            lines += ["### Cold-start curves", "", curves, "![MAE against support size](mae_by_support_size.png)", ""]
        paired = paired_markdown(evaluation)
        if paired:
            lines += ["### Each meta-learner against each baseline, paired over the same users (paper protocol)", "",
                      paired, ""]
        lines += ["![MAE per scenario](mae_by_scenario.png)", ""]
    report.text[paths.report.name] = "\n".join(lines)
    return report


def results_table(result: dict[str, Any]) -> Any:
    """The evaluation for the console: one rich table per scenario (same content as :func:`results_markdown`)."""
    from rich import box
    from rich.console import Group
    from rich.table import Table

    ks = result["ndcg_k"]
    tables = []
    for scenario, by_method in result["results"].items():
        users = next(iter(by_method.values()))["users"] if by_method else 0
        table = Table(title=f"{SCENARIOS[scenario]} ({users} users): mean ± 95% CI over users", title_justify="left",
                      box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("method", "MAE", "RMSE", *[f"nDCG@{k}" for k in ks]):
            table.add_column(col, justify="left" if col == "method" else "right", no_wrap=True)
        for key, r in by_method.items():
            cells = [fmt(r.get(m)).replace(" ± ", "±") for m in ("mae", "rmse", *[f"ndcg@{k}" for k in ks])]
            table.add_row(result["methods"][key], *cells)
        tables.append(table)
    return Group(*tables)
