"""Read a checkpoint someone handed you without running anything in it.

`read_untrusted(path)` returns the file's contents as plain containers and tensors:

1. `torch.load(weights_only=True)`: files of tensors, dicts, lists and numbers (torchvision,
   MoCo, VISSL, mmselfsup, hub files, the pipeline's own) load as they are.
2. A file that also pickles objects of its training code (lemniscate / NPID's `LinearAverage`,
   DeepCluster's, an argparse Namespace) is read again by a restricted unpickler: only
   torch's tensor and storage rebuilders and `collections.OrderedDict` are the real ones; every
   other global the pickle names becomes an inert `Opaque` placeholder (calling it builds a
   placeholder; its state is kept only where it is tensors and plain data). So `os.system`,
   `eval` or a training class named in the file are never imported, let alone called, and the
   weights still come out. What was replaced is listed (`Read.opaque`).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .checkpoint import REFUSED, clip, unpickler_detail

# the globals a torch checkpoint needs to rebuild tensors (storages are mapped by torch.load itself)
ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("collections", "OrderedDict"), ("torch", "Size"),
    ("torch", "device"),
}


class Opaque:
    """Stands in for an object of a class this process does not import. Keeps only the
    tensors and plain data of its state (`state`), never code."""

    qualname = "?"

    def __init__(self, *args, **kwargs):
        self.state = None

    def __setstate__(self, state):
        self.state = _plain(state)

    def __setitem__(self, key, value):  # SETITEMS on a placeholder dict subclass
        pass

    def append(self, value):  # APPENDS on a placeholder list subclass
        pass

    def extend(self, values):
        pass

    def __repr__(self):
        return f"<opaque {self.qualname}>"


def _plain(value, depth: int = 0):
    """Tensors and plain containers of `value`; anything else becomes None."""
    if depth > 20:
        return None
    if isinstance(value, (torch.Tensor, str, int, float, bool, type(None))):
        return value
    if isinstance(value, dict):
        return {k: _plain(v, depth + 1) for k, v in value.items() if isinstance(k, (str, int))}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, Opaque):
        return value.state
    return None


class _Restricted(pickle.Unpickler):
    replaced: set

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        qualname = f"{module}.{name}"
        type(self).replaced.add(qualname)
        return type(name, (Opaque,), {"qualname": qualname})


def _restricted_module(replaced: set):
    """A `pickle_module` for torch.load whose Unpickler is `_Restricted` (torch subclasses it)."""

    class Unpickler(_Restricted):
        pass

    Unpickler.replaced = replaced

    class Module:
        __name__ = "localagg_restricted_pickle"
        UnpicklingError = pickle.UnpicklingError

        @staticmethod
        def load(f, **kwargs):
            return Unpickler(f, **kwargs).load()

    Module.Unpickler = Unpickler
    return Module


@dataclass
class Read:
    state: Any
    opaque: list[str] = field(default_factory=list)  # classes the file named that were not imported


def read_untrusted(path: str | Path, what: str = "checkpoint") -> Read:
    """The file's tensors and containers (module docstring); a file that is not a torch
    checkpoint at all is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist.")
    data = path.read_bytes()
    try:
        return Read(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as exc:
        detail = unpickler_detail(exc)
        if not detail.startswith(REFUSED):  # not a pickle at all (an HTML page), or cut short
            raise UserError(f"{what} {path} cannot be read as a torch checkpoint ({detail}); is it truncated, or "
                            "another kind of file?") from None
        # it names globals other than tensors': read it again, replacing them
    except Exception as exc:
        raise UserError(f"{what} {path} cannot be read as a torch checkpoint ({type(exc).__name__}: "
                        f"{clip(str(exc)) or 'no data'}); is it truncated, or another kind of file?") from None
    replaced: set[str] = set()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False,
                           pickle_module=_restricted_module(replaced))
    except Exception as exc:
        raise UserError(f"{what} {path} cannot be read even with its objects replaced by placeholders "
                        f"({type(exc).__name__}: {clip(str(exc))}).") from None
    return Read(state.state if isinstance(state, Opaque) else state, sorted(replaced))
