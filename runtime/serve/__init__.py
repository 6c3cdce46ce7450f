"""``cvdvae serve``: the runtime behind HTTP, on Ray Serve: ``requests`` (parsing and limits),
``metrics`` (Prometheus text), ``app`` (the FastAPI routes and the Ray Serve deployment, which
runs the ``Pipeline``'s steps around its batcher); ``static/`` the web page. The command is
``runtime.cli.serve``."""
