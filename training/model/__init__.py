"""The model: the CLIP encoders and their weights, the block features, the MLP head, the
Detector (encoder + head), calibration, test-time views and the registry of heads."""
