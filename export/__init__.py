"""Graph building: the PyTorch sampler traced into one ONNX graph, then TensorRT engines.

``export.exporter`` ties the steps together (``cvdvae export`` is its command): resolve the
weights (``export.model_source``), trace (``export.graph``), clean (``export.onnx_passes``),
stamp metadata (``export.metadata``), check against PyTorch (``export.validate``), keep the
reference cases (``export.reference``), and build and check an engine where TensorRT and a GPU
exist (``export.tensorrt``, ``export.engine``, ``export.engine_check``). ``export.triton`` and
``export.polygraphy_inputs`` serve Triton and Polygraphy users.
"""
