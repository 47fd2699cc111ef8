"""Pretraining-seed noise: the runs that differ only in their pretraining seeds, and what their
spread says of a gap between two models.

The readout seeds (transfer.seeds) move only the linear classifier; a pretraining seed moves the
network itself (initialisation, augmentation draws, batch order, k-means starts). `localagg sweep
seeds` queues one DVC experiment per seed that sets every key of SEED_KEYS together; `localagg
report --compare` finds the runs of such a sweep in `dvc exp show` and writes RECORD (each run's
headline numbers); the report reads it and says of each gap between two models whether it lies
outside that noise. Over the n runs of the sweep,

    gap_i = a_i - b_i,   noise = sample std of gap_i,   outside  <=>  |gap| > 2 * noise

(a gap whose size is within two standard deviations of its own seed-to-seed spread is not a
ranking: another seed may invert it).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .sweep import Run

SEED_KEYS = ("pretrain_ia.seed", "pretrain_la.seed", "pretrain_la.kmeans_seed", "random_init.seed", "supervised.seed")
RECORD = Path("records/sweeps/pretraining_seeds.json")
OUTSIDE = 2.0  # a gap is outside the noise when it exceeds this many standard deviations of itself
# params that move no number: left out when a sweep's params are set against the run's
IRRELEVANT_SECTIONS = ("launcher", "external")
IRRELEVANT_LEAVES = ("threads", "workers", "checkpoint_every_steps")


def settings(params: dict, seed: int) -> dict[str, int]:
    """The `-S` settings of pretraining seed `seed` from the flattened params: every seed key is
    `seed`, but k-means' own seed is its params value + `seed` (seed 0: the params as they are)."""
    base = params.get("pretrain_la.kmeans_seed", 0)
    return {key: int(base) + seed if key == "pretrain_la.kmeans_seed" else seed for key in SEED_KEYS}


def seed_runs(runs: list[Run]) -> list[Run]:
    """The largest group of `runs` whose params are equal except for SEED_KEYS, one run per seed
    setting (the first listed: the workspace before its commit); [] when no group has two."""
    groups: dict[str, dict[tuple, Run]] = {}
    for run in runs:
        rest = json.dumps({k: v for k, v in run.params.items() if k not in SEED_KEYS}, sort_keys=True, default=str)
        groups.setdefault(rest, {}).setdefault(tuple(run.params.get(k) for k in SEED_KEYS), run)
    best = max(groups.values(), key=len, default={})
    return list(best.values()) if len(best) >= 2 else []


def run_params(params: dict) -> dict:
    """The flattened params that can move a number, less the seed keys: what a sweep's runs share."""
    return {k: v for k, v in params.items() if k not in SEED_KEYS and k.split(".")[0] not in IRRELEVANT_SECTIONS
            and k.rsplit(".", 1)[-1] not in IRRELEVANT_LEAVES}


def differing(sweep: dict, params: dict) -> list[str]:
    """The keys of the flattened `params` (a run's) whose value differs from the sweep's shared
    params (run_params of both), sorted; a record that names no params differs in everything."""
    theirs, ours = sweep.get("params"), run_params(params)
    if not isinstance(theirs, dict):
        return ["(the record names no params)"]
    same = lambda k: json.dumps(theirs.get(k), sort_keys=True) == json.dumps(ours.get(k), sort_keys=True)  # noqa: E731
    return sorted(k for k in set(theirs) | set(ours) if not same(k))


def record(runs: list[Run], origin: str) -> dict:
    """RECORD's content: the seed keys, the params the runs share, where they came from, and each
    run's seeds and numbers."""
    return {"seed_keys": list(SEED_KEYS), "source": origin, "outside_factor": OUTSIDE,
            "params": run_params(runs[0].params),
            "runs": [{"name": run.name or run.rev, "rev": run.rev, "seeds": {k: run.params.get(k) for k in SEED_KEYS},
                      "metrics": run.metrics} for run in runs]}


def gap_noise(sweep: dict, a: str, b: str) -> tuple[float, int] | None:
    """(sample std of metric `a` - metric `b` over the sweep's runs, n); None with fewer than two
    runs that have both (`a`, `b`: metric names such as "la_knn", "ir_knn")."""
    gaps = [run["metrics"][a] - run["metrics"][b] for run in sweep.get("runs", [])
            if isinstance(run.get("metrics"), dict) and a in run["metrics"] and b in run["metrics"]]
    return (statistics.stdev(gaps), len(gaps)) if len(gaps) >= 2 else None


def spread(sweep: dict, metric: str) -> tuple[float, float, int] | None:
    """(mean, sample std, n) of one metric over the sweep's runs; None with fewer than two."""
    values = [run["metrics"][metric] for run in sweep.get("runs", []) if metric in (run.get("metrics") or {})]
    return (statistics.fmean(values), statistics.stdev(values), len(values)) if len(values) >= 2 else None


def verdict(gap: float, noise: tuple[float, int] | None) -> str:
    """'outside the pretraining noise: std 0.41 over 3 seeds', 'within ...', or 'pretraining noise not measured'."""
    if noise is None:
        return "pretraining noise not measured"
    std, n = noise
    where = "outside" if abs(gap) > OUTSIDE * std else "within"
    return f"{where} the pretraining noise: std {std:.2f} over {n} seeds"
