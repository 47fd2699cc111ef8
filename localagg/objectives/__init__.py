"""Training objectives: Instance Recognition (the warm start) and Local Aggregation."""

from .instance_recognition import InstanceRecognitionLoss
from .local_aggregation import local_aggregation_loss

__all__ = ["InstanceRecognitionLoss", "local_aggregation_loss"]
