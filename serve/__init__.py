"""``cvdvae serve``: the runtime behind HTTP, on Ray Serve: ``requests`` (parsing and limits),
``batching`` (requests packed into engine calls), ``metrics`` (Prometheus text), ``app`` (the
FastAPI routes and the Ray Serve deployment), ``cli`` (the command); ``static/`` the web page."""
