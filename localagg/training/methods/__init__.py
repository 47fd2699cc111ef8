"""Pretraining methods, one module each: its params section (a TrainingConfig) and its Method.

    instance_recognition  IRConfig, InstanceRecognition   (stage pretrain_ia)
    local_aggregation     LAConfig, LocalAggregation      (stage pretrain_la)
    supervised            SupervisedConfig, Supervised    (stage supervised)

Import the module you need: this package imports none of them, so that a stage's code
dependencies are the loop, base.py and its own method.
"""
