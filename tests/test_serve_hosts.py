"""The ``Host`` rule against DNS rebinding, without Ray: which names a service answers to, given the
address it listens on and the names its operator allowed."""

import socket

import pytest

from runtime.serve.hosts import HostRule


@pytest.mark.parametrize("header, allowed", [
    ("127.0.0.1:8000", True), ("localhost:8000", True), ("LocalHost", True), ("[::1]:8000", True),
    ("app.localhost:8000", True), ("10.1.2.3:8000", True), ("[fe80::1]", True),  # an address cannot be rebound
    (None, True),                                                                 # HTTP/1.0: no browser
    ("evil.example:8000", False), ("evil.example", False), ("127.0.0.1.evil.example", False),
    ("localhost.evil.example:8000", False), ("", False), ("[::1", False), ("a b", False),
    ("served.example:9000", True), ("SERVED.example.", True),
])
def test_on_loopback_only_addresses_loopback_names_and_allowed_names_pass(header, allowed):
    assert HostRule("127.0.0.1", ("served.example",)).allows(header) is allowed


def test_listening_beyond_this_machine_adds_its_own_names_and_star_allows_any():
    rule = HostRule("0.0.0.0", ())
    assert rule.allows(f"{socket.gethostname()}:8000") and not rule.allows("evil.example")
    assert not HostRule("127.0.0.1", ()).allows(f"{socket.gethostname()}.evil.example")
    assert HostRule("127.0.0.1", ("*",)).allows("evil.example")
    assert HostRule("my.host.example", ()).allows("my.host.example:80")  # a name it listens on is its own
