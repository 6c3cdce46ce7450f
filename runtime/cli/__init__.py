"""The ``cvdvae`` command, on top of every other layer: ``app`` (the umbrella, loading each verb
when used), one module per verb (``run``, ``export``, ``serve``, ``fetch``, ``convert``,
``train``, ``eval``, ``demo``), ``triton`` and ``polygraphy_inputs`` (run with ``python -m``),
``common`` (the shared flags, one-line errors, exit codes). Each parses its flags and
calls the library; library errors name settings, which the verbs spell as their flags (``cvdvae.errors``)."""
