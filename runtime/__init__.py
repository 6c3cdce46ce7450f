"""Running exported models: ``engine.plan`` with TensorRT, ``model.onnx`` with ONNX Runtime.

Imports neither PyTorch nor the model-building code: with ONNX Runtime on a CPU the
runtime needs numpy, Pillow and onnxruntime only. ``cvdvae run`` is ``runtime.cli``.
"""
