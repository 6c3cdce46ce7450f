"""``cvdvae run --ray``: on a local Ray (loopback, 2 CPUs), the files are the bytes plain ``cvdvae run``
writes; a bad input is listed and the rest go on; a folder holding results resumes; a worker
or the driver killed midway ends, on the next run, with every output once and none corrupt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, copy_export, nan_model
from PIL import Image

from cvdvae.hub.home import cvdvae_home
from runtime.cli.run import main as run_main

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytestmark = pytest.mark.ray

ASTRONAUT = Path(pytest.importorskip("skimage").data_dir) / "astronaut.png"


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module; the command finds it running and uses it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def demo(tmp_path_factory, demo_export):
    return copy_export(demo_export, tmp_path_factory.mktemp("cluster") / "engine")


def faces(folder: Path, count: int, bad_at: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"f{i:03d}.png"
        if i == bad_at:
            path.write_bytes(b"\x89PNG\r\n\x1a\n but not really")  # a corrupt input in the middle
        else:
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return folder


def files(folder: Path) -> dict[str, bytes]:
    """Every output file by name (the ledger folder and the failures list aside)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.suffix == ".png"}


def plain(demo: Path, inputs: Path, out: Path, *flags: str) -> dict[str, bytes]:
    run_main([str(demo), "--input", str(inputs), "--out", str(out), "--quiet", *flags])
    return files(out)


def on_ray(demo: Path, inputs: Path, out: Path, *flags: str) -> int:
    return run_main([str(demo), "--input", str(inputs), "--out", str(out), "--ray", "--quiet", *flags])


def done(out: Path) -> int:
    """Inputs the run's journals hold as done."""
    return sum(line.count('"event": "done"') for p in (out / ".cvdvae-run").glob("journal-*.jsonl")
               for line in p.read_text().splitlines())


def no_temporary_files(folder: Path) -> None:
    assert not [p.name for p in folder.rglob(".*.tmp")], "an interrupted write's temporary file was left"


def test_the_same_bytes_and_record_as_plain_run_and_a_corrupt_input_is_listed(local_ray, demo, tmp_path, capsys):
    """Files, failures list, exit status and ``--json`` (its fields, and what they count) are plain run's."""
    inputs = faces(tmp_path / "in", 9, bad_at=4)
    flags = ("--n", "3", "--seed", "7", "--summary", "--json")
    capsys.readouterr()
    assert run_main([str(demo), "--input", str(inputs), "--out", str(tmp_path / "plain"), *flags]) == 2
    expected, plain_json = files(tmp_path / "plain"), json.loads(capsys.readouterr().out)
    assert len(expected) == 8 * 6  # 8 good inputs x (3 samples, grid, mean, std)
    out = tmp_path / "ray"
    assert run_main([str(demo), "--input", str(inputs), "--out", str(out), "--ray", *flags, "--actor-batch", "2",
                     "--block-inputs", "3"]) == 2
    ray_json = json.loads(capsys.readouterr().out)
    assert files(out) == expected
    lines = (out / "failures_s7.txt").read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(inputs / "f004.png")), lines
    assert (tmp_path / "plain" / "failures_s7.txt").read_text().splitlines() == lines
    assert list(ray_json) == list(plain_json)
    counted = ("inputs", "done", "skipped", "failed", "samples", "non_finite_samples", "seed", "n", "backend",
               "precision", "errors", "photos")
    assert {key: ray_json[key] for key in counted} == {key: plain_json[key] for key in counted}
    assert (plain_json["inputs"], plain_json["done"], plain_json["samples"]) == (9, 8, 24)
    assert sorted(ray_json["outputs"]) == sorted(p.replace("/plain/", "/ray/") for p in plain_json["outputs"])
    assert plain_json["actors"] is None and ray_json["actors"] >= 1
    no_temporary_files(out)


def test_photos_give_the_bytes_of_plain_run_faces(local_ray, demo, tmp_path):
    if not (cvdvae_home() / "mtcnn" / "onet.onnx").is_file():
        pytest.skip("MTCNN graphs not fetched (cvdvae fetch mtcnn)")
    inputs = tmp_path / "photos"
    inputs.mkdir()
    photo = np.asarray(Image.open(ASTRONAUT).convert("RGB"))
    Image.fromarray(photo).save(inputs / "one.png")
    Image.fromarray(np.concatenate([photo, photo[:, ::-1]], axis=1)).save(inputs / "two.png")
    flags = ("--faces", "--n", "2", "--upscale", "1", "--summary")
    expected = plain(demo, inputs, tmp_path / "plain", *flags)
    assert "two_face1_s0_01.png" in expected and "one_s0_std.png" in expected
    assert on_ray(demo, inputs, tmp_path / "ray", *flags) == 0
    assert files(tmp_path / "ray") == expected


