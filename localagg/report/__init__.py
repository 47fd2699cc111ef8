"""The report: a run's metrics gathered into results.csv, results.md and figures, next to the
paper's numbers, and one table across runs for sweeps.

    paper.py     the published numbers (the only place they live) and which benchmark is the paper's
    comparability.py  whether a record's whole protocol is the paper's, and what differs
    results.py   metrics files as records; aggregation over seeds; results.csv
    markdown.py  results.md
    figures.py   the pictures (PNG): readout per layer, pretraining curves, detection AP, per-class
                 accuracy, retrieval, t-SNE maps, LA's clusters, detections
    sweep.py     the table across runs (compare.csv, compare.md)

It works on parsed records handed to it (each file a `Record` that carries its path and the
stage that writes it, for traceability and error messages) and reads no params file.
"""
