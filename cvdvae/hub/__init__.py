"""The public files cvdvae uses, fetched once into ``$CVDVAE_HOME`` (default ``~/.cache/cvdvae``).

``home`` (where they live), ``assets`` (what can be fetched, and fetching it), ``download``
(resumable HTTP), ``pypi`` (one pinned file from PyPI), ``mtcnn`` and ``mtcnn_graphs`` (the
face detector's weights made into ONNX graphs), ``lpips`` (the LPIPS-alex weights and the
calibration images). Nothing here is model maths; the model never downloads anything.
"""
