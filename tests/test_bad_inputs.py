"""Bad input, every command: one ``error:`` line, the right exit status, no traceback, nothing left behind.

One row per case: the command line, the expected exit status and a fragment of the expected
message. Every row runs in-process through :func:`metakit.cli.main` in a fresh folder, with
downloads off and a private cache, and the folder (and the shared trained run) must look exactly
the same afterwards: a failed command leaves no partial run directory and no half-written file.
Rows that need a working command fail before any training starts, so the whole table is quick.
"""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from metakit import cli
from metakit.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

TINY = {
    "name": "tiny",
    "dataset": {"name": "synthetic", "fractions": [0.5, 0.25, 0.25]},
    "backbone": {"name": "conv4", "hidden": 8},
    "episodes": {"ways": 5, "shots": 1, "queries": 3, "meta_batch": 2},
    "eval": {"ways": [5], "shots": [1], "queries": 3, "episodes": 6, "val_episodes": 4},
    "train": {"steps": 2, "val_every": 1, "threads": 1},
}
TUNE = {"space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}, "trials": 2}

Setup = Callable[[Path, dict[str, Path], pytest.MonkeyPatch], None]


@dataclass
class Case:
    """One bad input: ``argv`` (with ``{placeholders}``), exit status, a fragment of the message."""

    id: str
    argv: list[str]
    code: int
    message: str
    setup: Setup | None = None
    started: bool = False  # the run legitimately began (divergence): only half-written files are checked


# -- inputs the rows build in their folder ------------------------------------------------------------


def write(name: str, content: bytes | str | dict | list) -> Setup:
    """Write ``content`` (bytes, text, or data dumped as YAML) to ``{tmp}/name``."""

    def setup(tmp: Path, ws: dict[str, Path], mp: pytest.MonkeyPatch) -> None:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content if isinstance(content, str) else yaml.safe_dump(content), encoding="utf-8")

    return setup


def tiny_with(**sections: dict) -> dict:
    """The tiny config with some sections replaced or added."""
    return {**TINY, **sections}


def folder(name: str, files: dict[str, bytes] | None = None) -> Setup:
    """An (empty, or holding ``files``) folder ``{tmp}/name``."""

    def setup(tmp: Path, ws: dict[str, Path], mp: pytest.MonkeyPatch) -> None:
        (tmp / name).mkdir(parents=True)
        for rel, data in (files or {}).items():
            (tmp / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name / rel).write_bytes(data)

    return setup


def zip_of(name: str, members: dict[str, bytes]) -> Setup:
    """A real zip ``{tmp}/name`` holding ``members``."""

    def setup(tmp: Path, ws: dict[str, Path], mp: pytest.MonkeyPatch) -> None:
        with zipfile.ZipFile(tmp / name, "w") as zf:
            for member, data in members.items():
                zf.writestr(member, data)

    return setup


def damaged_run(damage: str) -> Setup:
    """A copy of the trained run at ``{tmp}/bad`` with one file damaged."""

    def setup(tmp: Path, ws: dict[str, Path], mp: pytest.MonkeyPatch) -> None:
        bad = tmp / "bad"
        shutil.copytree(ws["run"], bad)
        best, last, config = bad / "checkpoints" / "best.pt", bad / "checkpoints" / "last.pt", bad / "config.yaml"
        if damage == "truncated-best":
            best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
        elif damage == "random-best":
            best.write_bytes(os.urandom(4096))
        elif damage == "wrong-learner-best":
            shutil.copy(ws["wrong"], best)
        elif damage == "missing-best":
            best.unlink()
        elif damage == "truncated-last":
            last.write_bytes(last.read_bytes()[:100])
        elif damage == "malformed-config":
            config.write_text("train: {steps: [\n", encoding="utf-8")
        elif damage == "binary-config":
            config.write_bytes(b"\xff\xfe\x00binary" + os.urandom(64))
        else:
            raise AssertionError(damage)

    return setup


def fake_official_zip(tmp: Path, ws: dict[str, Path], mp: pytest.MonkeyPatch) -> None:
    """A file with the official Omniglot name but the wrong content, where the cache keeps it."""
    cache = tmp.parent / "cache"
    (cache / "omniglot").mkdir(parents=True)
    with zipfile.ZipFile(cache / "omniglot" / "images_background.zip", "w") as zf:
        zf.writestr("images_background/Latin/character01/0001_01.png", b"not a png")


def read_only_dirs(tmp: Path, ws: dict[str, Path], mp: pytest.MonkeyPatch) -> None:
    """Every folder under ``{tmp}`` reads as read-only (tests run as root, where chmod cannot show it)."""
    real = os.access

    def access(path: os.PathLike | str, mode: int, *args: object, **kwargs: object) -> bool:
        if mode & os.W_OK and Path(path).resolve().is_relative_to(tmp.resolve()):
            return False
        return real(path, mode, *args, **kwargs)

    mp.setattr(os, "access", access)


