"""Pretraining: one plain loop (loop.py) and one object per method (methods/).

    loop.py     Trainer: model, data order, schedule, AMP, DDP, finite-loss guard, checkpoints,
                resume, logging, export; it knows no method by name
    batches.py  the global-batch order of an epoch and each rank's slice
    config.py   TrainingConfig: what every method's params section shares
    methods/    base.py (the hooks a method answers), instance_recognition.py (IR),
                local_aggregation.py (LA), supervised.py (the supervised reference)

It stands on the runtime floor (localagg.runtime: devices, process groups, checkpoint files,
schedules) and on the models, objectives, memory bank, clustering and kNN; it does not import
the evaluation, which stands on the same floor.
"""
