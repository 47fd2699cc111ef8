"""Presets: partial params files in presets/ that `localagg preset apply` merges into params.yaml.

A preset holds only the keys it changes (the paper's scale: ResNet-50 on ImageNet,
Places205 and VOC). Applying deep-merges it into the params file, keeps the file's comments
and order (ruamel.yaml round trip), validates the result, and writes it atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from localagg.errors import UserError
from localagg.io import write_text

from .params import validate_all

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


def available() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.yaml"))}


def preset_path(name: str) -> Path:
    presets = available()
    if name not in presets:
        raise UserError(f"unknown preset {name!r}; available: {', '.join(presets) or 'none'} (in {PRESET_DIR}).")
    return presets[name]


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 100
    return y


def _merge(base: Any, over: Any) -> Any:
    """Deep-merge `over` into `base` (mappings merge, everything else is replaced)."""
    if isinstance(base, dict) and isinstance(over, dict):
        for key, value in over.items():
            base[key] = _merge(base[key], value) if key in base else value
        return base
    return over


def apply(name: str, params_path: Path) -> list[str]:
    """Merge preset `name` into `params_path`; return the dotted keys it changed."""
    y = _yaml()
    if not params_path.is_file():
        raise UserError(f"params file {params_path} does not exist.")
    doc = y.load(params_path.read_text()) or {}
    preset = y.load(preset_path(name).read_text()) or {}
    changed = sorted(_leaves(preset))
    _merge(doc, preset)
    buf = io.StringIO()
    y.dump(doc, buf)
    tmp = params_path.with_name(f".{params_path.name}.preset-check.yaml")
    try:
        tmp.write_text(buf.getvalue())
        validate_all(tmp)
    except UserError as exc:
        raise UserError(f"preset {name!r} applied to {params_path} gives invalid params, nothing written:\n{exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    write_text(params_path, buf.getvalue())
    return changed


def _leaves(d: Any, prefix: str = "") -> list[str]:
    if isinstance(d, dict):
        out = []
        for k, v in d.items():
            out += _leaves(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [prefix]
