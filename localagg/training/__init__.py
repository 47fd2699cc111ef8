"""Pretraining (IR and LA, one loop), distributed helpers and checkpoints."""
