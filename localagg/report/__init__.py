"""The report: a run's metrics gathered into results.csv, results.md and figures, next to the
paper's numbers, and one table across runs for sweeps.

    paper.py     the published numbers (the only place they live) and which benchmark is the paper's
    results.py   metrics files as records; aggregation over seeds; results.csv
    markdown.py  results.md
    figures.py   readout per layer, pretraining curves, detection AP (PNG)
    sweep.py     the table across runs (compare.csv, compare.md)

It works on parsed metrics handed to it (each file a `Record` that carries its path and the
stage that writes it, for traceability and error messages) and reads no params file.
"""
