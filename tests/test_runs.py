"""The run layer every domain shares: starting and resuming a run directory, and the report writer."""

from __future__ import annotations

import json

import pytest

from metakit.errors import MetakitError
from metakit.runs import Plot, Report, Run, pyplot, write_report

CONFIG = {"name": "x", "train": {"steps": 10, "lr": 0.1}}


def _start(root, resume=False, mine=CONFIG, extendable=("train.steps",)):  # noqa: ANN001, ANN202
    run = Run(root)
    return run.start("name: x\n", resume, lambda: json.loads(json.dumps(CONFIG)), mine, extendable=extendable)


def test_fresh_run_appears_whole(tmp_path):
    assert _start(tmp_path / "runs" / "a") is False
    root = tmp_path / "runs" / "a"
    assert (root / "config.yaml").read_text() == "name: x\n"
    assert (root / "metrics.jsonl").read_text() == ""
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["a"]  # no staging folder left behind


def test_fresh_run_in_existing_folder_keeps_other_files_and_empties_the_log(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "metrics.jsonl").write_text('{"split": "train", "step": 3}\n')
    assert _start(tmp_path) is False
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_resume_checks_the_saved_config(tmp_path):
    _start(tmp_path / "r")
    with pytest.raises(MetakitError, match="already holds a run; pass --resume"):
        _start(tmp_path / "r")
    longer = {"name": "x", "train": {"steps": 50, "lr": 0.1}}
    assert _start(tmp_path / "r", resume=True, mine=longer) is True  # a longer budget is allowed
    other = {"name": "x", "train": {"steps": 10, "lr": 0.2}}
    with pytest.raises(MetakitError, match="the config differs"):
        _start(tmp_path / "r", resume=True, mine=other)


def test_log_keep_and_checkpoints(tmp_path):
    run = Run(tmp_path)
    run.create("name: x\n")
    for step in (1, 2, 3):
        run.log({"split": "train", "step": step, "loss": 1.0 / step})
    run.keep_metrics(lambda r: r["step"] <= 2)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    run.save("last", {"step": 2})
    assert run.load("last", "re-run training", keys=("step",)) == {"step": 2}
    silent = Run(tmp_path / "other", writes=False)  # a non-main process of distributed training
    silent.create("name: x\n")
    silent.log({"split": "train", "step": 1})
    silent.save("last", {"step": 1})
    assert not (tmp_path / "other").exists()


def test_write_report_writes_every_part_and_closes_figures(tmp_path):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    out = write_report(tmp_path / "r", Report(text={"report.md": "# r\n"}, data={"r.json": {"a": 1}},
                                              plots={"r.png": Plot(fig)}))
    assert (out / "report.md").read_text() == "# r\n"
    assert json.loads((out / "r.json").read_text()) == {"a": 1}
    assert (out / "r.png").read_bytes()[:4] == b"\x89PNG"
    assert fig.number not in plt.get_fignums()
    write_report(out, Report(text={"report.md": "# again\n"}))  # one part at a time: the others stay
    assert (out / "r.png").is_file() and (out / "report.md").read_text() == "# again\n"
