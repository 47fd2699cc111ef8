"""Transfer evaluation of a frozen backbone: per-layer linear readout (linear.py, with the
crops of crops.py), kNN (the classifier in localagg.knn, the feature spaces in spaces.py),
the stage's glue (transfer.py) and the views the report draws (views.py). It stands on the
runtime floor and the models, and does not import the training."""