def disk_full(tmp: Path, ws: dict[str, Path], mp: pytest.MonkeyPatch) -> None:
    """Creating anything under ``{tmp}`` fails the way a full disk does."""
    real = pathlib.Path.mkdir

    def mkdir(self: Path, *args: object, **kwargs: object) -> None:
        if self.absolute().is_relative_to(tmp.resolve()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        real(self, *args, **kwargs)

    mp.setattr(pathlib.Path, "mkdir", mkdir)


def both(*setups: Setup) -> Setup:
    def setup(tmp: Path, ws: dict[str, Path], mp: pytest.MonkeyPatch) -> None:
        for s in setups:
            s(tmp, ws, mp)

    return setup


RANDOM = bytes(range(256)) * 8  # not UTF-8, not YAML, not a zip, not a checkpoint
BANKING77 = str(CONFIGS / "text-banking77-protonet.yaml")
HWU64 = str(CONFIGS / "text-hwu64-protonet.yaml")
RL = str(CONFIGS / "rl-point2d-mamlrl.yaml")
RECSYS = str(CONFIGS / "recsys-melu-synthetic.yaml")
NAS = str(CONFIGS / "nas-glyphs-metanas.yaml")
REPRO = "omniglot-protonet-5w1s"

CASES = [
    # -- quickstart: everything it checks before rendering Glyphs ---------------------------------------
    Case("quickstart-unknown-key", ["quickstart", "train.stepz=3", "--out", "{tmp}/q"], 2,
         "unknown config key train.stepz. Did you mean steps"),
    Case("quickstart-lr-not-number", ["quickstart", "train.lr=fast", "--out", "{tmp}/q"], 2,
         "config key train.lr must be a number, got 'fast'"),
    Case("quickstart-ways-not-int", ["quickstart", "episodes.ways=five", "--out", "{tmp}/q"], 2,
         "episodes.ways must be an integer"),
    Case("quickstart-threads-0", ["quickstart", "train.threads=0", "--out", "{tmp}/q"], 2, "train.threads must be >= 1"),
    Case("quickstart-device-unknown", ["quickstart", "train.device=gpu", "--out", "{tmp}/q"], 2,
         "unknown train.device 'gpu'; use cpu, cuda, cuda:N, mps or auto"),
    Case("quickstart-out-is-file", ["quickstart", "--out", "{file}"], 2, "is an existing file; give a directory path"),
    Case("quickstart-out-under-file", ["quickstart", "--out", "{file}/run"], 2, "is a file, not a directory"),
    Case("quickstart-json-is-dir", ["quickstart", "--out", "{tmp}/q", "--json", "{tmp}"], 2, "is a directory; give a file path"),
    Case("quickstart-override-syntax", ["quickstart", "train.steps"], 2, "must look like key=value"),
    # -- train: config files ------------------------------------------------------------------------------
    Case("train-missing-config", ["train", "{tmp}/nope.yaml"], 2, "nope.yaml not found; pass a YAML file"),
    Case("train-config-is-dir", ["train", "{tmp}"], 2, "is a directory, not a file"),
    Case("train-malformed-yaml", ["train", "{tmp}/bad.yaml"], 2, "malformed YAML in", write("bad.yaml", "train: {steps: [\n")),
    Case("train-binary-config", ["train", "{tmp}/bin.yaml"], 2, "is not UTF-8 text (byte 0x80", write("bin.yaml", RANDOM[128:])),
    Case("train-nul-bytes-config", ["train", "{tmp}/nul.yaml"], 2, "malformed YAML in", write("nul.yaml", "name: a\x00b\n")),
    Case("train-empty-config", ["train", "{tmp}/empty.yaml"], 2, "is empty; start from an example", write("empty.yaml", "")),
    Case("train-comments-only-config", ["train", "{tmp}/c.yaml"], 2, "is empty", write("c.yaml", "# nothing yet\n")),
    Case("train-config-is-list", ["train", "{tmp}/list.yaml"], 2, "must hold a mapping of sections, got list",
         write("list.yaml", "- train\n- eval\n")),
    Case("train-section-not-mapping", ["train", "{cfg}", "train=5"], 2, "config section train must be a mapping"),
    # -- train: keys and values -----------------------------------------------------------------------------
    Case("train-unknown-key", ["train", "{cfg}", "train.stepz=3"], 2, "unknown config key train.stepz. Did you mean steps"),
    Case("train-unknown-section", ["train", "{cfg}", "trian.steps=3"], 2, "unknown config key trian"),
    Case("train-unknown-key-in-file", ["train", "{tmp}/k.yaml"], 2, "unknown config key episodes.wayz",
         write("k.yaml", tiny_with(episodes={"wayz": 5}))),
    Case("train-steps-not-int", ["train", "{cfg}", "train.steps=many"], 2, "train.steps must be an integer, got 'many'"),
    Case("train-steps-fraction", ["train", "{cfg}", "train.steps=2.5"], 2, "train.steps must be an integer, got 2.5"),
    Case("train-lr-nan", ["train", "{cfg}", "train.lr=nan"], 2, "train.lr must be a finite number"),
    Case("train-lr-inf", ["train", "{cfg}", "train.lr=.inf"], 2, "train.lr must be a finite number"),
    Case("train-lr-negative-exponent-form", ["train", "{cfg}", "train.lr=-1e-3"], 2, "train.lr must be > 0, got -0.001"),
    Case("train-bool-not-bool", ["train", "{cfg}", "train.tensorboard=maybe"], 2, "train.tensorboard must be true or false"),
    Case("train-list-not-numbers", ["train", "{cfg}", "eval.shots=[1,x]"], 2, "eval.shots must be a list of numbers"),
    Case("train-empty-value", ["train", "{cfg}", "train.steps="], 2, "train.steps must not be empty"),
    Case("train-empty-key", ["train", "{cfg}", "=5"], 2, "needs a dotted key"),
    Case("train-threads-0", ["train", "{cfg}", "train.threads=0"], 2,
         "train.threads must be >= 1, or null (leave it out) for torch's default"),
    Case("train-threads-negative", ["train", "{cfg}", "train.threads=-4"], 2, "train.threads must be >= 1"),
    Case("train-device-unknown", ["train", "{cfg}", "train.device=gpu"], 2, "unknown train.device 'gpu'"),
    Case("train-device-missing-gpu", ["train", "{cfg}", "train.device=cuda:99", "--out", "{tmp}/r"], 2,
         "train.device=cuda:99 but"),
    Case("train-optimizer-unknown", ["train", "{cfg}", "train.optimizer=adagrad", "--out", "{tmp}/r"], 2,
         "unknown train.optimizer 'adagrad'"),
    Case("train-diverges", ["train", "{cfg}", "train.lr=1e30", "--out", "{tmp}/r", "--no-progress"], 2,
         "predictions are NaN or infinite: its weights diverged; lower train.lr", started=True),
    # -- train: names and impossible episodes ---------------------------------------------------------------
    Case("train-unknown-dataset", ["train", "{cfg}", "dataset.name=imagenet"], 2, "unknown dataset 'imagenet'"),
    Case("train-unknown-learner", ["train", "{cfg}", "learner.name=maml_plus"], 2, "unknown learner 'maml_plus'"),
    Case("train-unknown-backbone", ["train", "{cfg}", "backbone.name=conv5"], 2, "unknown backbone 'conv5'"),
    Case("train-unknown-learner-option", ["train", "{cfg}", "learner.first_order=true"], 2,
         "unknown option 'first_order' for learner 'protonet'"),
    Case("train-ways-above-classes", ["train", "{cfg}", "episodes.ways=50"], 2, "impossible episode spec: 50-way"),
    Case("train-shots-queries-above-items", ["train", "{cfg}", "episodes.shots=10"], 2,
         "impossible episode spec: shots + queries"),
    Case("train-eval-ways-above-classes", ["train", "{cfg}", "eval.ways=[40]"], 2, "impossible episode spec: 40-way"),
    # -- train: where the run goes ----------------------------------------------------------------------------
    Case("train-out-is-file", ["train", "{cfg}", "--out", "{file}"], 2, "is an existing file; give a directory path"),
    Case("train-out-under-file", ["train", "{cfg}", "--out", "{file}/run"], 2,
         "cannot be created: {file} is a file, not a directory"),
    Case("train-out-read-only", ["train", "{cfg}", "--out", "{tmp}/ro/run"], 2, "is read-only for this user",
         both(folder("ro"), read_only_dirs)),
    Case("train-out-disk-full", ["train", "{cfg}", "--out", "{tmp}/r"], 2,
         "cannot write or read {tmp}/r: No space left on device; free some disk space", disk_full),
    Case("train-out-existing-run", ["train", "{cfg}", "--out", "{run}"], 2, "already holds a run; pass --resume"),
    Case("train-json-is-dir", ["train", "{cfg}", "--out", "{tmp}/r", "--json", "{tmp}"], 2, "--json {tmp} is a directory"),
    # -- train: dataset roots, archives, checksums --------------------------------------------------------------
    Case("omniglot-root-missing", ["train", "{cfg}", "dataset.name=omniglot", "dataset.root={tmp}/nowhere.zip"], 2,
         "nowhere.zip does not exist"),
    Case("omniglot-root-empty-dir", ["train", "{cfg}", "dataset.name=omniglot", "dataset.root={tmp}/empty",
                                     "dataset.download=false"], 2,
         "is not available locally (looked in root {tmp}/empty and the cache) and download is off", folder("empty")),
    Case("omniglot-offline", ["train", "{cfg}", "dataset.name=omniglot"], 2,
         "images_background.zip) is not at {cache}/omniglot/images_background.zip and METAKIT_OFFLINE is set"),
    Case("omniglot-zip-random-bytes", ["train", "{cfg}", "dataset.name=omniglot", "dataset.root={tmp}/o.zip"], 2,
         "o.zip is not a readable zip file", write("o.zip", RANDOM)),
    Case("omniglot-zip-without-images", ["train", "{cfg}", "dataset.name=omniglot", "dataset.root={tmp}/o.zip"], 2,
         "holds no images_<set>/<Alphabet>/characterNN/*.png files", zip_of("o.zip", {"readme.txt": b"hello"})),
    Case("omniglot-zip-bad-png", ["train", "{cfg}", "dataset.name=omniglot", "dataset.root={tmp}/o.zip"], 2,
         "cannot decode", zip_of("o.zip", {"images_background/Latin/character01/0101_01.png": b"not a png"})),
    Case("omniglot-checksum-mismatch", ["train", "{cfg}", "dataset.name=omniglot"], 2,
         "checksum mismatch for Omniglot background set", fake_official_zip),
    Case("omniglot-image-size", ["train", "{cfg}", "dataset.name=omniglot", "dataset.image_size=500"], 2,
         "image_size must be an integer in 1..105"),
    Case("banking77-root-missing", ["train", BANKING77, "dataset.root={tmp}/nope"], 2,
         "Banking77 dataset.root {tmp}/nope is not a folder"),
    Case("banking77-root-empty", ["train", BANKING77, "dataset.root={tmp}/empty"], 2,
         "does not hold train.csv and test.csv", folder("empty")),
    Case("banking77-binary-csv", ["train", BANKING77, "dataset.root={tmp}/b77"], 2, "is not UTF-8 text",
         folder("b77", {"train.csv": RANDOM, "test.csv": RANDOM})),
    Case("hwu64-root-empty", ["train", HWU64, "dataset.root={tmp}/empty"], 2,
         "does not hold KFold_1/trainset/*.csv", folder("empty")),
    # -- evaluate -------------------------------------------------------------------------------------------
    Case("evaluate-not-a-run", ["evaluate", "{tmp}/nope"], 2, "is not a metakit run directory"),
    Case("evaluate-truncated-checkpoint", ["evaluate", "{tmp}/bad"], 2, "is corrupt or not a metakit checkpoint",
         damaged_run("truncated-best")),
    Case("evaluate-random-checkpoint", ["evaluate", "{tmp}/bad"], 2, "is corrupt or not a metakit checkpoint",
         damaged_run("random-best")),
    Case("evaluate-wrong-learner-checkpoint", ["evaluate", "{tmp}/bad"], 2, "do not fit the model the config builds",
         damaged_run("wrong-learner-best")),
    Case("evaluate-missing-checkpoint", ["evaluate", "{tmp}/bad"], 2, "best.pt not found; train the run first",
         damaged_run("missing-best")),
    Case("evaluate-truncated-last", ["evaluate", "{tmp}/bad", "--checkpoint", "last"], 2, "is corrupt",
         damaged_run("truncated-last")),
    Case("evaluate-malformed-run-config", ["evaluate", "{tmp}/bad"], 2, "is not valid YAML; restore it",
         damaged_run("malformed-config")),
    Case("evaluate-binary-run-config", ["evaluate", "{tmp}/bad"], 2, "is not valid YAML; restore it",
         damaged_run("binary-config")),
    Case("evaluate-unknown-split", ["evaluate", "{run}", "--split", "tset"], 2, "unknown split 'tset'"),
    Case("evaluate-impossible-ways", ["evaluate", "{run}", "--ways", "50"], 2, "impossible episode spec: 50-way"),
    Case("evaluate-override-changes-model", ["evaluate", "{run}", "backbone.hidden=16"], 2,
         "do not fit the model the config builds"),
    Case("evaluate-json-is-dir", ["evaluate", "{run}", "--json", "{tmp}"], 2, "is a directory; give a file path"),
    Case("evaluate-episodes-not-int", ["evaluate", "{run}", "--episodes", "many"], 2,
         "argument --episodes: must be an integer >= 1, got 'many'; see metakit evaluate --help"),
    Case("evaluate-episodes-zero", ["evaluate", "{run}", "--episodes", "0"], 2, "--episodes: must be an integer >= 1, got 0"),
    Case("evaluate-queries-zero", ["evaluate", "{run}", "--queries", "0"], 2, "--queries: must be an integer >= 1, got 0"),
    Case("evaluate-shots-negative", ["evaluate", "{run}", "--shots", "1", "-1"], 2, "--shots: must be an integer >= 1"),
    # -- compare, cross-domain, continual, reproduce, datasets ---------------------------------------------------
    Case("compare-missing-item", ["compare", "{cfg}", "{tmp}/nope", "--out", "{tmp}/c"], 2,
         "nope is neither a run directory nor a config file"),
    Case("compare-bad-second-config", ["compare", "{cfg}", "{tmp}/bad.yaml", "--out", "{tmp}/c"], 2, "malformed YAML",
         write("bad.yaml", "a: [\n")),
    Case("compare-same-run-twice", ["compare", "{run}", "{run}", "--out", "{tmp}/c"], 2, "the same run appears twice"),
    Case("compare-bad-set", ["compare", "{cfg}", "--set", "train.stepz=1", "--out", "{tmp}/c"], 2,
         "unknown config key train.stepz"),
    Case("compare-out-is-file", ["compare", "{run}", "--out", "{file}"], 2, "is an existing file"),
    Case("cross-domain-unknown-dataset", ["cross-domain", "{run}", "--datasets", "imagenet", "--out", "{tmp}/x"], 2,
         "unknown dataset 'imagenet'"),
    Case("cross-domain-not-a-run", ["cross-domain", "{tmp}/nope", "--datasets", "synthetic", "--out", "{tmp}/x"], 2,
         "is not a metakit run directory"),
    Case("cross-domain-shape-mismatch", ["cross-domain", "{run}", "--datasets", "synthetic:size=20", "--out", "{tmp}/x"],
         2, "has images [1, 20, 20] but the learner was trained on [1, 12, 12]"),
    Case("cross-domain-bad-root", ["cross-domain", "{run}", "--datasets", "omniglot:root={tmp}/o.zip", "--out", "{tmp}/x"],
         2, "o.zip is not a readable zip file", write("o.zip", RANDOM)),
    Case("cross-domain-missing-datasets", ["cross-domain", "{run}"], 2, "the following arguments are required: --datasets"),
    Case("continual-not-a-run", ["continual", "{tmp}/nope"], 2, "is not a metakit run directory"),
    Case("continual-out-under-file", ["continual", "{run}", "--out", "{file}/c"], 2, "is a file, not a directory"),
    Case("continual-learner-without-adaptation", ["continual", "{run}", "--out", "{tmp}/c"], 2,
         "continual evaluation does not apply to ProtoNet"),
    Case("reproduce-unknown-row", ["reproduce", "omniglot-protonet-5w2s"], 2, "unknown reproduction 'omniglot-protonet-5w2s'"),
    Case("reproduce-bad-override", ["reproduce", REPRO, "train.stepz=1", "--out", "{tmp}/p"], 2, "unknown config key train.stepz"),
    Case("reproduce-out-is-file", ["reproduce", REPRO, "--out", "{file}"], 2, "is an existing file"),
    Case("datasets-json-is-dir", ["datasets", "--json", "{tmp}"], 2, "is a directory; give a file path"),
    Case("datasets-json-under-file", ["datasets", "--json", "{file}/d.json"], 2, "is a file, not a directory"),
    # -- tune ---------------------------------------------------------------------------------------------------
    Case("tune-no-tune-section", ["tune", "{cfg}", "--out", "{tmp}/t"], 2, "has no tune: section"),
    Case("tune-empty-space", ["tune", "{tmp}/t.yaml", "--out", "{tmp}/t"], 2, "tune.space in {tmp}/t.yaml is empty",
         write("t.yaml", tiny_with(tune={"space": {}}))),
    Case("tune-low-above-high", ["tune", "{tmp}/t.yaml", "--out", "{tmp}/t"], 2, "low (0.01) is above high (0.0001)",
         write("t.yaml", "\n".join([yaml.safe_dump(TINY), "tune: {space: {train.lr: {low: 1e-2, high: 1e-4}}}"]))),
    Case("tune-unknown-sampler", ["tune", "{tmp}/t.yaml", "--sampler", "bayes", "--out", "{tmp}/t"], 2,
         "unknown sampler 'bayes'", write("t.yaml", tiny_with(tune=TUNE))),
    Case("tune-space-key-not-config", ["tune", "{tmp}/t.yaml", "--out", "{tmp}/t"], 2, "does not fit the config",
         write("t.yaml", tiny_with(tune={"space": {"train.stepz": {"low": 1, "high": 3}}}))),
    Case("tune-trials-not-int", ["tune", "{tmp}/t.yaml", "tune.trials=lots", "--out", "{tmp}/t"], 2,
         "tune.trials must be a positive integer", write("t.yaml", tiny_with(tune=TUNE))),
    Case("tune-storage-folder-missing", ["tune", "{tmp}/t.yaml", "--storage", "sqlite:////nonexistent/dir/x.db",
                                         "--out", "{tmp}/t"], 2, "folder /nonexistent/dir does not exist",
         write("t.yaml", tiny_with(tune=TUNE))),
    # -- nas --------------------------------------------------------------------------------------------------
    Case("nas-no-nas-section", ["nas", "search", "{cfg}", "--out", "{tmp}/n"], 2, "has no nas: section"),
    Case("nas-unknown-method", ["nas", "search", NAS, "nas.method=evolution", "--out", "{tmp}/n"], 2,
         "unknown nas.method 'evolution'"),
    Case("nas-steps-not-int", ["nas", "search", NAS, "nas.candidate_steps=lots", "--out", "{tmp}/n"], 2,
         "nas.candidate_steps must be an integer"),
    Case("nas-unknown-key", ["nas", "search", NAS, "nas.edges=2", "--out", "{tmp}/n"], 2, "unknown config key nas.edges"),
    Case("nas-out-is-file", ["nas", "search", NAS, "--out", "{file}"], 2, "is an existing file"),
    Case("nas-evaluate-not-a-search", ["nas", "evaluate", "{run}"], 2, "is not a nas search run directory"),
    # -- rl -----------------------------------------------------------------------------------------------------
    Case("rl-missing-config", ["rl", "train", "{tmp}/nope.yaml"], 2, "nope.yaml not found"),
    Case("rl-unknown-algorithm", ["rl", "train", RL, "algorithm=ppo", "--out", "{tmp}/rl"], 2, "unknown algorithm 'ppo'"),
    Case("rl-threads-0", ["rl", "train", RL, "train.threads=0", "--out", "{tmp}/rl"], 2, "train.threads must be >= 1"),
    Case("rl-iterations-not-int", ["rl", "train", RL, "train.iterations=lots", "--out", "{tmp}/rl"], 2,
         "train.iterations must be an integer"),
    Case("rl-gamma-exponent-form", ["rl", "train", RL, "train.gamma=2e0", "--out", "{tmp}/rl"], 2,
         "train.gamma must be in (0, 1]"),
    Case("rl-out-is-file", ["rl", "train", RL, "--out", "{file}"], 2, "is an existing file"),
    Case("rl-evaluate-not-a-run", ["rl", "evaluate", "{tmp}/nope"], 2, "nope"),
    # -- recsys -----------------------------------------------------------------------------------------------
    Case("recsys-missing-config", ["recsys", "train", "{tmp}/nope.yaml"], 2, "nope.yaml not found"),
    Case("recsys-unknown-method", ["recsys", "train", RECSYS, "methods=[melu,svd]", "--out", "{tmp}/rs"], 2,
         "unknown recsys method 'svd'"),
    Case("recsys-threads-0", ["recsys", "train", RECSYS, "threads=0", "--out", "{tmp}/rs"], 2, "threads must be >= 1"),
    Case("recsys-negative-lr-exponent-form", ["recsys", "train", RECSYS, "melu.lr=-1e-3", "--out", "{tmp}/rs"], 2,
         "melu.lr must be > 0, got -0.001"),
    Case("recsys-out-under-file", ["recsys", "train", RECSYS, "--out", "{file}/rs"], 2, "is a file, not a directory"),
    Case("recsys-evaluate-not-a-run", ["recsys", "evaluate", "{tmp}/nope"], 2, "is not a run directory"),
    Case("recsys-evaluate-meta-learning-run", ["recsys", "evaluate", "{run}"], 2, "is not a recsys run"),
    # -- the parser itself --------------------------------------------------------------------------------------
    Case("unknown-command", ["trian", "{cfg}"], 2, "invalid choice: 'trian'"),
    Case("train-without-config", ["train"], 2, "the following arguments are required: config; see metakit train --help"),
    Case("unknown-option", ["train", "{cfg}", "--steps", "3"], 2, "unrecognized arguments: --steps 3"),
    Case("rl-evaluate-tasks-zero", ["rl", "evaluate", "{tmp}/nope", "--tasks", "0"], 2, "--tasks: must be an integer >= 1"),
    Case("tune-trials-zero", ["tune", "{cfg}", "--trials", "0"], 2, "--trials: must be an integer >= 1, got 0"),
]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained run (2 steps), its config, a plain file and another learner's checkpoint."""
    from metakit.config import load_config
    from metakit.experiment import build_experiment
    from metakit.training import train
    from metakit.utils import torch_save

    root = tmp_path_factory.mktemp("bad-inputs")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY), encoding="utf-8")
    train(load_config(cfg), root / "run", progress=False)
    other = build_experiment(load_config(cfg, ["learner.name=relation"]))
    torch_save({"step": 0, "learner": other.learner.state_dict()}, root / "wrong.pt")
    (root / "file.txt").write_text("a plain file\n", encoding="utf-8")
    return {"root": root, "cfg": cfg, "run": root / "run", "wrong": root / "wrong.pt", "file": root / "file.txt"}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_the_battery_is_big_and_covers_every_command():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    covered = {c.argv[0] if c.argv[0] not in ("nas", "rl", "recsys") else " ".join(c.argv[:2]) for c in CASES}
    assert {"quickstart", "train", "evaluate", "compare", "cross-domain", "continual", "reproduce", "datasets", "tune",
            "nas search", "nas evaluate", "rl train", "rl evaluate", "recsys train", "recsys evaluate"} <= covered


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ws: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    tmp = tmp_path / "work"
    tmp.mkdir()
    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("METAKIT_OFFLINE", "1")  # never wait on the network
    monkeypatch.delenv("METAKIT_DEBUG", raising=False)
    monkeypatch.chdir(tmp)  # default output folders (runs/...) would land where the snapshot sees them
    if case.setup is not None:
        case.setup(tmp, ws, monkeypatch)
    values = {"tmp": str(tmp), "cache": str(tmp_path / "cache"), "run": str(ws["run"]), "cfg": str(ws["cfg"]),
              "file": str(ws["file"])}
    argv = [arg.format(**values) for arg in case.argv]
    before, run_before = snapshot(tmp), snapshot(ws["run"])

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()

    flat = " ".join(err.split())
    assert code == case.code, err
    assert case.message.format(**values) in flat, err
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert snapshot(ws["run"]) == run_before, "a failed command changed the shared run"
    if case.started:
        assert not [p for p in tmp.rglob("*") if p.name.endswith(".tmp")], "half-written file left behind"
    else:
        assert snapshot(tmp) == before, "a failed command left files behind"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_is_one_line(ws, tmp_path, capsys):
    code = main(["train", str(ws["cfg"]), "train.device=cuda", "--out", str(tmp_path / "r")])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "train.device=cuda but no CUDA device is available" in err and "train.device=cpu" in err
    assert not (tmp_path / "r").exists()


