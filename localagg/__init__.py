"""localagg: Local Aggregation (Zhuang, Zhai, Yamins, ICCV 2019) as a library.

The library knows nothing of DVC, params files or the command line: the pipeline layer
(`stages/`) reads params and calls into it. Its floors, each standing only on those below:

    errors, io, process, progress     user errors, atomic files, child processes, progress lines
    runtime                           devices and process groups, checkpoint files, lr schedules
    data, models, objectives,         prepared datasets and augmentation, backbones, the IR and LA
    memory_bank, clustering, knn      losses, the memory bank, k-means, the weighted kNN classifier
    training                          the pretraining loop and one object per method
    evaluation, detection             linear readout and kNN transfer; Detectron2 fine-tuning on VOC
    report                            tables and figures from the stages' records (no torch)

Training, evaluation and detection never import each other.
"""

__version__ = "0.1.0"
