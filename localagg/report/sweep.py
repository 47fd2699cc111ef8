"""One table across runs of the pipeline (experiments or commits): the params that differ
between them and a few headline metrics, one row per run.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

from .results import number_text

MISSING = object()  # a param a run does not have


@dataclass
class Run:
    """One run: where it comes from, its params (flattened "section.key") and its headline metrics."""

    name: str      # experiment or branch name, "workspace", or "" for an unnamed commit
    rev: str       # short commit id, or "workspace"
    baseline: str  # short id of the commit an experiment derives from; "" for commits and the workspace
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and scalars are leaves."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def differing_params(runs: list[Run]) -> list[str]:
    """The params whose value is not the same in every run (a param missing from a run differs), sorted."""
    keys = sorted({k for run in runs for k in run.params})
    return [k for k in keys if len({json.dumps(run.params.get(k), sort_keys=True) for run in runs}) > 1]


def comparison(runs: list[Run], metrics: dict[str, str]) -> tuple[list[str], list[str], list[list[Any]]]:
    """(column names, column labels, rows): name, rev, baseline, the differing params (as text),
    then each metric of `metrics` (name -> label) that at least one run has (floats or None)."""
    params = differing_params(runs)
    shown = [m for m in metrics if any(m in run.metrics for run in runs)]
    names = ["name", "rev", "baseline", *params, *shown]
    labels = ["name", "rev", "baseline", *params, *(metrics[m] for m in shown)]
    rows = [[run.name, run.rev, run.baseline, *(_param_text(run.params.get(p, MISSING)) for p in params),
             *(run.metrics.get(m) for m in shown)] for run in runs]
    return names, labels, rows


def _param_text(value: Any) -> str:
    """A param exactly as set (never rounded): strings as they are, the rest as JSON; "" when absent."""
    if value is MISSING:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _text(value: Any, digits: int | None) -> str:
    """A cell: params are text already; metrics rounded to `digits` (None: at most 4 decimals)."""
    if value is None or isinstance(value, str):
        return value or ""
    return number_text(value) if digits is None else f"{value:.{digits}f}"


def compare_csv(names: list[str], rows: list[list[Any]]) -> str:
    """compare.csv: one row per run; metrics with at most 4 decimals, missing values empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(names)
    writer.writerows([[_text(v, None) for v in row] for row in rows])
    return buf.getvalue()


def compare_markdown(tables: list[tuple[str, list[str], list[list[Any]]]], notes: list[str]) -> str:
    """compare.md: each (title, labels, rows) as a section (a title's first line is its heading,
    the rest its text), metrics with 2 decimals, followed by `notes` (sources, skipped runs)."""
    parts = ["# Comparison across runs"]
    for title, labels, rows in tables:
        lines = ["| " + " | ".join(labels) + " |", "|" + " --- |" * len(labels)]
        lines += ["| " + " | ".join(_text(v, 2) for v in row) + " |" for row in rows]
        parts.append(f"## {title}\n\n" + "\n".join(lines))
    return "\n\n".join(parts + notes) + "\n"
