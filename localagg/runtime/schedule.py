"""The step learning-rate schedule shared by pretraining and the linear readout."""

from __future__ import annotations


class StepSchedule:
    """The step learning-rate schedule of a config with fields `epochs`, `lr`, `lr_drops` and
    `lr_gamma` (pretraining's methods, the linear readout in evaluation.linear)."""

    def lr_at(self, epoch: int) -> float:
        """lr * lr_gamma^(number of drops at or before `epoch`)."""
        return self.lr * self.lr_gamma ** sum(epoch >= d for d in self.lr_drops)

    def check_lr_drops(self) -> None:
        """Raise ValueError unless lr_drops are increasing epochs inside (0, epochs)."""
        if sorted(self.lr_drops) != list(self.lr_drops) or any(not 0 < e < self.epochs for e in self.lr_drops):
            raise ValueError(f"lr_drops must be increasing epochs inside (0, epochs={self.epochs}), got {self.lr_drops}")
