"""`localagg import`: one published checkpoint converted into the pipeline's model format.

Reads the file without running it (runtime.untrusted), finds its layout (models.foreign), loads
its ResNet trunk strictly and writes an export (`models/<name>.pt` by default) whose provenance
says where it came from: the source path and SHA-256, the format, how many trunk tensors were
mapped, what the embedding is (the file's linear head, or the pooled conv5 feature), what was
dropped and which pickled classes were replaced by placeholders. The evaluations read it like
any trained model.
"""

from __future__ import annotations

from pathlib import Path

from localagg.io import file_sha256


def import_checkpoint(path: Path, arch: str, stem: str = "imagenet", embedding_dim: int = 128, fmt: str = "auto",
                      out: Path | None = None, name: str | None = None) -> dict:
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
