"""What a pretraining method brings to the loop (`training/loop.py`), and the memory-bank
methods' common part.

The loop owns the model, the optimiser, the data order, the schedule, AMP, DDP, the
finite-loss guard, checkpoints and logging, and knows no method by name. A method owns its
objective and its state, and answers the loop's questions through these hooks, each called
with the running `Trainer` (`run`: its `model`, `dist`, `device`, `num_items`, `train`,
`train_eval`, `val`, `num_classes`, `init_from`, and its sharded passes `embed`, `knn_top1`
and `knn_top1_streamed`, which every rank calls together):

    setup(run)                     build the state (bank, loss modules) once the model exists
    size_limits()                  {key: value} of the section that must not exceed N
    check_warm_start(export, path) refuse a warm-start export the method cannot start from
    warm_start(run, export)        take what the method needs from it (after the loop's checks)
    trainable(model)               the module the optimiser trains (default: the model)
    begin(run)                     a fresh run's start (not a resume): {extra summary values}
    begin_epoch(run, epoch)        before an epoch's first step: {statistics of the epoch}
    loss(out, labels, idx, seed)   the step's loss from the trainable's output (seed: the step's, for draws)
    after_step(out, idx)           after the optimiser step (the bank update)
    monitor(run)                   the kNN top-1 of the held-out split, or None (every rank calls it)
    epoch_text(metrics)            what the epoch's log line adds to loss, lr and img/s ('' by default)
    state_dict() / load_state_dict(state)   what a checkpoint carries besides model and optimiser
    export_fields()                the export's method-specific entries (bank, classifier)
    loss_hints()                   params to check when the loss is not finite
    views(run)                     what the report draws besides numbers (LA's clusters)

A new method is one file under `methods/`: its config (a `TrainingConfig`) and its `Method`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from ...errors import UserError
from ...memory_bank import MemoryBank
from ...runtime.distributed import all_gather_cat
from ..config import TrainingConfig


class Method:
    """The defaults of every hook (module docstring); subclasses set `name` and `section`."""

    name: ClassVar[str]     # the objective, as exports, records and logs name it
    section: ClassVar[str]  # the params section it reads, for messages

    def __init__(self, cfg: TrainingConfig):
        self.cfg = cfg

    def setup(self, run) -> None:
        pass

    def size_limits(self) -> dict[str, int]:
        return {"batch_size": self.cfg.batch_size, "knn_k": self.cfg.knn_k}

    def check_warm_start(self, export: dict, path) -> None:
        raise UserError(f"{self.section} does not start from another model; remove its warm start ({path}).")

    def warm_start(self, run, export: dict) -> None:
        pass

    def trainable(self, model: nn.Module) -> nn.Module:
        return model

    def begin(self, run) -> dict[str, Any]:
        return {}

    def begin_epoch(self, run, epoch: int) -> dict[str, float]:
        return {}

    def loss(self, out: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, step_seed: int) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, out: torch.Tensor, idx: torch.Tensor) -> None:
        pass

    def monitor(self, run) -> float | None:
        return None

    def epoch_text(self, metrics: dict[str, float]) -> str:
        return ""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        pass

    def export_fields(self) -> dict[str, Any]:
        return {}

    def loss_hints(self) -> list[str]:
        return []

    def views(self, run) -> dict:
        return {}


class BankMethod(Method):
    """A method over a memory bank of one embedding per training image (IR, LA).

    The bank starts uniform (the paper) or from the initial network's embeddings
    (`bank_init: features`), or from the warm start's bank; after every step the rows of the
    global batch move towards their new embeddings (memory_bank.py); the kNN monitor
    classifies the held-out split against the bank with the training labels.
    """

    bank: MemoryBank

    def setup(self, run) -> None:
        cfg = self.cfg
        self.bank = MemoryBank(run.num_items, run.model.embedding_dim, cfg.bank_momentum, cfg.bank_normalize_init,
                               generator=torch.Generator().manual_seed(cfg.seed), device=run.device).to(run.dtype)

    def check_warm_start(self, export: dict, path) -> None:
        if export.get("bank") is None or export.get("dataset") is None:
            raise UserError(f"warm-start checkpoint {path} ({export['objective']}) has no memory bank: "
                            f"{self.name.upper()} starts from an IR model.")

    def warm_start(self, run, export: dict) -> None:
        self.bank.memory.copy_(export["bank"].to(run.device))

    def begin(self, run) -> dict[str, Any]:
        """kNN before training; `bank_init: features` fills the bank from the initial network
        (every rank embeds its shard and gathers the rest, so the replicas start equal)."""
        cfg = self.cfg
        if run.init_from is not None:
            return {"knn_top1_init": self.monitor(run)}
        out = {}
        initial = run.embed(run.train_eval) if (cfg.bank_init == "features" or run.val is not None) else None
        if run.val is not None:
            out["knn_top1_init"] = run.knn_top1(run.val, initial, run.train.labels)
        if cfg.bank_init == "features":
            self.bank.memory.copy_(initial)
        return out

    def after_step(self, out: torch.Tensor, idx: torch.Tensor) -> None:
        # the global batch is a slice of a permutation: its indices are distinct
        self.bank.update(all_gather_cat(idx), all_gather_cat(out.detach().to(self.bank.memory.dtype)), distinct=True)

    def monitor(self, run) -> float | None:
        """kNN top-1 (%) of the held-out split's fresh embeddings against the bank."""
        if run.val is None:
            return None
        return run.knn_top1(run.val, self.bank.memory, run.train.labels)

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.memory.cpu()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.bank.memory.copy_(state["bank"].to(device))

    def export_fields(self) -> dict[str, Any]:
        return {"bank": self.bank.memory.cpu()}

    def loss_hints(self) -> list[str]:
        return [f"{self.section}.temperature = {self.cfg.temperature:g}"]
