"""results.md: the run's numbers as tables next to the paper's, each naming its source files.

`render` reads the aggregated cells and the raw records (pretraining summaries, costs) and
returns the whole document; it writes nothing.
"""

from __future__ import annotations

import math
import re

from . import comparability, seeds
from .comparability import set_name
from .paper import (DETECTION_SETS, HEADLINE, NETWORK_NAMES, PAPER_ARCHS, PRESETS, RECIPE, network_of, paper_value,
                    verified)
from .paper import deviations as paper_deviations
from .results import (KNN_LAYERS, LAYERS, PIXELS, PUBLISHED_CELLS, ROLES, Cell, Record, RunMetrics, Stat,
                      baseline_order, best_layer, label, models_in)

ROLE_NOUN = {"object": "object set", "transfer": "transfer set", "detection": "detection set"}

HOW_TO_READ = """\
## How to read this report

Numbers are percentages. `la` is Local Aggregation, `ir` the Instance Recognition warm start
LA begins from, `random` the untrained network and `supervised` the same backbone trained with
the object set's labels (a reference, not a target). Linear readout trains one linear
classifier on the frozen features of each layer (conv1..conv5) and evaluates it on one centre
crop ("centre") and on 10 crops ("10-crop"); kNN is the weighted k-nearest-neighbour top-1 on
the embedding or on conv5. A cell is the mean ± sample standard deviation over seeds (n, the
number of seeds, is in the column header or next to the value); one seed shows the value
alone. A difference from the paper's number is given only where this run used the paper's
whole protocol (datasets and their sizes, architecture, crop, epochs of each pretraining
stage, readout and detection recipes; see "Why not comparable"); elsewhere this run's number
is shown for orientation and says what differs. Every table names the metrics
files it came from (`{a,b}` in a name stands for each of a and b; the last section lists every
file); `results.csv` holds the same numbers (means over seeds)."""


def fmt(stat: Stat | None, with_n: bool = False, missing: str = "n/a") -> str:
    """'80.80', '80.80 ± 0.42' or, with_n, '80.80 ± 0.42 (n=2)'; `missing` for a missing number."""
    if stat is None:
        return missing
    text = f"{stat.mean:.2f}" if stat.std is None else f"{stat.mean:.2f} ± {stat.std:.2f}"
    return f"{text} (n={stat.n})" if with_n and stat.n > 1 else text


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def brace_paths(paths) -> list[str]:
    """Paths in shell brace notation where exact: [a-seed0.json, b-seed0.json] -> [{a,b}-seed0.json].

    Paths in the same folder with the same separators (- / . _) form a group; a group is written
    as one pattern when the pattern's expansion is exactly the group, otherwise path by path.
    """
    groups: dict[tuple, list[list[str]]] = {}
    for path in dict.fromkeys(paths):
        parts = re.split(r"([-/._])", path)
        groups.setdefault((tuple(parts[1::2]), path.rpartition("/")[0]), []).append(parts)
    out = []
    for group in groups.values():
        columns = [list(dict.fromkeys(col)) for col in zip(*group)]
        if math.prod(len(col) for col in columns) != len(group):
            out += ["".join(parts) for parts in group]
            continue
        out.append("".join(col[0] if len(col) == 1 else "{" + ",".join(col) + "}" for col in columns))
    return out


def source_line(paths) -> str:
    return "Source: " + ", ".join(f"`{p}`" for p in brace_paths(paths)) + "."


