"""Instance Recognition (Wu et al. 2018), LA's warm start: each image is its own class, the
memory bank rows are the class weights (objectives/instance_recognition.py has the formula).

    L = NCE(v, bank[i], K noise rows)      K = num_negatives > 0, Z fixed after the first batch
    L = cross_entropy(v bank^T / tau, i)   K = 0, the full softmax

Under DDP the noise rows are drawn for the global batch, on the device, from a generator
seeded by the step, and each rank takes its slice, so W processes draw what one process draws.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import torch
from pydantic import Field

from ...objectives import InstanceRecognitionLoss
from ..config import TrainingConfig
from .base import BankMethod


class IRConfig(TrainingConfig):
    """Instance Recognition (Wu et al. 2018): NCE with `num_negatives` noise samples (0 = full softmax)."""

    num_negatives: int = Field(4096, ge=0)
    nce_z_per_image: Optional[float] = Field(
        None, gt=0, description="NCE normaliser Z / N, fixed; null: Z estimated from the first batch (lemniscate, "
                                "the PyTorch port). The TF code fixes Z = 2876934.2 / 1281167 * N (2.2455575 N)")


class InstanceRecognition(BankMethod):
    name: ClassVar[str] = "ir"
    section: ClassVar[str] = "pretrain_ia"
    cfg: IRConfig

    def setup(self, run) -> None:
        super().setup(run)
        cfg = self.cfg
        self.num_items, self.rank = run.num_items, run.dist.rank
        self.criterion = InstanceRecognitionLoss(run.num_items, cfg.num_negatives, cfg.temperature,
                                                 normalizer_per_item=cfg.nce_z_per_image).to(run.device)

    def loss(self, out: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor, step_seed: int) -> torch.Tensor:
        emb = out.to(self.bank.memory.dtype)  # float32 (float64 in float64 runs) under autocast too
        noise = None
        if self.cfg.num_negatives > 0:
            B, b = self.cfg.batch_size, emb.shape[0]
            g = torch.Generator(device=emb.device).manual_seed(step_seed)
            all_noise = torch.randint(0, self.num_items, (B, self.cfg.num_negatives), generator=g, device=emb.device)
            noise = all_noise[self.rank * b : (self.rank + 1) * b]  # (b, K): this rank's rows of the global (B, K)
        return self.criterion(emb, idx, self.bank.memory, noise_indices=noise)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "criterion": self.criterion.state_dict()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        super().load_state_dict(state, device)
        self.criterion.load_state_dict(state["criterion"])
