"""Starting Serve on a busy machine: Ray waits 60 s for its HTTP proxies and then raises while they
go on starting; ``start_serve`` connects to the controller left running and waits for the proxies
itself. Driven through a recording stand-in for ``ray.serve``."""

from types import SimpleNamespace

import pytest

pytest.importorskip("ray", reason="Ray Serve is not installed (pip install -e '.[serve]')")

from ray.serve.schema import ProxyStatus  # noqa: E402

from runtime.serve import app  # noqa: E402

OPTIONS = {"host": "127.0.0.1", "port": 8123}


class SlowProxies:
    """``ray.serve`` whose first ``start`` times out as Ray's does; its two proxies report healthy
    after ``healthy_after`` and ``healthy_after + 1`` status calls."""

    def __init__(self, starts_in_time: bool, healthy_after: int):
        self.starts_in_time, self.healthy_after = starts_in_time, healthy_after
        self.starts: list[tuple[dict, dict]] = []
        self.status_calls = 0

    def start(self, http_options, **settings):
        self.starts.append((http_options, settings))
        if len(self.starts) == 1 and not self.starts_in_time:
            raise TimeoutError("HTTP proxies not available after 60s.")

    def status(self):
        self.status_calls += 1
        ready = lambda extra: ProxyStatus.HEALTHY if self.status_calls > self.healthy_after + extra \
            else ProxyStatus.STARTING  # noqa: E731
        return SimpleNamespace(proxies={"head": ready(0), "worker": ready(1)})


def test_proxies_that_start_in_time_are_started_once(monkeypatch):
    serve = SlowProxies(starts_in_time=True, healthy_after=0)
    monkeypatch.setattr(app, "serve", serve)
    app.start_serve(OPTIONS, proxy_location="HeadOnly")
    assert serve.starts == [(OPTIONS, {"proxy_location": "HeadOnly"})] and serve.status_calls == 0


def test_proxies_past_rays_wait_are_waited_for_until_every_one_is_healthy(monkeypatch):
    serve = SlowProxies(starts_in_time=False, healthy_after=1)
    monkeypatch.setattr(app, "serve", serve)
    app.start_serve(OPTIONS, patience_s=30, proxy_location="HeadOnly")
    assert serve.starts == [(OPTIONS, {"proxy_location": "HeadOnly"})] * 2
    assert serve.status_calls == 3  # starting, one healthy, both healthy


def test_proxies_that_never_start_are_a_timeout_that_names_the_wait(monkeypatch):
    serve = SlowProxies(starts_in_time=False, healthy_after=10**9)
    monkeypatch.setattr(app, "serve", serve)
    with pytest.raises(TimeoutError, match=r"did not start within 1 s"):
        app.start_serve(OPTIONS, patience_s=1)
    assert len(serve.starts) == 2 and serve.status_calls >= 2
