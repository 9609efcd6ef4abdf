"""The anomaly model: a prebuilt ONNX autoencoder over the window feature vectors.

``scorer.py`` loads a model from its manifest (``models/<name>.json`` next to ``<name>.onnx``),
refuses one built for other features or whose file does not match its checksum, and scores
every channel vector of a window in one batch, explaining each score by the features that
the model could not reconstruct.
"""
