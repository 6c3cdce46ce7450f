"""Running models: ``cvdvae.Pipeline`` (``runtime.pipeline``) and everything it stands on.

``backends`` (TensorRT, OpenVINO, ONNX Runtime, PyTorch behind one interface), ``sampling`` (the
one path from requests to engine calls), ``model_files`` (the export folder's format),
``images`` (the one decoder, output files), ``faces`` (detection, alignment, paste-back),
``consistency``, ``evaluation`` (the paper's metrics); on top, ``serve`` (the HTTP service) and
``cli`` (the ``cvdvae`` command). Running an exported graph needs no PyTorch: numpy, Pillow and
ONNX Runtime or OpenVINO.
"""
