"""Evaluation: kNN on embeddings (InstDisc protocol); linear readout comes with the transfer stage."""
