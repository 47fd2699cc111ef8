"""`localagg import`: one published checkpoint converted into the pipeline's model format.

Reads the file without running it (runtime.untrusted), finds its layout (models.foreign), loads
its ResNet trunk strictly (the authors' TensorFlow checkpoints, format tf-la: models.tf_checkpoint,
with their memory bank) and writes an export (`models/<name>.pt` by default) whose provenance
says where it came from: the source path and SHA-256, the format, how many trunk tensors were
mapped, what the embedding is (the file's linear head, or the pooled conv5 feature), what was
dropped and which pickled classes were replaced by placeholders. The evaluations read it like
any trained model.

`run_entry` is the DVC stage `import@<name>` of each entry of the `external` params section:
the same conversion into models/<name>.pt, with the `model` section's architecture, and
records/import/<name>.json (what was found, and the entry's method, epochs, notes and published
numbers, which the report prints beside this run's).
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

from localagg.errors import UserError
from localagg.io import file_sha256

log = logging.getLogger(__name__)


def import_checkpoint(path: Path, arch: str, stem: str = "imagenet", embedding_dim: int = 128, fmt: str = "auto",
                      out: Path | None = None, name: str | None = None) -> dict:
    from localagg.models import tf_checkpoint as tfc

    if fmt == tfc.TF_FORMAT or (fmt == "auto" and tfc.is_tf_checkpoint(path)):
        return _import_tf(Path(path), arch, stem, out, name)
    from localagg.models.foreign import convert, detect, extract
    from localagg.runtime.checkpoint import save_export
    from localagg.runtime.untrusted import read_untrusted

    read = read_untrusted(path, "checkpoint to import")
    fmt = detect(read.state) if fmt == "auto" else fmt
    found = extract(read.state, fmt)
    done = convert(found, arch, stem, embedding_dim, source=str(path))
    name = name or path.stem
    out = out or Path("models") / f"{name}.pt"
    info = {"objective": "imported", "name": name, "source": str(path), "source_sha256": file_sha256(path),
            "format": fmt, "trunk_tensors": done.mapped, "embedding": done.head, "dropped": found.dropped,
            "replaced_classes": read.opaque, **done.model.meta(), "epochs_done": None}
    save_export(out, done.model.float(), "imported", provenance=[info])
    return {**info, "out": str(out)}


AUTHORS_ORDER = ("the authors' order: rows follow their ImageNet tfrecords (dataset_miscs/build_tfrs.py), not this "
                 "pipeline's image order")


def _import_tf(path: Path, arch: str, stem: str, out: Path | None, name: str | None) -> dict:
    """The authors' TF checkpoint (models/tf_checkpoint.py) as an export with its memory bank.

    The bank's rows are in the authors' image order, so its `dataset` names that order and no
    digest: an LA warm start from it is refused (the pipeline's dataset digest never matches)."""
    from localagg.models import tf_checkpoint as tfc
    from localagg.runtime.checkpoint import save_export

    with tfc.checkpoint_prefix(path) as prefix:
        variables = tfc.read_variables(prefix, str(path))
        hashed = path if path.is_file() else Path(str(prefix) + ".index")
        sha = file_sha256(hashed)
    found = tfc.split(variables, str(path))
    done = tfc.convert(found, arch, stem, source=str(path))
    name = name or re.sub(r"(\.index|\.tar|\.data-\d+-of-\d+)$", "", path.name)
    out = out or Path("models") / f"{name}.pt"
    bank = done.bank
    info = {"objective": "imported", "name": name, "source": str(path), "source_sha256": sha,
            "source_hashed": hashed.name, "format": tfc.TF_FORMAT, "trunk_tensors": done.mapped,
            "embedding": done.head, "dropped": found.dropped, "replaced_classes": [],
            "bank": None if bank is None else {"rows": bank.shape[0], "dim": bank.shape[1], "order": AUTHORS_ORDER},
            **done.model.meta(), "epochs_done": None}
    dataset = None if bank is None else {"name": "imagenet (the authors' tfrecords)", "num_items": bank.shape[0],
                                         "digest": None, "order": AUTHORS_ORDER}
    save_export(out, done.model.float(), "imported", bank=bank, dataset=dataset, provenance=[info])
    return {**info, "out": str(out)}


def record_of(name: str) -> Path:
    """records/import/<name>.json: what `import@<name>` found and the entry's own words."""
    return Path("records") / "import" / f"{name}.json"


def run_entry(name: str, params: Path) -> dict:
    """The stage `import@<name>`: the `external.<name>` checkpoint as models/<name>.pt."""
    from localagg.io import write_json

    from .common import measure_cost, run_environment, wrote
    from .params import load_section

    external = load_section(params, "external")
    if name not in external.root:
        listed = ", ".join(external.names()) or "none"
        raise UserError(f"{params}: external has no entry {name!r} (entries: {listed}); add it under `external:`.")
    entry = external.root[name]
    model_cfg = load_section(params, "model")
    problems = entry_problems(name, entry, model_cfg)
    if problems:
        raise UserError(f"{params}: {problems[0]}.")
    source = Path(entry.path).expanduser()
    with measure_cost() as cost:
        info = import_checkpoint(source, model_cfg.arch, model_cfg.stem, model_cfg.embedding_dim, entry.format,
                                 out=Path("models") / f"{name}.pt", name=name)
    record = {**info, "model": name, "entry": entry.model_dump(mode="json"), "cost": cost,
              "environment": run_environment()}
    write_json(record_of(name), record)
    log.info("import %s: %s", name, wrote(info["out"], record_of(name)))
    return record


def entry_problems(name: str, entry, model_cfg) -> list[str]:
    """What stops `import@<name>` before it reads the file: a path that is no file, an arch
    that is not the run's `model.arch` (every model of a run is evaluated with one `model`)."""
    out = []
    if entry.arch is not None and entry.arch != model_cfg.arch:
        out.append(f"external.{name}.arch is {entry.arch}, but the evaluations read model.arch = {model_cfg.arch}: "
                   f"every model of a run is evaluated with one `model` section. Evaluate it in a run with "
                   f"model.arch: {entry.arch} (e.g. `dvc exp run -S model.arch={entry.arch}`), or remove the entry's arch")
    source = Path(entry.path).expanduser()
    if not source.is_file():
        out.append(f"external.{name}.path {entry.path} is not a file"
                   f"{' (a relative path starts at the repository)' if not source.is_absolute() else ''}")
    elif entry.format in ("auto", "tf-la") and importlib.util.find_spec("tensorflow") is None:
        from localagg.models import tf_checkpoint as tfc

        if entry.format == tfc.TF_FORMAT or tfc.is_tf_checkpoint(source):
            out.append(f"external.{name}.path {entry.path} is a TensorFlow checkpoint, and reading it needs the "
                       f"optional extra `tf`: {tfc.INSTALL}")
    return out


def check_entries(sections: dict) -> list[str]:
    """For `localagg check`: every entry's problems (entry_problems)."""
    external, model_cfg = sections.get("external"), sections.get("model")
    if external is None or model_cfg is None:
        return []
    return [p for name, entry in external.root.items() for p in entry_problems(name, entry, model_cfg)]
