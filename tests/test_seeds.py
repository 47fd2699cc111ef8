"""Pretraining seeds as a sweep: `localagg sweep seeds` builds one DVC experiment per seed with
every seed key set together; `localagg report --compare` finds the runs that differ only in
those keys and writes their spread; the report says of each gap whether it lies outside it.

The `dvc exp show --json` input is built here in the layout of tests/fixtures/report/exp_show.json
(real dvc 3.67 output): a commit, and its experiments under experiments[].revs[].
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from localagg.errors import UserError
from localagg.report import seeds
from stages import report, sweep
from stages.cli import app
from .test_report import write_run

SEED_PARAMS = {"pretrain_ia": {"seed": 0, "epochs": 4}, "pretrain_la": {"seed": 0, "kmeans_seed": 1234, "k": 1024},
               "random_init": {"seed": 0}, "supervised": {"seed": 0}}


def _entry(rev: str, name: str | None, seed: int | None, metrics: dict[str, dict], base: dict | None = None,
           **changes) -> dict:
    params = copy.deepcopy(base if base is not None else SEED_PARAMS)
    if seed is not None:
        for section in ("pretrain_ia", "pretrain_la", "random_init", "supervised"):
            params[section]["seed"] = seed
        params["pretrain_la"]["kmeans_seed"] = 1234 + seed
    for key, value in changes.items():
        section, leaf = key.split(".")
        params[section][leaf] = value
    return {"rev": rev, "name": name, "error": None, "data": {
        "rev": rev, "params": {"params.yaml": {"data": params}},
        "metrics": {path: {"data": data} for path, data in metrics.items()}}}


def _metrics(la_knn: float, ir_knn: float, la_best: float, ir_best: float) -> dict[str, dict]:
    return {"metrics/pretrain_la.json": {"knn_top1": 1.0},  # the bank monitor: never a headline number
            "metrics/transfer/la-object.json": {"knn_top1": la_knn, "best_top1": la_best, "conv5_top1": la_best - 1},
            "metrics/transfer/ir-object.json": {"knn_top1": ir_knn, "best_top1": ir_best, "conv5_top1": ir_best - 1},
            "metrics/detection/la-seed0.json": {"AP50": 40.0}, "metrics/detection/la-seed1.json": {"AP50": 44.0}}


# LA - IR over the three seeds: kNN 4, 7, 1 (std 3.0); best layer 0.5, -1.5, 2.5 (std 2.0)
SWEEP = [(0, 70.0, 66.0, 80.5, 80.0), (1, 72.0, 65.0, 80.0, 81.5), (2, 68.0, 67.0, 82.0, 79.5)]


def with_seed_keys(params: Path) -> dict:
    """The params file with the seed keys of SEED_PARAMS added (written back): the sweep's base."""
    data = yaml.safe_load(params.read_text()) or {}
    for section, keys in SEED_PARAMS.items():
        data.setdefault(section, {}).update(keys)
    params.write_text(yaml.safe_dump(data))
    return data


def exp_show(path: Path, base: dict | None = None) -> Path:
    commit = _entry("a" * 40, "main", None, _metrics(*SWEEP[0][1:]), base)
    commit["experiments"] = [
        {"revs": [_entry("b" * 40, "pretrain-seed1", 1, _metrics(*SWEEP[1][1:]), base)]},
        {"revs": [_entry("c" * 40, "pretrain-seed2", 2, _metrics(*SWEEP[2][1:]), base)]},
        # another param changed too: not pretraining noise
        {"revs": [_entry("d" * 40, "k512-seed3", 3, _metrics(90.0, 10.0, 90.0, 10.0), base,
                         **{"pretrain_la.k": 512})]},
    ]
    workspace = _entry("workspace", None, None, _metrics(*SWEEP[0][1:]), base)
    path.write_text(json.dumps([workspace, commit]))
    return path


def test_the_runs_that_differ_only_in_their_pretraining_seeds_give_the_noise_of_each_gap(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path)
    written = report.compare(params, exp_json=exp_show(tmp_path / "exp.json", with_seed_keys(params)),
                             out=Path("reports"))
    assert seeds.RECORD in written
    record = json.loads(seeds.RECORD.read_text())
    assert [r["name"] for r in record["runs"]] == ["workspace", "pretrain-seed1", "pretrain-seed2"]
    assert record["runs"][1]["seeds"] == {"pretrain_ia.seed": 1, "pretrain_la.seed": 1, "pretrain_la.kmeans_seed": 1235,
                                          "random_init.seed": 1, "supervised.seed": 1}
    # every model's headline numbers, the kNN of fresh features (not the bank monitor's 1.0)
    assert record["runs"][2]["metrics"]["la_knn"] == 68.0 and record["runs"][2]["metrics"]["ir_object_best"] == 79.5
    assert record["runs"][0]["metrics"]["la_AP50"] == 42.0  # the mean over detection seeds
    assert seeds.gap_noise(record, "la_knn", "ir_knn") == (pytest.approx(statistics.stdev([4, 7, 1])), 3)
    compare_md = Path("reports/compare.md").read_text()
    assert "## Pretraining seeds" in compare_md and "| kNN top-1 of the embedding, object set | 66.00 ± 1.00 | 70.00 ± 2.00 |" in compare_md

    report.run(params, out=Path("reports"))
    md = Path("reports/results.md").read_text()
    gaps = next(line for line in md.splitlines() if line.startswith("| LA − IR |"))
    # the toy run's own gaps are 10.00: outside a kNN gap noise of 3.00 (10 > 2 x 3), and its best
    # layer gap too (10 > 2 x 2); the gap to the random network has no sweep numbers
    assert gaps.startswith("| LA − IR | +10.00 (outside the pretraining noise: std 3.00 over 3 seeds) | "
                           "+10.00 (outside the pretraining noise: std 2.00 over 3 seeds) |"), gaps
    assert "| LA − random network | +40.00 (pretraining noise not measured) |" in md
    assert f"pretraining-seed sweep in `{seeds.RECORD}`" in md and "**not measured**" not in md


