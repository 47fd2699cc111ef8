"""Presets: partial params files shipped with the package (stages/presets/) that `localagg preset
apply` merges into a params file.

A preset holds the keys it sets, each group with a comment saying where its values come from
(the paper's preset sets every key of the paper's recipe, `localagg.report.paper.RECIPE`, and a
test checks it). Applying deep-merges it into the params file with a ruamel.yaml round trip:
keys the preset does not set keep their values and comments; on every key it sets, the
preset's comment replaces the file's (or the file's comment is dropped when the preset has
none), so no comment is left describing a value that was replaced; the file's header becomes
the preset's. The result is validated before it is written, atomically. `apply` returns the
keys whose values changed, with their old and new values.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import CommentMark
from ruamel.yaml.tokens import CommentToken

from localagg.errors import UserError
from localagg.io import write_text

from .params import validate_all

PRESET_DIR = Path(__file__).resolve().parent / "presets"
MISSING = object()


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
    y.width = 110
    return y


def _plain(value: Any) -> Any:
    """A ruamel node as plain Python (for comparing values)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _eol(mapping: CommentedMap, key: str) -> CommentToken | None:
    items = mapping.ca.items.get(key)
    return items[2] if items and len(items) > 2 else None


def _replace_comment(target: CommentedMap, preset: CommentedMap, key: str) -> None:
    """The end-of-line comment of `key` in `target` becomes the preset's (none if the preset has
    none); blank lines and comment lines that follow it, which belong to what comes next, stay."""
    old, new = _eol(target, key), _eol(preset, key)
    rest = old.value.split("\n", 1)[1] if old is not None and "\n" in old.value else ""
    comment = new.value.split("\n", 1)[0] if new is not None else ""
    if not comment and not rest:
        if key in target.ca.items:
            target.ca.items[key][2] = None
        return
    column = (old or new).start_mark.column
    value = (comment + "\n" + rest) if comment else ("\n" + rest)
    items = target.ca.items.setdefault(key, [None, None, None, None])
    items[2] = CommentToken(value, CommentMark(column), None)


def _insert(target: CommentedMap, key: str, value: Any, after: str | None) -> None:
    """Insert a key the file lacks right after `after` (the preset's previous key), or at the
    end; at the end it takes over the blank lines that followed the old last key."""
    keys = list(target)
    position = keys.index(after) + 1 if after in target else len(keys)
    target.insert(position, key, value)
    if position == len(keys) and keys:
        last = _eol(target, keys[-1])
        if last is not None and "\n" in last.value:
            comment, rest = last.value.split("\n", 1)
            if rest:
                last.value = comment + "\n"
                target.ca.items.setdefault(key, [None, None, None, None])[2] = CommentToken(
                    "\n" + rest, CommentMark(last.start_mark.column), None)


def _merge(target: CommentedMap, preset: CommentedMap, prefix: str, changed: list) -> None:
    """Deep-merge `preset` into `target` (mappings merge, anything else is replaced); record the
    (key, old, new) of every leaf whose value changes."""
    previous = None
    for key, value in preset.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, path, changed)
        else:
            old = target.get(key, MISSING)
            if old is MISSING or _plain(old) != _plain(value):
                changed.append((path, MISSING if old is MISSING else _plain(old), _plain(value)))
            if old is MISSING:
                _insert(target, key, value, previous)
            else:
                target[key] = value
        _replace_comment(target, preset, key)
        previous = key


def apply(name: str, params_path: Path) -> list[tuple[str, Any, Any]]:
    """Merge preset `name` into `params_path`; return (dotted key, old value, new value) for every
    key whose value changed (old is MISSING for a key the file did not have)."""
    y = _yaml()
    if not params_path.is_file():
        raise UserError(f"params file {params_path} does not exist.")
    doc = y.load(params_path.read_text()) or CommentedMap()
    preset = y.load(preset_path(name).read_text()) or CommentedMap()
    changed: list[tuple[str, Any, Any]] = []
    _merge(doc, preset, "", changed)
    doc.ca.comment = preset.ca.comment  # the preset's header replaces the file's
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