def test_a_folder_with_results_is_resumed_and_someone_elses_file_is_kept(local_ray, demo, tmp_path, capsys):
    inputs = faces(tmp_path / "in", 6)
    expected = plain(demo, inputs, tmp_path / "plain", "--n", "2")
    out = tmp_path / "ray"
    first = tmp_path / "first"
    first.mkdir()
    for name in ("f000.png", "f001.png", "f002.png"):
        (first / name).write_bytes((inputs / name).read_bytes())
    assert on_ray(demo, first, out, "--n", "2") == 0
    done_before = {name: (out / name).stat().st_mtime_ns for name in files(out)}
    (out / "f004_s0_01.png").write_bytes(b"mine")  # a file of the user's, where f004's output goes
    capsys.readouterr()
    assert run_main([str(demo), "--input", str(inputs), "--out", str(out), "--ray", "--n", "2", "--json"]) == 2
    summary = json.loads(capsys.readouterr().out)
    assert (summary["inputs"], summary["skipped"], summary["done"], summary["failed"]) == (6, 3, 2, 1)
    assert "f004_s0_01.png exists" in summary["errors"][0]["error"] and "--overwrite" in summary["errors"][0]["error"]
    assert (out / "f004_s0_01.png").read_bytes() == b"mine"
    assert {name: (out / name).stat().st_mtime_ns for name in done_before} == done_before, "skipped: untouched"
    got = files(out)
    del got["f004_s0_01.png"]
    assert got == {k: v for k, v in expected.items() if not k.startswith("f004")}
    assert on_ray(demo, inputs, out, "--n", "2", "--overwrite") == 0  # now it is replaced
    assert files(out) == expected