# -- internal errors and --debug --------------------------------------------------------------------------


def _explode(args: object) -> int:
    raise ValueError("something inside metakit broke")


@pytest.fixture
def broken_datasets_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """``metakit datasets`` raises a bug (not a MetakitError)."""
    monkeypatch.setattr(cli, "cmd_datasets", _explode)
    monkeypatch.delenv("METAKIT_DEBUG", raising=False)


def test_internal_error_is_one_line_exit_1(broken_datasets_command, capsys):
    code = main(["datasets"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "error: internal error (ValueError: something inside metakit broke); rerun with --debug" in " ".join(err.split())


@pytest.mark.parametrize("argv", [["--debug", "datasets"], ["datasets", "--debug"]], ids=["before", "after"])
def test_debug_flag_shows_the_traceback(broken_datasets_command, capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback (most recent call last)" in err and "_explode" in err
    assert "internal error (ValueError" in err


def test_debug_env_shows_the_traceback_of_bad_input_too(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("METAKIT_DEBUG", "1")
    code = main(["train", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback (most recent call last)" in err and "MetakitError" in err and "not found" in err


def test_debug_after_a_nested_command_parses(capsys):
    args = cli.build_parser().parse_args(["nas", "evaluate", "somewhere", "--debug"])
    assert args.debug is True
    assert cli.build_parser().parse_args(["rl", "train", "c.yaml"]).debug is False


def test_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_datasets", interrupted)
    assert main(["datasets"]) == 130
    assert "Traceback" not in capsys.readouterr().err


# -- float literals: accepted everywhere metakit parses numbers ------------------------------------------------


@pytest.mark.parametrize("text, value", [("1e-3", 1e-3), ("1E-3", 1e-3), ("1.0e3", 1000.0), ("+2e2", 200.0),
                                         ("-.5", -0.5), ("1_000e-3", 1.0), ("1e30", 1e30)])
def test_float_literals_in_overrides_and_files(tmp_path, text, value):
    from metakit.config import load_config

    by_override = load_config(None, [f"train.lr={text}", f"learner.inner_lr={text}", "learner.name=maml"])
    assert by_override.train.lr == value and by_override.learner.options["inner_lr"] == value
    assert isinstance(by_override.learner.options["inner_lr"], float)  # open sections get numbers too
    path = tmp_path / "c.yaml"
    path.write_text(f"train: {{lr: {text}}}\nlearner: {{name: maml, inner_lr: {text}}}\n", encoding="utf-8")
    from_file = load_config(path)
    assert from_file.train.lr == value and from_file.learner.options["inner_lr"] == value


def test_float_literals_reach_every_domain(tmp_path):
    from metakit.hpo.space import load_tune_spec
    from metakit.nas.search import load_nas_spec
    from metakit.recsys.config import load_recsys_config
    from metakit.rl.config import load_rl_config

    assert load_rl_config(RL, ["maml.inner_lr=1e-1", "maml.outer_lr=3e-3"]).maml.outer_lr == 3e-3
    assert load_recsys_config(RECSYS, ["melu.lr=1e-3", "melu.local_lr_grid=[1e-2, 3e-2]"]).melu.local_lr_grid == [0.01, 0.03]
    assert load_nas_spec(NAS, ["nas.param_tolerance=2.5e-1", "nas.candidate_steps=5e1"]).settings.candidate_steps == 50
    tune = tmp_path / "t.yaml"
    tune.write_text(yaml.safe_dump(TINY) + "tune: {space: {train.lr: {low: 1e-4, high: 1e-2, log: true}}, trials: 1e1}\n")
    spec = load_tune_spec(tune)
    assert (spec.params[0].kind, spec.params[0].low, spec.params[0].high, spec.trials) == ("float", 1e-4, 1e-2, 10)


def test_saved_config_round_trips(tmp_path):
    from metakit.config import load_config, yaml_load

    config = load_config(None, ["train.lr=1e-30", "learner.name=maml", "learner.inner_lr=1e-2", "dataset.root='1e5'"])
    text = config.to_yaml()
    assert yaml_load(text) == config.to_dict() and yaml.safe_load(text) == config.to_dict()
    (tmp_path / "c.yaml").write_text(text, encoding="utf-8")
    assert load_config(tmp_path / "c.yaml") == config
    assert config.dataset.options["root"] == "1e5"  # a string that looks like a number stays a string


def test_threads_zero_in_an_old_run_means_the_default(ws, tmp_path):
    from metakit.runs import load_run_config

    old = tmp_path / "old"
    shutil.copytree(ws["run"], old)
    text = (old / "config.yaml").read_text(encoding="utf-8").replace("threads: 1", "threads: 0")
    (old / "config.yaml").write_text(text, encoding="utf-8")
    assert load_run_config(old).train.threads is None


# -- damaged dataset caches are rebuilt, not reported ----------------------------------------------------------


@pytest.mark.parametrize("damage", ["empty", "truncated", "random", "foreign-npz", "inconsistent"])
def test_damaged_omniglot_cache_is_rebuilt(tmp_path, monkeypatch, damage):
    import numpy as np

    from metakit.datasets.omniglot import load_omniglot

    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    archive = tmp_path / "images_background.zip"
    png = _png()
    with zipfile.ZipFile(archive, "w") as zf:
        for a in ("Alpha", "Beta"):
            for c in (1, 2, 3):
                for d in (1, 2):
                    zf.writestr(f"images_background/{a}/character0{c}/0{c}0{d}_0{d}.png", png)
    first = load_omniglot(archive, image_size=8)
    (cached,) = (tmp_path / "cache").rglob("*.npz")
    if damage == "empty":
        cached.write_bytes(b"")
    elif damage == "truncated":
        cached.write_bytes(cached.read_bytes()[:200])
    elif damage == "random":
        cached.write_bytes(RANDOM)
    elif damage == "foreign-npz":
        with open(cached, "wb") as f:
            np.savez(f, split=np.arange(3))
    else:
        with np.load(cached) as z:
            arrays = dict(z)
        arrays["labels"] = arrays["labels"] + 100
        with open(cached, "wb") as f:
            np.savez(f, **arrays)
    again = load_omniglot(archive, image_size=8)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert again.class_names == first.class_names
    assert torch.equal(load_omniglot(archive, image_size=8).labels, first.labels)  # and the cache is whole again


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16), 255).save(buf, format="PNG")
    return buf.getvalue()


def test_fresh_run_in_a_folder_another_run_used(ws, tmp_path, capsys):
    """The KeyError: 'split' of issue #19: a fresh run appended to a log another kind of run had left."""
    out = tmp_path / "reused"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"phase": "meta", "iteration": 1, "return": -3.0}\n{"split": "tr', encoding="utf-8")
    code = main(["train", str(ws["cfg"]), "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines and all('"split"' in line for line in lines)
    assert (out / "learning_curve.png").is_file()


@pytest.mark.parametrize("damage", ["npz-archive", "truncated", "wrong-rows", "nan"])
def test_damaged_text_embedding_cache_is_re_encoded(tmp_path, monkeypatch, damage):
    import numpy as np

    from metakit.text import embeddings as te

    class Counting(te.Encoder):
        name = "counting-test-encoder"
        calls = 0

        def cache_id(self) -> str:
            return "counting-v1"

        def encode(self, texts, batch_size=64):  # noqa: ANN001, ANN201
            Counting.calls += 1
            return np.stack([np.full(4, len(t), np.float32) for t in texts])

    monkeypatch.setenv("METAKIT_CACHE", str(tmp_path / "cache"))
    texts = ["a", "bb", "ccc"]
    first = te.embed_texts(texts, Counting(), what="damaged")
    path = te.embedding_cache_path(Counting(), texts, "damaged")
    if damage == "npz-archive":
        with open(path, "wb") as f:
            np.savez(f, split=np.arange(3))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "wrong-rows":
        with open(path, "wb") as f:
            np.save(f, np.zeros((2, 4), np.float32))
    else:
        with open(path, "wb") as f:
            np.save(f, np.full((3, 4), np.nan, np.float32))
    again = te.embed_texts(texts, Counting(), what="damaged")
    assert Counting.calls == 2 and torch.equal(again, first)
    assert np.array_equal(np.load(path), first.numpy())  # rebuilt in place