def test_a_sweep_of_other_params_is_not_this_runs_noise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path)
    report.compare(params, exp_json=exp_show(tmp_path / "exp.json", with_seed_keys(params)), out=Path("reports"))
    data = yaml.safe_load(params.read_text())
    data["pretrain_la"]["k"] = 512
    data.setdefault("launcher", {})["kind"] = "local"  # moves no number: not a difference
    params.write_text(yaml.safe_dump(data))
    report.run(params, out=Path("reports"))
    md = Path("reports/results.md").read_text()
    assert "| LA − IR | +10.00 | +10.00 |" in md and "outside the pretraining noise" not in md
    assert ("Pretraining noise: **not measured for these params**: the sweep in "
            f"`{seeds.RECORD}` ran with other values of `pretrain_la.k`, so") in md


def test_a_gap_within_the_noise_is_said_to_be_within_it():
    sweep_record = {"runs": [{"metrics": {"a": a, "b": b}} for a, b in ((1.0, 0.0), (3.0, 0.0), (5.0, 0.0))]}
    noise = seeds.gap_noise(sweep_record, "a", "b")  # gaps 1, 3, 5: std 2
    assert noise == (pytest.approx(2.0), 3)
    assert seeds.verdict(3.9, noise).startswith("within") and seeds.verdict(-4.1, noise).startswith("outside")
    assert seeds.gap_noise({"runs": [{"metrics": {"a": 1.0, "b": 0.0}}]}, "a", "b") is None


def test_without_a_sweep_no_seed_record_is_written(tmp_path):
    written = report.compare(tmp_path / "params.yaml", exp_json=Path(__file__).parent / "fixtures" / "report"
                             / "exp_show.json", out=tmp_path / "reports")
    assert not any(p == seeds.RECORD for p in written)


def test_a_malformed_seed_record_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = write_run(tmp_path)
    seeds.RECORD.parent.mkdir(parents=True, exist_ok=True)
    seeds.RECORD.write_text(json.dumps({"runs": [{"metrics": {"la_knn": "high"}}]}))
    with pytest.raises(UserError, match=r"records/sweeps/pretraining_seeds.json: expected .*localagg report --compare"):
        report.run(params, out=Path("reports"))


def _params(tmp_path: Path, **edits) -> Path:
    data = copy.deepcopy(SEED_PARAMS)
    for key, value in edits.items():
        section, leaf = key.split(".")
        if value is None:
            del data[section][leaf]
        else:
            data[section][leaf] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_sweep_sets_every_seed_key_together_in_one_experiment_per_seed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(sweep, "_dvc_command", lambda: ["dvc"])
    monkeypatch.setattr(sweep.subprocess, "run", lambda cmd, cwd: calls.append((cmd, cwd)) or
                        type("Done", (), {"returncode": 0})())
    params = _params(tmp_path)
    result = CliRunner().invoke(app, ["sweep", "seeds", "1", "2", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert [cmd for cmd, _ in calls] == [
        ["dvc", "exp", "run", "--temp", "--name", f"pretrain-seed{s}", "-S", f"pretrain_ia.seed={s}",
         "-S", f"pretrain_la.seed={s}", "-S", f"pretrain_la.kmeans_seed={1234 + s}", "-S", f"random_init.seed={s}",
         "-S", f"supervised.seed={s}"] for s in (1, 2)]
    assert all(cwd == tmp_path for _, cwd in calls)
    assert "localagg report --compare" in result.output
    calls.clear()
    assert CliRunner().invoke(app, ["sweep", "seeds", "3", "--queue", "--params", str(params)]).exit_code == 0
    assert calls[0][0][:4] == ["dvc", "exp", "run", "--queue"]


@pytest.mark.parametrize("args, edits, message", [
    (["1", "1"], {}, "distinct non-negative integers, got [1, 1]"),
    (["0"], {}, "seed 0 is the params file's own setting"),
    (["1"], {"pretrain_la.kmeans_seed": None}, "no pretrain_la.kmeans_seed: the sweep sets these keys"),
])
def test_a_bad_sweep_is_one_message_before_any_experiment_runs(tmp_path, monkeypatch, args, edits, message):
    monkeypatch.setattr(sweep.subprocess, "run", lambda *a, **k: pytest.fail("an experiment ran"))
    result = CliRunner().invoke(app, ["sweep", "seeds", *args, "--params", str(_params(tmp_path, **edits))])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in result.output
