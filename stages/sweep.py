"""`localagg sweep seeds S...`: one DVC experiment per pretraining seed, every seed key set together.

Each experiment sets seeds.SEED_KEYS (`settings`: IR's, LA's, the random network's and the
supervised reference's seed to S, LA's k-means seed to its params value + S) and reruns what
they feed: the three pretrainings, the random network, and every evaluation of them. Seed 0 is
the params file as it is: the workspace's own run. By default each experiment runs at once, one
after the other, in a temporary copy (`dvc exp run --temp`: the workspace is left as it is);
`--queue` only queues them for `dvc queue start` (on a cluster, or to run them in parallel).
Afterwards `localagg report --compare` finds them in `dvc exp show`, writes the spread to
seeds.RECORD, and `dvc repro report` says of each gap whether it lies outside it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from localagg.errors import UserError
from localagg.report import seeds
from localagg.report.sweep import flatten

from .report import _dvc_command


def experiment_name(seed: int) -> str:
    return f"pretrain-seed{seed}"


def commands(params: Path, chosen: list[int], queue: bool) -> list[list[str]]:
    """The `dvc exp run` argument lists of the sweep (without the dvc executable), checked first."""
    if not chosen:
        raise UserError("name at least one pretraining seed: `localagg sweep seeds 1 2`.")
    if len(set(chosen)) != len(chosen) or any(s < 0 for s in chosen):
        raise UserError(f"pretraining seeds should be distinct non-negative integers, got {chosen}.")
    if not params.is_file():
        raise UserError(f"params file {params} does not exist (pass --params PATH, default params.yaml).")
    try:
        flat = flatten(yaml.safe_load(params.read_text()) or {})
    except yaml.YAMLError as exc:
        raise UserError(f"{params} is not valid YAML: {exc}") from None
    missing = [k for k in seeds.SEED_KEYS if k not in flat]
    if missing:
        raise UserError(f"{params}: no {', '.join(missing)}: the sweep sets these keys; add them (params.yaml of the "
                        "project has each).")
    own = [s for s in chosen if seeds.settings(flat, s) == {k: flat[k] for k in seeds.SEED_KEYS}]
    if own:
        raise UserError(f"seed {own[0]} is the params file's own setting ({params}'s workspace run is that seed): "
                        "leave it out of the sweep.")
    out = []
    for seed in chosen:
        sets = [arg for key, value in seeds.settings(flat, seed).items() for arg in ("-S", f"{key}={value}")]
        out.append(["exp", "run", "--queue" if queue else "--temp", "--name", experiment_name(seed), *sets])
    return out


def run(params: Path, chosen: list[int], queue: bool = False, echo=print) -> None:
    """Run (or, with `queue`, queue) the experiments of `commands` from the params file's folder;
    a failed experiment stops the sweep with dvc's last line."""
    dvc = _dvc_command()
    cwd = Path(params).resolve().parent
    for args in commands(Path(params), chosen, queue):
        echo(f"sweep: dvc {' '.join(args)}")
        proc = subprocess.run(dvc + args, cwd=cwd)
        if proc.returncode != 0:
            raise UserError(f"`dvc {' '.join(args[:5])} ...` failed (exit status {proc.returncode}); its output is "
                            "above. Fix it and rerun the sweep with the remaining seeds.")
    echo("sweep: queued; start them with `dvc queue start`, then `localagg report --compare`." if queue else
         "sweep: done; now `localagg report --compare` (writes the spread to "
         f"{seeds.RECORD}) and `dvc repro report`.")