def actor_pids() -> list[int]:
    """Ray Data's actors, by the title Ray gives their processes (``ray::MapWorker(...)``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name.isdigit() and title.startswith(b"ray::") and b"MapWorker" in title:
            pids.append(int(entry.name))
    return pids


def test_a_worker_killed_midway_loses_nothing(local_ray, demo, tmp_path):
    """The actor is killed (SIGKILL) once some inputs are done and others are not: Ray Data
    restarts it and runs its batch again, and the run ends with every output, the bytes of a plain
    run, and no temporary file."""
    inputs = faces(tmp_path / "in", 24)
    flags = ("--n", "24", "--summary")
    expected = plain(demo, inputs, tmp_path / "plain", *flags)
    out = tmp_path / "ray"
    codes: list[int] = []
    runner = threading.Thread(target=lambda: codes.append(on_ray(demo, inputs, out, *flags, "--actor-batch", "1")))
    runner.start()
    deadline = time.monotonic() + 120
    while not ((out / ".cvdvae-run").is_dir() and done(out)):
        assert time.monotonic() < deadline and runner.is_alive(), "no input finished"
        time.sleep(0.05)
    pids = actor_pids()
    done_at_kill = done(out)
    assert pids and done_at_kill < 24, "the kill must land midway"
    os.kill(pids[0], signal.SIGKILL)
    runner.join(300)
    assert codes == [0]
    assert files(out) == expected
    no_temporary_files(out)


def test_a_driver_killed_midway_resumes_to_every_output_once(local_ray, demo, tmp_path):
    """The command, connected to the cluster by its address, is killed (SIGKILL) midway; run again,
    it skips what was complete and ends with the bytes of a plain run."""
    inputs = faces(tmp_path / "in", 24)
    flags = ["--n", "24"]
    expected = plain(demo, inputs, tmp_path / "plain", *flags)
    out = tmp_path / "ray"
    command = [sys.executable, "-m", "runtime.cli.run", str(demo), "--input", str(inputs), "--out", str(out), "--ray",
               "--ray-address", local_ray, "--actor-batch", "1", "--quiet", *flags]
    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not ((out / ".cvdvae-run").is_dir() and done(out)):
        assert time.monotonic() < deadline and driver.poll() is None, "no input finished"
        time.sleep(0.05)
    driver.kill()
    driver.wait(30)
    complete = done(out)
    assert 0 < complete < 24, "the kill must land midway"
    result = subprocess.run([*command[:-3], "--json", *flags], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("{"), f"stdout is not --json's document alone: {result.stdout[:500]!r}"
    summary = json.loads(result.stdout)
    assert summary["skipped"] >= complete and summary["skipped"] + summary["done"] == 24
    assert files(out) == expected
    no_temporary_files(out)


def test_samples_with_nan_or_inf_are_not_written_and_exit_1(local_ray, tmp_path):
    """A model whose samples at t = 1 are -Inf: as without --ray, their files are never written, the
    input is listed and the exit status is 1 (a broken model, not a bad input)."""
    model = nan_model(tmp_path / "broken")
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.full((2, 2, 3), 9, np.uint8)).save(inputs / "x.png")
    out = tmp_path / "out"
    assert on_ray(model, inputs, out, "--temperature", "0.5,1.0") == 1
    assert sorted(files(out)) == ["x_s0_00.png"]  # the finite sample; no grid
    assert "1 of 2 samples contain NaN/Inf" in (out / "failures_s0.txt").read_text()


def test_the_ledger_reads_journals_torn_lines_other_keys_and_missing_outputs(tmp_path):
    """Written by hand here: a journal with a done input, one only started, one under another key,
    one whose outputs are gone, one done for other content under the same name, and a line torn
    by a kill."""
    from runtime.cluster.ledger import FOLDER, Ledger

    (tmp_path / FOLDER).mkdir()
    for name in ("a_s0_00.png", "c_s0_00.png", "e_s0_00.png", "mine_s0_00.png"):
        (tmp_path / name).write_bytes(b"png")
    lines = [{"event": "done", "key": "k", "stem": "a", "input": "1", "preexisting": [],
              "outputs": [str(tmp_path / "a_s0_00.png")]},
             {"event": "started", "key": "k", "stem": "b", "input": "1", "preexisting": []},
             {"event": "done", "key": "other", "stem": "c", "input": "1", "preexisting": [],
              "outputs": [str(tmp_path / "c_s0_00.png")]},
             {"event": "done", "key": "k", "stem": "d", "input": "1", "preexisting": [],
              "outputs": [str(tmp_path / "gone.png")]},
             {"event": "done", "key": "k", "stem": "e", "input": "2", "preexisting": [],
              "outputs": [str(tmp_path / "e_s0_00.png")]}]
    (tmp_path / FOLDER / "journal-1.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines)
                                                       + '{"event": "done", "key": "k", "ste')
    ledger = Ledger(tmp_path, "k", 0)
    assert [ledger.complete(stem, "1") for stem in "abcde"] == [True, False, False, False, False]
    assert ledger.complete("e", "2")
    (tmp_path / ".b_s0_00.png.x1.tmp").write_bytes(b"half")  # what a killed write of b left
    assert ledger.start("b", "1", [tmp_path / "b_s0_00.png"]) == set()
    assert not (tmp_path / ".b_s0_00.png.x1.tmp").exists()
    assert ledger.start("mine", "1", [tmp_path / "mine_s0_00.png"]) == {tmp_path / "mine_s0_00.png"}  # not this run's
    # e under other content: its outputs are someone else's
    assert ledger.start("e", "1", [tmp_path / "e_s0_00.png"]) == {tmp_path / "e_s0_00.png"}


def test_the_ledger_touches_only_an_inputs_exact_names(tmp_path):
    """Retrying photo ``a`` removes its own temporary files, never those of ``a_smile`` or of another
    seed, and takes only its own names as its outputs."""
    from runtime.cluster.ledger import FOLDER, Ledger

    (tmp_path / FOLDER).mkdir()
    (tmp_path / FOLDER / "journal-1.jsonl").write_text(json.dumps(
        {"event": "started", "key": "k", "stem": "a", "input": "1", "preexisting": []}) + "\n")
    theirs = [".a_smile_s0_00.png.k2j3h4.tmp", "a_smile_s0_00.png", ".a_s1_00.png.zz.tmp", ".a_s0_00.png.zz"]
    mine = [".a_s0_00.png.k2j3h4.tmp", ".a_face1_s0_mean.png.q_9.tmp"]
    for name in theirs + mine:
        (tmp_path / name).write_bytes(b"x")
    ledger = Ledger(tmp_path, "k", 0)
    assert ledger.start("a", "1") == set()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(theirs)
    (tmp_path / "a_face0_s0_00.png").write_bytes(b"x")
    assert Ledger(tmp_path, "k", 0).start("a", "2") == {tmp_path / "a_face0_s0_00.png"}  # a_smile's is not a's


def test_other_images_under_the_same_names_are_not_taken_for_done(local_ray, demo, tmp_path, capsys):
    """A second run into the same folder with other images of the same names: their outputs are not
    kept as done (they are someone else's: refused without --overwrite, redone with it), and
    --overwrite redoes even inputs that are complete."""
    first, second = faces(tmp_path / "first", 3), tmp_path / "second"
    second.mkdir()
    for i, path in enumerate(sorted(first.iterdir())):  # the same names, other pixels
        Image.fromarray(np.random.default_rng(100 + i).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            second / path.name)
    out = tmp_path / "ray"
    assert on_ray(demo, first, out, "--n", "2") == 0
    old = files(out)
    capsys.readouterr()
    assert run_main([str(demo), "--input", str(second), "--out", str(out), "--ray", "--n", "2", "--json"]) == 2
    summary = json.loads(capsys.readouterr().out)
    assert (summary["skipped"], summary["done"], summary["failed"]) == (0, 0, 3), summary
    assert files(out) == old
    assert on_ray(demo, second, out, "--n", "2", "--overwrite") == 0
    assert files(out) == plain(demo, second, tmp_path / "plain", "--n", "2")
    capsys.readouterr()
    assert run_main([str(demo), "--input", str(second), "--out", str(out), "--ray", "--n", "2", "--json",
                     "--overwrite"]) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 3


def test_ray_flags_need_ray_and_an_export(demo, tmp_path, capsys):
    assert run_main([str(demo), "--input", str(faces(tmp_path / "in", 1)), "--actor-batch", "4"]) == 2
    assert "--ray" in capsys.readouterr().err
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    assert run_main([str(weights), "--input", str(tmp_path / "in"), "--ray"]) == 2
    assert "cvdvae export" in capsys.readouterr().err


def test_without_an_address_ray_is_started_here_not_joined_from_a_file_another_process_left(tmp_path, monkeypatch):
    """Ray's own resolver (the oracle) joins the cluster named in its temp folder's
    ``ray_current_cluster`` when given no address (``ray.cluster_utils.Cluster`` writes one); given
    ours, it starts a local Ray, unless ``$RAY_ADDRESS`` or the flag names a cluster."""
    from ray._private.services import canonicalize_bootstrap_address

    from runtime import ray_session

    (tmp_path / "ray_current_cluster").write_text("10.9.8.7:6399")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert canonicalize_bootstrap_address(None, str(tmp_path)) == "10.9.8.7:6399"
    assert canonicalize_bootstrap_address(ray_session.ray_address(None), str(tmp_path)) is None
    assert ray_session.ray_address("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert ray_session.ray_address(None) == "10.1.2.3:6379"
    assert ray_session.ray_address("auto") == "auto"

    calls = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("RAY_ADDRESS")
    ray_session.start_or_join(None, num_cpus=3)
    assert calls == [{"address": "local", "num_cpus": 3, "include_dashboard": False, "log_to_driver": False,
                      "configure_logging": False}]


def test_rays_messages_stay_off_stdout_and_a_ray_started_for_the_run_is_let_go(monkeypatch, capsys):
    """Ray's driver prints the cluster's error messages through its own ``print_to_stdstream`` (the
    oracle of where they land) to ``sys.stdout``, whatever ``log_to_driver`` says: within a run's
    Ray they reach stderr, never the stdout ``--json`` writes to. A Ray started for the run is
    shut down at its end; one the process already had is kept."""
    from ray._private.worker import print_to_stdstream

    from runtime import ray_session

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append("init"))
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    capsys.readouterr()
    with ray_session.ray_for_a_run(None):
        print_to_stdstream({"lines": ["A worker died or was killed"], "pid": "raylet", "ip": "127.0.0.1",
                            "is_err": False}, ignore_prefix=False)
        assert calls == ["init"]
    print("ours")
    out, err = capsys.readouterr()
    assert out == "ours\n" and "A worker died or was killed" in err, (out, err)
    assert calls == ["init", "shutdown"]
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    with ray_session.ray_for_a_run(None):
        pass
    assert calls == ["init", "shutdown"]
