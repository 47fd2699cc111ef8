"""Datasets: embedded sets built from bundled real data, manifests of real datasets, loaders."""
