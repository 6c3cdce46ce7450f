"""Nodes that die, on a real multi-node Ray cluster on one machine (``ray.cluster_utils.Cluster``: a
head and worker raylets, each with its own resources, as separate machines would have): a worker
node removed midway through ``cvdvae run --ray`` (the run ends with plain run's bytes, nothing
half-written), and the node of a model replica removed while clients send (no good request lost,
and the service answers after). The head notices a lost node within about two seconds here
(its health checks every 0.5 s), as a real cluster does within its own settings.

Each test starts its worker nodes and removes them; the cluster is shared by the module."""

from __future__ import annotations

import base64
import os
import threading
import time

import pytest
from conftest import copy_export
from test_cluster import done, faces, files, no_temporary_files, on_ray, plain

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster
    from test_serve import PROXY_READY

    os.environ.setdefault(*PROXY_READY)
    head = Cluster(initialize_head=True, connect=True, head_node_args={
        "num_cpus": 2, "include_dashboard": False, "resources": {"head": 1, "replica_slot": 1},
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}})
    yield head
    ray.shutdown()
    head.shutdown()


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_export):
    return copy_export(demo_export, tmp_path_factory.mktemp("nodes") / "engine")


def actor_nodes(class_part: str) -> set[str]:
    """The node ids of the live actors whose class name holds ``class_part``."""
    from ray._private.state import state

    return {info["Address"]["NodeID"] for info in state.actor_table(None).values()
            if class_part in info["ActorClassName"] and info["State"] == "ALIVE"}


def node_with(cluster, nodes, class_part: str, seconds: float = 120):
    """The first of ``nodes`` (worker nodes) that holds an actor of ``class_part``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        held = actor_nodes(class_part)
        for node in nodes:
            if node.node_id in held:
                return node
        time.sleep(0.1)
    raise AssertionError(f"no {class_part} actor on a worker node within {seconds} s")


def test_a_worker_node_removed_midway_through_run_ray_loses_nothing(cluster, demo, tmp_path):
    """200 inputs on three nodes (one actor each); once some are done, a worker node holding an actor
    is removed (its raylet killed): Ray Data runs that actor's batch again elsewhere, and the run
    ends with exit 0, the bytes of a plain run and no temporary file."""
    nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
    cluster.wait_for_nodes()
    inputs = faces(tmp_path / "in", 200)
    flags = ("--n", "4", "--summary")
    expected = plain(demo, inputs, tmp_path / "plain", *flags)
    out = tmp_path / "ray"
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(on_ray(demo, inputs, out, *flags, "--actor-batch", "2",
                                                                 "--block-inputs", "10")))
    runner.start()
    victim = node_with(cluster, nodes, "MapWorker")
    deadline = time.monotonic() + 300
    while not ((out / ".cvdvae-run").is_dir() and done(out) >= 10):
        assert time.monotonic() < deadline and runner.is_alive(), "no input finished"
        time.sleep(0.05)
    cluster.remove_node(victim, allow_graceful=False)
    removed_at = done(out)
    runner.join(600)
    assert removed_at < 200, "the node must be removed midway"
    assert codes == [0]
    assert files(out) == expected
    no_temporary_files(out)
    for node in nodes:
        if node is not victim:
            cluster.remove_node(node)


def test_a_replicas_node_removed_under_load_loses_no_good_request(cluster, demo):
    """Two model replicas, one on the head and one on a worker node (one ``replica_slot`` each), the
    ingress on the head; clients send seeded faces while the worker node is removed. Every answer
    is 200 with the request's own samples (those on the lost node run again on the head's
    replica), and the service answers after."""
    from ray import serve
    from test_serve import b64, face_png, free_port, local_samples, sample_json, wait_ready

    from runtime.serve.app import start_serve
    from runtime.serve.ingress import Ingress
    from runtime.serve.options import ServeOptions
    from runtime.serve.sampler import Sampler

    worker = cluster.add_node(num_cpus=2, resources={"replica_slot": 1})
    cluster.wait_for_nodes()
    port = free_port()
    start_serve({"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    options = ServeOptions(str(demo), batch_wait_s=0.02)
    sampler = Sampler.options(num_replicas=2, ray_actor_options={"num_cpus": 0.5, "resources": {"replica_slot": 1}},
                              max_ongoing_requests=16).bind(options)
    app = Ingress.options(ray_actor_options={"num_cpus": 0, "resources": {"head": 0.01}}).bind(sampler, options)
    serve.run(app, name="nodes", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/readyz")
        assert worker.node_id in actor_nodes("Sampler") and cluster.head_node.node_id in actor_nodes("Sampler")
        seeds = list(range(30, 36))
        expected = {seed: local_samples(demo, seed, 4) for seed in seeds}
        outcomes: list[tuple[int, int, dict]] = []
        stop = threading.Event()

        def client(seed):
            while not stop.is_set():
                status, body = sample_json(url, token=None, timeout=120, image=b64(face_png(seed)), n=4, seed=seed)
                outcomes.append((seed, status, body))

        threads = [threading.Thread(target=client, args=(seed,)) for seed in seeds]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 120
        while len(outcomes) < 12:
            assert time.monotonic() < deadline, "no answers under load"
            time.sleep(0.05)
        cluster.remove_node(worker, allow_graceful=False)
        lost_at = len(outcomes)
        while len(outcomes) < lost_at + 24:  # answers after the loss, from the head's replica
            assert time.monotonic() < deadline + 240, "no answers after the node was lost"
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join(180)
        for seed, status, body in outcomes:
            assert status == 200, (status, body)
            assert [base64.b64decode(s) for s in body["samples"]] == expected[seed]
        assert wait_ready(url + "/readyz")["model"]
    finally:
        serve.shutdown()