def _paper(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _counts(prepare: Record, role: str) -> str:
    """'10 classes; train 10,000, val 2,000' from prepare.json's entry for `role`."""
    classes = prepare.get(role, "classes")
    entry = prepare.get(role)
    splits = ("trainval", "test") if role == "detection" else ("train", "val")
    sizes = [(split, entry[split].get("total", entry[split].get("images"))) for split in splits
             if isinstance(entry.get(split), dict)]
    return f"{classes} classes; " + ", ".join(f"{split} {n:,}" for split, n in sizes if isinstance(n, int))


def unverified(arch: str) -> str:
    """Why no number of a run of `arch` is set against the paper's ('' where the paper's are verified)."""
    network = network_of(arch)
    if network is None:
        return f"The paper has no `{arch}` row, so no number of this run is set against the paper's."
    if not verified(network):
        return (f"The paper's {NETWORK_NAMES[network]} numbers are not verified from a primary source here, so this "
                "run's numbers stand without a difference from the paper's.")
    return ""


def statement(idents: dict[str, tuple[str, str]], prepare: Record, ix: dict[tuple, Cell]) -> str:
    """What this run measured and whether its headline numbers can be set against the paper's."""
    used = "; ".join(f"{ROLE_NOUN[role]} `{name}` ({_counts(prepare, role)})" for role, (name, _) in idents.items())
    arches = "/".join(sorted({arch for _, arch in idents.values()}))
    network = network_of(idents["object"][1])
    backbone = (f"`{PAPER_ARCHS[network]}` for its {NETWORK_NAMES[network]} rows" if network else
                "ResNet-18, ResNet-50, AlexNet and VGG16")
    text = (f"This run used: {used}; backbone `{arches}`. The paper used ImageNet (object), Places205 "
            f"(transfer) and PASCAL VOC07 (detection) with {backbone}.")
    why = unverified(idents["object"][1])
    if why:
        text += " " + why
    rows = _headline_cells(ix)
    if why and rows and all(cell is not None and not cell.differences for _, _, cell in rows):
        return text + (f" Every headline number was produced with the paper's whole {NETWORK_NAMES[network]} "
                       "protocol; the remaining differences from the authors' code are listed under Deviations.")
    comparable = [f"{bench} ({model.upper()})" for bench, model, cell in rows
                  if cell is not None and cell.published is not None and not cell.differences]
    if rows and len(comparable) == len(rows):
        return text + (" Every headline number was produced with the paper's whole protocol (datasets and their "
                       "sizes, architecture, crop, epochs, readout and detection recipes) and is set against the "
                       "paper's; the remaining differences from the authors' code are listed under Deviations.")
    text += ("\n\n**Its numbers are NOT comparable with the paper's** except where a row says so: a number is "
             "compared only when the whole protocol that produced it (datasets and their sizes, architecture, crop, "
             "epochs of each pretraining stage, readout and detection recipes) is the paper's; \"Why not "
             "comparable\" lists what differs.")
    if comparable:
        text += " Comparable: " + ", ".join(comparable) + "."
    return text


def _headline_cells(ix: dict[tuple, Cell]) -> list[tuple[str, str, Cell | None]]:
    """(row label, model, cell) for the LA and IR cells of every headline row the paper's table has
    (its ResNet-50 numbers: the rows of every network's table)."""
    out = []
    for bench, role, task, layer, metric in HEADLINE:
        for model in ("la", "ir"):
            if paper_value(model, role, task, layer, metric) is not None:
                out.append((bench, model, ix.get((model, task, role, layer, metric))))
    return out


SHOWN_REASONS = 3


def _not_comparable(cell: Cell) -> str:
    return f" ({_reasons(cell.differences)})"


def _reasons(differences) -> str:
    """'not comparable: <the first SHOWN_REASONS differences>; and N more'."""
    shown = "; ".join(differences[:SHOWN_REASONS])
    more = len(differences) - SHOWN_REASONS
    return f"not comparable: {shown}{f'; and {more} more' if more > 0 else ''}"


METHODS = {"la": "Local Aggregation", "ir": "Instance Recognition", "random": "none (untrained)",
           "supervised": "supervised (labels)", PIXELS: "none (raw pixels)"}
# the zoo's numbers: (column, seeds.py metric name, how a model's cell is found)
ZOO_COLUMNS = ("kNN", "best layer", "conv5", "transfer: best layer", "detection AP50")
ZOO_METRICS = ("knn", "object_best", "object_conv5", "transfer_best", "AP50")  # stages.report.SWEEP_METRICS keys
GAPS = (("la", "ir"), ("la", "random"), ("supervised", "la"))
OBJECTIVES = {"ir": "IR", "la": "LA", "supervised": "supervised"}  # a provenance stage's name in the zoo


def _epochs(m: RunMetrics, model: str) -> str:
    """'IR 4 + LA 6' from the model's provenance (the stages that built it); an imported model's entry."""
    if model == PIXELS:
        return "—"
    if model in m.imported:
        epochs = (m.imported[model].get("entry", optional=True) or {}).get("epochs")
        return f"{epochs:,}" if isinstance(epochs, int) else "—"
    provenance = m.transfer[(model, "object")][0].get("provenance", optional=True) or []
    return " + ".join(f"{OBJECTIVES.get(s.get('objective'), s.get('objective'))} {s.get('epochs_done')}"
                      for s in provenance if s.get("objective") != "random") or "0"


def _zoo_cells(cells: list[Cell], ix: dict[tuple, Cell], model: str) -> list[Cell | None]:
    """The model's cells of ZOO_COLUMNS (best layers chosen as the baselines table does)."""
    knn_layer = PIXELS if model == PIXELS else "embedding"
    return [ix.get((model, "knn", "object", knn_layer, "top1")), best_layer(cells, model, "object"),
            ix.get((model, "linear", "object", "conv5", "top1")), best_layer(cells, model, "transfer"),
            ix.get((model, "detection", "detection", "", "AP50"))]


def zoo(m: RunMetrics, cells: list[Cell], ix: dict[tuple, Cell], idents: dict[str, tuple[str, str]]) -> str:
    """What this run shows, model-zoo style: a row per model (method, backbone, pretraining
    epochs, its headline numbers), then the gaps between LA and its neighbours, each said to be
    within or outside the pretraining-seed noise where a seed sweep measured it (seeds.py)."""
    models = baseline_order(models_in(cells) + (PIXELS,))
    rows, sources, found = [], [], {}
    for model in models:
        zc = _zoo_cells(cells, ix, model)
        found[model] = zc
        sources += [p for c in zc if c is not None for p in c.sources]
        texts = [fmt(c.stat) + (f" ({c.layer})" if i in (1, 3) and c.layer != PIXELS else "") if c else "—"
                 for i, c in enumerate(zc)]
        method = METHODS.get(model) or str((m.imported[model].get("entry", optional=True) or {}).get("method")
                                           or "imported")
        arch = "—" if model == PIXELS else (zc[2] or zc[1]).arch if (zc[2] or zc[1]) else "—"
        rows.append([f"**{label(model)}**", method, arch, _epochs(m, model), *texts])
    obj, trans = idents["object"][0], idents["transfer"][0]
    n = max(c.stat.n for c in cells if c.task == "linear")
    text = ("## This run's models\n\n"
            f"kNN (top-1 of the embedding), best layer and conv5 (linear top-1, centre crop) on the object set "
            f"`{obj}`; the best layer on the transfer set `{trans}`; "
            + (f"detection AP50 on `{idents['detection'][0]}`. " if "detection" in idents else
               "no detection (detection.seeds: []). ") +
            f"Mean ± sample std over the {n} readout seed(s): the ± does not cover pretraining seeds.\n\n"
            + table(["model", "method", "backbone", "pretraining epochs", *ZOO_COLUMNS], rows) + "\n\n"
            + source_line(sources))
    sweep = m.seed_sweep.data if m.seed_sweep is not None else None
    stale = (sweep or {}).get("differs") or []
    if stale:
        sweep = None
    gap_rows = []
    for a, b in GAPS:
        if a not in found or b not in found:
            continue
        row = [f"{label(a)} − {label(b)}"]
        for name, ca, cb in zip(ZOO_METRICS, found[a], found[b]):
            if ca is None or cb is None:
                row.append("—")
                continue
            gap = ca.stat.mean - cb.stat.mean
            noise = seeds.gap_noise(sweep, f"{a}_{name}", f"{b}_{name}") if sweep else None
            row.append(f"{gap:+.2f}" + (f" ({seeds.verdict(gap, noise)})" if sweep else ""))
        gap_rows.append(row)
    if sweep:
        how = (f"Pretraining noise: the sample std of each gap over the {len(sweep.get('runs', []))} runs of the "
               f"pretraining-seed sweep in `{m.seed_sweep.path}` (`localagg sweep seeds`); a gap is outside it when "
               f"it exceeds {seeds.OUTSIDE:g} standard deviations.")
    elif stale:
        shown = ", ".join(f"`{k}`" for k in stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        how = (f"Pretraining noise: **not measured for these params**: the sweep in `{m.seed_sweep.path}` ran with "
               f"other values of {shown}, so its spread is not this run's. Measure it again: `localagg sweep seeds "
               "1 2`, then `localagg report --compare` and `dvc repro report`.")
    else:
        how = ("Pretraining noise: **not measured** for this run (its pretraining ran one seed), so none of these "
               "gaps is shown to exceed it, and the readout-seed ± does not bound it. Measure it: `localagg sweep "
               "seeds 1 2`, then `localagg report --compare` and `dvc repro report`; each gap then says whether it "
               "lies within or outside that noise.")
    return text + "\n\nGaps (differences of the means):\n\n" + table(["gap", *ZOO_COLUMNS], gap_rows) + "\n\n" + how


def _column(bench: str, model: str) -> str:
    """A headline cell's short name: 'LA, ImageNet conv5 centre crop'."""
    short = bench.replace(" linear top-1,", "").replace(", ", " ").replace("VOC07 test detection ", "VOC07 ")
    return f"{model.upper()}, {short}"


def headline(ix: dict[tuple, Cell], arch: str) -> str:
    """The paper's headline table for the network of `arch`, one line per benchmark: the paper's LA
    and IR numbers and, for this run, each comparable number with its difference from the paper's;
    a number measured under another protocol is shown with what differs only where its dataset is
    the benchmark's (elsewhere it is another quantity: the tables below have it), else the count
    of differences. Where the paper's numbers for the network are not verified (or it has no such
    row), the table has this run's numbers only, without a difference, and says so."""
    network = network_of(arch)
    shown = verified(network)
    rows, sources = [], []
    for bench, role, task, layer, metric in HEADLINE:
        ours = []
        for model in ("la", "ir"):
            if paper_value(model, role, task, layer, metric) is None:  # not a row of the paper's table
                continue
            paper = paper_value(model, role, task, layer, metric, network)
            cell = ix.get((model, task, role, layer, metric))
            if cell is None:
                ours.append(f"{model.upper()} not measured" + (" (ten_crop: false)" if metric.endswith("10crop") else ""))
                continue
            sources += cell.sources
            value = fmt(cell.stat, with_n=True)
            if not cell.differences:
                ours.append(f"{model.upper()} {value}"
                            + (f" ({cell.stat.mean - paper:+.2f} from the paper's)" if paper is not None else ""))
            elif not any(d.key.endswith("dataset") for d in cell.differences):
                ours.append(f"{model.upper()} {value} ({_reasons(cell.differences)})")
            else:
                ours.append((model.upper(), len(cell.differences)))
        counted = [o for o in ours if isinstance(o, tuple)]
        said = [o for o in ours if isinstance(o, str)]
        if counted:
            said.append("not comparable (" + ", ".join(f"{name}: {n} differences" for name, n in counted)
                        + "; see \"Why not comparable\")")
        papers = [_paper(paper_value(m, role, task, layer, metric, network)) for m in ("la", "ir")] if shown else []
        rows.append([bench, *papers, "; ".join(said)])
    name = NETWORK_NAMES[network] if network else arch
    if shown:
        return (f"## The paper's table\n\nThe paper's {name} numbers. This run's number stands beside one only where "
                "it measured the same benchmark; its difference from the paper's is given only where the whole "
                "protocol was the paper's.\n\n"
                + table([f"benchmark (paper, {name})", "paper LA", "paper IR", "this run"], rows)
                + "\n\n" + source_line(sources))
    return (f"## The paper's table\n\n{unverified(arch)} This run's numbers on the paper's benchmarks, each with "
            f"what differs from the paper's {name} protocol where anything does.\n\n"
            + table([f"benchmark ({name})", "this run"], rows) + "\n\n" + source_line(sources))


def why_not(ix: dict[tuple, Cell]) -> str:
    """Every difference from the paper's protocol as one table: a row per key, a column per
    headline number (its value in this run where it differs; blank where it is the paper's)."""
    merged: dict[tuple, tuple[str, list[str], Cell]] = {}  # headline numbers with the same differences: one column
    for bench, model, cell in _headline_cells(ix):
        if cell is not None and cell.differences:
            key = (model, tuple((d.key, d.found, d.paper) for d in cell.differences))
            merged.setdefault(key, (model, [], cell))[1].append(_column(bench, model).split(", ", 1)[1])
    columns = [(f"{model.upper()}: {', '.join(benches)}", cell) for model, benches, cell in merged.values()]
    if not columns:
        return ""
    found: dict[str, dict[int, str]] = {}
    papers: dict[str, set[str]] = {}
    for i, (_, cell) in enumerate(columns):
        for d in cell.differences:
            found.setdefault(d.key, {})[i] = d.found
            papers.setdefault(d.key, set()).add(d.paper)
    rows = []
    for key, values in found.items():
        paper = next(iter(papers[key])) if len(papers[key]) == 1 else None
        row = [f"`{key}`" if "." in key else key, paper if paper is not None else "(per column)"]
        for i, (_, cell) in enumerate(columns):
            if i not in values:
                row.append("")
                continue
            theirs = next(d.paper for d in cell.differences if d.key == key)
            row.append(values[i] if paper is not None else f"{values[i]} (paper {theirs})")
        rows.append(row)
    return ("## Why not comparable\n\nWhat differs from the paper's protocol (its network's recipe, paper.NETWORKS, and "
            "the datasets' released "
            "sizes), read from the records' `protocol` and `provenance`: one row per key, this run's value in each "
            "headline number's column where it differs (blank: the paper's value).\n\n"
            + table(["key", "paper", *(name for name, _ in columns)], rows))


def _preset(arch: str) -> str:
    """The paper preset that builds `arch` (paper-resnet50 for a network the paper has no row for)."""
    return next((name for name, (_, built) in PRESETS.items() if built == arch), "paper-resnet50")


def deviations(ix: dict[tuple, Cell], arch: str) -> str:
    """What departs from the authors' code even with the whole recipe of the network of `arch`;
    the opening says whether this run had that recipe (no headline number with a difference) or not."""
    rows = [cell for _, _, cell in _headline_cells(ix)]
    command = f"`localagg preset apply {_preset(arch)}`"
    if rows and all(cell is not None and not cell.differences for cell in rows):
        opening = (f"This run used every key of the paper's recipe ({command}); these differences from the authors' "
                   "code remain:")
    else:
        opening = ("This run did not use the paper's whole recipe (see \"Why not comparable\"). Even with it "
                   f"({command}), these differences from the authors' code remain:")
    return ("## Deviations from the authors' code\n\n" + opening + "\n\n"
            + "\n".join(f"- {d}" for d in paper_deviations(arch)))


def _n_header(ix, task, role, layer, metric) -> list[str]:
    out = []
    for model in models_in(ix):
        cell = ix.get((model, task, role, layer, metric))
        out.append(f"{model} (n={cell.stat.n})" if cell and cell.stat.n > 1 else model)
    return out


def readout(ix: dict[tuple, Cell], idents: dict[str, tuple[str, str]], m: RunMetrics) -> str:
    """Per-layer linear readout top-1, one table per dataset, models as columns; the paper's LA and
    IR numbers beside them where this run's are comparable."""
    parts = ["## Linear readout per layer (top-1)"]
    for role in ROLES:
        name, arch = idents[role]
        rows, sources = [], []
        comparable = any(c.paper is not None for c in ix.values() if c.role == role and c.task == "linear")
        for layer in LAYERS:
            for metric, crop in (("top1", "centre"), ("top1_10crop", "10-crop")):
                cells = [ix.get((model, "linear", role, layer, metric)) for model in models_in(ix)]
                if not any(cells):
                    continue
                sources += [p for c in cells if c for p in c.sources]
                row = [layer, crop] + [fmt(c.stat if c else None) for c in cells]
                if comparable:
                    row += [_paper(c.paper if c else None) for c in cells[:2]]
                rows.append(row)
        header = ["layer", "crop", *_n_header(ix, "linear", role, "conv5", "top1")]
        header += ["paper LA", "paper IR"] if comparable else []
        parts.append(f"### {ROLE_NOUN[role]} `{name}` ({arch})\n\n{table(header, rows)}\n\n{source_line(sources)}")
    diverged = _readout_diverged(m)
    if diverged:
        parts.append("**Diverged readouts** (final training loss more than twice the first epoch's; their accuracies "
                     "above are of a classifier that did not train): " + "; ".join(diverged) + ".")
    return "\n\n".join(parts)


def _readout_diverged(m: RunMetrics) -> list[str]:
    out = []
    for (model, role), records in m.transfer.items():
        for r in records:
            for layer, pair in sorted((r.data.get("losses") or {}).items()):
                first, final = pair
                if not (final == final and abs(final) != float("inf")) or final > 2 * first > 0:
                    out.append(f"{model} {ROLE_NOUN[role]} seed {r.data.get('seed')} {layer}: {final:.4g} "
                               f"(first epoch {first:.4g})")
    return out


def knn(ix: dict[tuple, Cell], idents: dict[str, tuple[str, str]], m: RunMetrics) -> str:
    """kNN top-1 on the embedding and conv5, per dataset, models as columns, raw pixels first."""
    rows, sources = [], []
    for role in ROLES:
        pixels = ix[(PIXELS, "knn", role, PIXELS, "top1")]
        sources += pixels.sources
        for layer in KNN_LAYERS:
            cells = [ix[(model, "knn", role, layer, "top1")] for model in models_in(ix)]
            sources += [p for c in cells for p in c.sources]
            rows.append([f"`{idents[role][0]}`", layer, fmt(pixels.stat)] + [fmt(c.stat) for c in cells])
    ks = sorted({int(r.number("knn_k")) for recs in m.transfer.values() for r in recs})
    header = ["dataset", "features", "raw pixels", *models_in(ix)]
    return (f"## kNN top-1 (k = {', '.join(map(str, ks))})\n\nWeights exp(similarity / temperature); the raw-pixel "
            "column uses the centred, L2-normalised pixels (one number per dataset). kNN is deterministic: the "
            "readout seeds do not move it.\n\n" + table(header, rows) + "\n\n" + source_line(sources))


def baselines(cells: list[Cell], ix: dict[tuple, Cell], idents: dict[str, tuple[str, str]]) -> str:
    """Where the learned features stand between nothing learned (raw pixels, the random network)
    and labels used (the supervised reference), per dataset."""
    rows, sources = [], []
    for role in ROLES:
        name = f"`{idents[role][0]}`"
        knn_row, best_row, conv5_row = [name, "kNN top-1"], ["", "best linear layer (centre crop)"], \
            ["", "conv5 linear (centre crop)"]
        for model in baseline_order(models_in(cells)):
            knn_cell = ix[(model, "knn", role, PIXELS if model == PIXELS else "embedding", "top1")]
            best = best_layer(cells, model, role)
            conv5 = ix.get((model, "linear", role, "conv5", "top1"))
            knn_row.append(fmt(knn_cell.stat))
            best_row.append(f"{fmt(best.stat)} ({best.layer})" if best else "n/a")
            conv5_row.append(fmt(conv5.stat) if conv5 else "—")
            sources += knn_cell.sources + (best.sources if best else ())
        rows += [knn_row, best_row, conv5_row]
    n = max(c.stat.n for c in cells if c.task == "linear")
    header = ["dataset", "measure", *(label(m) for m in baseline_order(models_in(cells)))]
    return ("## Where the learned features stand\n\nFrom nothing learned (raw pixels, the untrained network) to labels "
            "used (the supervised reference). kNN uses the embedding (the pixels for the pixel baseline); the best "
            f"layer is the one with the highest mean top-1 over the {n} readout seed(s) (mean ± sample std over "
            "seeds).\n\n" + table(header, rows) + "\n\n" + source_line(sources))


def detection(ix: dict[tuple, Cell], ident: tuple[str, str] | None, m: RunMetrics) -> str:
    """Detection AP50/AP/AP75 per model, with the sets it trained and tested on (`ident` None: the
    run had no detection cells)."""
    if ident is None:
        return ("## Detection\n\nNo detection cells ran (detection.seeds: []): the detector is Faster R-CNN C4 on a "
                "ResNet, and the paper fine-tunes detection on ResNet-50 only.")
    name, arch = ident
    protocol = m.detection["la"][0].get("protocol", optional=True) or {}
    comparable = any(c.paper is not None for c in ix.values() if c.task == "detection")
    rows, sources = [], []
    for model in m.models:
        cells = [ix[(model, "detection", "detection", "", metric)] for metric in ("AP50", "AP", "AP75")]
        sources += [p for c in cells for p in c.sources]
        row = [model, str(cells[0].stat.n)] + [fmt(c.stat) for c in cells]
        rows.append(row + ([_paper(cells[0].paper)] if comparable else []))
    header = ["model", "seeds", "AP50", "AP", "AP75"] + (["paper AP50"] if comparable else [])
    split_of = (lambda sets: set_name(sets)) if name in ("voc07", "voc") else (
        lambda sets: f"the {' + '.join(p[1] for p in sets or ())} split of `{name}`")
    sets = (f"Trained on {split_of(protocol.get('train_sets'))} ({protocol.get('train_images', 0):,} images), tested on "
            f"{split_of(protocol.get('test_sets'))} ({protocol.get('test_images', 0):,} images), "
            f"{protocol.get('max_iter', 0):,} iterations of {protocol.get('ims_per_batch', 0)} images. The paper "
            f"fine-tuned on {set_name(DETECTION_SETS['train'])} only; the community protocol (MoCo, VISSL) trains on "
            f"VOC07+12 trainval, and the two are never subtracted from each other.")
    recipe_iters = RECIPE["detection.max_iter"][0]
    if not comparable and protocol.get("max_iter", 0) < recipe_iters / 10:
        sets += (f" At {protocol.get('max_iter', 0):,} iterations ({recipe_iters:,} in the recipe) on "
                 f"{protocol.get('train_images', 0):,} images, this run shows that the stage runs end to end, not which "
                 "backbone detects better.")
    return (f"## Detection on `{name}` (Faster R-CNN C4, {arch} backbone)\n\n{sets}\n\n" + table(header, rows)
            + "\n\n" + source_line(sources))


def _published_differences(m: RunMetrics, model: str, task: str, role: str) -> list[str]:
    """How this run's evaluation of `model` differs from the protocol the recipe names (the LA
    paper's readout and kNN on the full datasets; VISSL's Detectron2 VOC07 schedule): a
    published number is subtracted only where there is no difference."""
    found: list[str] = []
    if task == "detection":
        for r in m.detection[model]:
            found += comparability.detection_protocol_differences(str(r.get("dataset_name")),
                                                                   r.get("protocol", optional=True) or {})
    else:
        for r in m.transfer[(model, role)]:
            protocol = r.get("protocol", optional=True) or {}
            found += (comparability.readout_differences(role, protocol) if task == "linear"
                      else comparability.knn_differences(role, protocol))
    return list(dict.fromkeys(found))


def imported(m: RunMetrics, cells: list[Cell], ix: dict[tuple, Cell]) -> str:
    """The imported models (the params' `external` entries): what each file was, and its
    published numbers beside this run's."""
    if not m.imported:
        return ""
    rows, published = [], []
    for name, r in m.imported.items():
        entry = r.get("entry", optional=True) or {}
        source = str(r.get("source", optional=True) or "")
        epochs = entry.get("epochs")
        rows.append([f"`{name}`", entry.get("method") or "—", f"{epochs:,}" if isinstance(epochs, int) else "—",
                     str(r.get("format", optional=True)), f"`{source.rsplit('/', 1)[-1]}` "
                     f"(sha256 {str(r.get('source_sha256', optional=True) or '')[:12]})",
                     str(r.get("embedding", optional=True) or "")])
        for key, value in sorted((entry.get("published") or {}).items()):
            task, role, layer = PUBLISHED_CELLS[key]
            cell = best_layer(cells, name, role) if layer is None else ix.get((name, task, role, layer,
                                                                                "AP50" if task == "detection" else "top1"))
            if cell is None:
                continue
            diffs = _published_differences(m, name, task, role)
            ours = fmt(cell.stat, with_n=True) + (f" ({cell.layer})" if layer is None else "")
            gap = f"{cell.stat.mean - value:+.2f}" if not diffs else _reasons(diffs)
            published.append([f"`{name}`", key, f"{value:.2f}", ours, gap])
    text = ("## Imported models\n\nCheckpoints trained elsewhere (the params' `external` entries), converted by "
            "`import@<name>` and evaluated by the same cells as LA; each is a column of the tables above.\n\n"
            + table(["model", "method", "epochs", "format", "file", "embedding"], rows) + "\n\n"
            + source_line([r.path for r in m.imported.values()]))
    if published:
        text += ("\n\nTheir published numbers, as the entries give them, beside this run's. The difference is given "
                 "only where this run evaluated with the protocol the recipe names (the paper's readout and kNN on "
                 "the full datasets; the VOC07 Detectron2 schedule for detection); that the published number came "
                 "from the same protocol is the entry's to say.\n\n"
                 + table(["model", "published as", "published", "this run", "this run − published"], published))
    return text


CLUSTER_STATS = {  # record key -> (label, format): LA's clustering, averaged over the H k-means runs
    "final_cluster_nmi": ("NMI with the true classes", lambda v: f"{v:.3f}"),
    "final_cluster_purity": ("purity (share of each cluster's majority class)", lambda v: f"{100 * v:.1f}%"),
    "final_cluster_num_nonempty_clusters": ("clusters with members", lambda v: f"{v:,.0f}"),
    "final_cluster_singleton_fraction": ("clusters of one image", lambda v: f"{100 * v:.1f}%"),
    "final_cluster_size_min": ("smallest cluster (images)", lambda v: f"{v:,.1f}"),
    "final_cluster_size_median": ("median cluster (images)", lambda v: f"{v:,.1f}"),
    "final_cluster_size_max": ("largest cluster (images)", lambda v: f"{v:,.1f}"),
    "final_kmeans_seconds": ("time of the H k-means runs", lambda v: f"{v:.2f} s"),
}


def _diverged(m: RunMetrics) -> list[str]:
    """Pretraining stages whose final loss grew to more than twice their first epoch's (a
    non-finite loss stops training before anything is exported)."""
    out = []
    for model, r in m.pretrain.items():
        final = r.number("final_loss")
        history = r.data.get("history") or []
        first = history[0].get("loss") if history else None
        if isinstance(first, (int, float)) and first > 0 and final > 2 * first:
            out.append(f"{model}'s final loss {final:.4g} is more than twice its first epoch's ({first:.4g})")
    return out


def pretraining(m: RunMetrics) -> str:
    """Pretraining summary (epochs, kNN top-1 at start and end, final loss) and LA's cluster statistics."""
    rows = []
    for model, r in m.pretrain.items():
        rows.append([model, f"`{r.stage}`", str(int(r.number("epochs"))), f"{r.number('knn_top1_init'):.2f}",
                     f"{r.number('final_knn_top1'):.2f}", f"{r.number('final_loss'):.4f}"])
    header = ["model", "stage", "epochs", "kNN top-1 at start", "kNN top-1 at end", "final loss"]
    la = m.pretrain["la"]
    stats = [[label, fmt_stat(la.number(key))] for key, (label, fmt_stat) in CLUSTER_STATS.items() if key in la.data]
    text = ("## Pretraining\n\nkNN top-1 on the object set's held-out split. \"At start\": before the first epoch, "
            "with fresh features of the network the stage starts from (LA: IR's). \"At end\": after the last epoch, "
            "against the memory bank as InstDisc's monitor does (pooled conv5 of the training images for the "
            "supervised reference). The bank lags the network while it trains, so the end numbers run below the kNN "
            "table's, which uses fresh features of the final network.\n\n" + table(header, rows) + "\n\n"
            + source_line(r.path for r in m.pretrain.values()))
    diverged = _diverged(m)
    if diverged:
        text = text.replace("\n\n" + table(header, rows), "\n\n**Diverged:** " + "; ".join(diverged) + ".\n\n"
                            + table(header, rows), 1)
    if stats:
        text += ("\n\nLA's clustering after the last epoch (averaged over the H k-means runs):\n\n"
                 + table(["statistic", "value"], stats) + "\n\n" + source_line([la.path]))
    return text


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def cost(m: RunMetrics) -> str:
    """Wall time and peak memory per stage from each file's optional `cost` key ('n/a' when absent).

    Pretraining files also carry `cost.train_seconds`, the epochs' time summed over every run
    that built the model: a stage that resumed a finished checkpoint has a short wall time.
    """
    rows = []
    for r in m.records():
        if r.get("cost", optional=True) is None:
            rows.append([f"`{r.stage}`", f"`{r.path}`", "n/a", "n/a", "n/a", "n/a"])
            continue
        gpu = r.get("cost", "peak_gpu_mb")
        train = r.get("cost", "train_seconds", optional=True)
        rows.append([f"`{r.stage}`", f"`{r.path}`", _duration(r.number("cost", "wall_seconds")),
                     "" if train is None else _duration(r.number("cost", "train_seconds")),
                     f"{r.number('cost', 'peak_rss_mb'):,.0f} MB",
                     "n/a" if gpu is None else f"{r.number('cost', 'peak_gpu_mb'):,.0f} MB"])
    return ("## Cost\n\n" + table(["stage", "metrics file", "wall time (this run)", "training time (all runs)",
                                    "peak RSS", "peak GPU memory"], rows)
            + "\n\nSource: the `cost` key of each metrics file listed. Training time is the pretraining epochs' "
              "time summed over the runs that built the model (a rerun that resumes a finished checkpoint "
              "takes seconds).")


FIGURE_TEXT = {
    "readout": ("Linear readout top-1 per layer",
                "Look for where each model's curve peaks and how far it stands above the raw pixels (dotted) "
                "and the random network (grey)."),
    "pretraining": ("Pretraining curves",
                    "Loss and kNN top-1 per epoch of each training (epoch 0: the untrained network's kNN); LA continues "
                    "from IR's last epoch; each loss has its own axis."),
    "per_class": ("Readout top-1 per class",
                  "Each row: one model's readout at its best layer, top-1 per class (mean over the readout seeds)."),
    "retrieval": ("Nearest neighbours of fixed queries",
                  "Each row: a validation query and its nearest training images under one model (green border: "
                  "the query's class; red: another)."),
    "maps": ("t-SNE maps of the embeddings",
             "Each panel: one model's validation embeddings, coloured by class (t-SNE keeps neighbourhoods, not "
             "distances between groups)."),
    "clusters": ("LA's clusters",
                 "Look for what a pure cluster gathers (one class across positions and sizes) and what an impure "
                 "one confuses."),
    "detection": ("Detection AP per model", "AP50, AP and AP75 of each backbone's detector (error bars: sample std over "
                                            "seeds, where there are several)."),
    "detections": ("Detections on test images",
                   "Look for boxes that find the dashed objects, and for the class names on them."),
}


def figures(figs: dict[str, str], m: RunMetrics, ix: dict[tuple, Cell], facts: dict[str, str] | None = None) -> str:
    """The figures (paths relative to results.md), each with what it shows, what its numbers are
    in this run (`facts`: a sentence per figure, computed from the data drawn) and its sources."""
    facts = dict(facts or {})
    facts.setdefault("detection", detection_facts(ix))
    transfer = [p for c in ix.values() if c.task == "linear" and c.metric.startswith("top1") for p in c.sources]
    detect = [p for c in ix.values() if c.task == "detection" for p in c.sources]
    sources = {
        "readout": transfer, "per_class": transfer,
        "pretraining": [r.path for r in m.pretrain.values()],
        "retrieval": [r.path for (model, role), recs in m.transfer.items() if role == "object" for r in recs[:1]],
        "clusters": [m.pretrain["la"].path], "detection": detect,
        "detections": [m.detection["la"][0].path] if m.detection["la"] else [],
    }
    sources["maps"] = sources["retrieval"]
    parts = ["## Figures"]
    for name, (title, look) in FIGURE_TEXT.items():
        if name in figs:
            fact = f"{facts[name]} " if facts.get(name) else ""
            parts.append(f"### {title}\n\n![{title}]({figs[name]})\n\n{look} {fact}" + source_line(sources[name]))
    return "\n\n".join(parts)


def detection_facts(ix: dict[tuple, Cell]) -> str:
    """'AP50 in this run: LA 2.80, IR 4.08, ... (1 seed each).' from the detection cells."""
    found = [(model, ix.get((model, "detection", "detection", "", "AP50"))) for model in models_in(ix)]
    found = [(model, c) for model, c in found if c is not None and c.stat.n]
    if not found:
        return ""
    seeds = sorted({c.stat.n for _, c in found})
    return ("AP50 in this run: " + ", ".join(f"{label(model)} {c.stat.mean:.2f}" for model, c in found)
            + f" ({' or '.join(map(str, seeds))} seed(s) each).")


def retrieval_facts(counts: dict[str, tuple[int, int]]) -> str:
    """'Neighbours of the query's class over the queries shown: LA 13 of 32, ...' from the figure's counts."""
    if not counts:
        return ""
    return ("Neighbours of the query's class over the queries shown: "
            + ", ".join(f"{label(model)} {same} of {total}" for model, (same, total) in counts.items()) + ".")


def per_class_facts(per_class: dict[str, tuple[str, list[float]]], classes) -> str:
    """'Lowest class per model: LA: shirt 41.0% at conv5; ...' from the figure's values."""
    parts = []
    for model, (layer, values) in per_class.items():
        if values:
            i = min(range(len(values)), key=values.__getitem__)
            parts.append(f"{label(model)}: {classes[i] if classes and i < len(classes) else i} {values[i]:.1f}% at {layer}")
    return ("Lowest class per model: " + "; ".join(parts) + ".") if parts else ""


def sources(m: RunMetrics) -> str:
    lines = [f"- `{r.path}` (stage `{r.stage}`)" for r in m.records()]
    return "## Sources\n\nEvery number above comes from these files:\n\n" + "\n".join(lines)


def render(m: RunMetrics, cells: list[Cell], figs: dict[str, str], facts: dict[str, str] | None = None) -> str:
    """The whole results.md. `figs` maps readout, pretraining, detection to paths relative to it."""
    ix = {c.key: c for c in cells}
    idents = {c.role: (c.dataset, c.arch) for c in cells if c.model != PIXELS}
    parts = ["# Local Aggregation reproduction: results", statement(idents, m.prepare, ix), zoo(m, cells, ix, idents),
             headline(ix, idents["object"][1]), why_not(ix), HOW_TO_READ, baselines(cells, ix, idents), readout(ix, idents, m), knn(ix, idents, m),
             detection(ix, idents.get("detection"), m), imported(m, cells, ix), pretraining(m), deviations(ix, idents["object"][1]), cost(m), figures(figs, m, ix, facts),
             sources(m)]
    return "\n\n".join(p for p in parts if p) + "\n"
