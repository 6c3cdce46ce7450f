"""Graph building: the PyTorch sampler traced into one ONNX graph, then TensorRT engines.

``cvdvae export`` (``export.cli``) ties the steps together: resolve weights
(``export.sources``), trace (``export.graph``), clean (``export.cleanup``), stamp
metadata (``export.metadata``), check against PyTorch (``export.validate``) and build an
engine where TensorRT and a GPU exist (``export.tensorrt``).
"""
