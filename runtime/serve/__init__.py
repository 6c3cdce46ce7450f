"""``cvdvae serve``: the runtime behind HTTP, on Ray Serve. ``options`` (what the operator sets),
``requests`` (reading and checking a request), ``answers`` (the messages of an answer and its JSON
and zip writers), ``metrics`` (Prometheus), ``sampler`` (the model replicas, which run the
``Pipeline``'s steps around their batcher), ``ingress`` (the HTTP routes in front of them), ``app``
(the two as one Ray Serve application); ``static/`` the web page. The command is ``runtime.cli.serve``."""
