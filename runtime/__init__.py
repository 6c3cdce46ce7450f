"""Running models: ``cvdvae.Pipeline`` (``runtime.pipeline``) and everything it stands on.

Bottom up: ``backends`` (TensorRT, OpenVINO, ONNX Runtime, PyTorch behind one interface),
``model_files`` (the export folder's format), ``sampling`` (the one path from requests to engine
calls), ``images`` (the one decoder, output files, summaries), ``faces`` (detection, alignment,
paste-back), ``consistency``, ``limits`` and ``timings``; then ``pipeline``; then ``run_files``
(a run's files and its one record), ``evaluation`` (the paper's metrics) and ``cluster`` (runs on
Ray Data); on top, ``serve`` (the HTTP service) and ``cli`` (the ``cvdvae`` command).

Sampling an exported graph needs the base install and an engine (``pip install 'cvdvae[cpu]'``:
numpy, Pillow, ONNX Runtime or OpenVINO), no PyTorch; ``cvdvae.extras`` says what each other job
needs.
"""
