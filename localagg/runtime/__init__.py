"""The runtime floor that training, evaluation and detection all stand on.

    distributed  device choice, the process group (torchrun's environment), collectives
    checkpoint   checkpoint and model-export files: written atomically, read without running code
    schedule     the step learning-rate schedule of pretraining and of the linear readout

Nothing here knows a method, an evaluation or a params file.
"""
