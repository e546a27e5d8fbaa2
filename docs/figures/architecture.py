"""Draw docs/figures/architecture.png: metakit's floors, the modules on each, and the plugin seam.

    python docs/figures/architecture.py

The floors are the ones tests/test_architecture.py enforces (FLOORS there); this script reads them
from that test so the picture cannot drift from what the suite checks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("arch", ROOT / "tests" / "test_architecture.py")
arch = importlib.util.module_from_spec(spec)
spec.loader.exec_module(arch)

NOTES = {
    "foundation": "errors, utils, config (the one reader), registry (plugins), inner (the inner loop),\n"
                  "runs (run dirs, checkpoints, metrics, the one report writer), commands (CLI pieces)",
    "data": "datasets (ClassDataset, loaders, ImageBenchmark, folder), episodes (Episode, MetaBatch,\n"
            "samplers, FixedEpisodes), feature_cache",
    "models": "backbones, pretrained encoders, learners (one file each: MAML family, ProtoNet, ...)",
    "workflows": "training (Trainer), evaluation, experiment, reporting, compare, continual,\n"
                 "pretraining, distributed, reproduce, predict, serve",
    "domains": "text, rl, recsys, nas, hpo, segmentation: each a package with a plugin.py,\n"
               "found through the metakit.plugins entry points (metakit.plugin = classification)",
    "entry": "metakit (metakit.load), cli (commands built from the registry), __main__",
}
COLOURS = ["#dfe9f5", "#e4f2e1", "#fdf1dc", "#f6e2e2", "#ece3f4", "#e9e9e9"]

fig, ax = plt.subplots(figsize=(10, 6.4))
ax.set_xlim(0, 10)
ax.set_ylim(0, len(arch.FLOORS) * 1.05 + 0.2)
ax.axis("off")
for i, (name, _prefixes) in enumerate(arch.FLOORS):
    y = 0.15 + i * 1.05
    ax.add_patch(FancyBboxPatch((0.2, y), 9.6, 0.85, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=COLOURS[i], edgecolor="#555555", linewidth=1))
    ax.text(0.4, y + 0.62, f"{i}  {name}", fontsize=12, fontweight="bold", va="center")
    ax.text(0.4, y + 0.28, NOTES[name], fontsize=8.5, va="center", family="monospace")
ax.annotate("", xy=(9.55, 0.5), xytext=(9.55, len(arch.FLOORS) * 1.05 - 0.5),
            arrowprops={"arrowstyle": "->", "color": "#333333", "linewidth": 1.6})
ax.text(9.35, len(arch.FLOORS) * 0.52, "imports point down only", rotation=90, va="center", ha="center", fontsize=9)
ax.set_title("metakit: floors (tests/test_architecture.py checks every import)", fontsize=12)
fig.tight_layout()
out = ROOT / "docs" / "figures" / "architecture.png"
tmp = out.with_suffix(".tmp.png")
fig.savefig(tmp, dpi=110)
tmp.replace(out)
print(out)
