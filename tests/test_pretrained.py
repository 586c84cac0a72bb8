"""Published weights by name (issue 40): the table against the registry and the README, and the download
against a real HTTP server on 127.0.0.1 that this file starts (these machines reach no other network).

The served file is the micro variant's weights with random values, registered for a test as a table
entry of its own (``swinv2_micro_window4_32.test_in10``); no test builds a larger model.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import signal
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import mindspore as ms
import numpy as np
import pytest

import mindswin
import mindswin.pretrained as pretrained
from mindswin.checkpoint import LAYOUTS, CheckpointError
from mindswin.config import ConfigError, load_config
from mindswin.models import list_models, model_spec
from mindswin.models import published as table
from mindswin.pretrained import PretrainedWeights, WeightFile, download

from helpers import PYTHON, ROOT, cli, free_port, msrun, randomize, register_published

MICRO = "swinv2_micro_window4_32"
TAG = "test_in10"
SERVED = "/weights/micro.safetensors"


# ---------------------------------------------------------------- the table, the registry and the README

def test_every_variant_with_published_weights_is_in_the_table_with_its_registered_geometry():
    # the variants that have none: the CPU demo models and the paper's H and G (no released classifiers)
    without = {name for name in list_models() if name.startswith(("swinv2_micro", "swinv2_nano", "swinv2_huge",
                                                                   "swinv2_giant"))}
    assert set(table.DEFAULT_TAGS) == set(list_models()) - without and len(table.DEFAULT_TAGS) == 12
    assert len(set(pretrained.list_pretrained())) == len(table.PRETRAINED) == 14
    for weights in table.PRETRAINED:
        spec = model_spec(weights.model)
        assert spec.name == weights.model, weights.name
        declared = (weights.img_size, weights.window_size, weights.num_classes, tuple(weights.pretrained_window_sizes))
        assert declared == (spec.img_size, spec.window_size, spec.num_classes,
                            tuple(spec.pretrained_window_sizes)), weights.name
        assert weights.top1 is None or (70 < weights.top1 < 90 and weights.top1_source), weights.name
        assert weights.files and len({f.source for f in weights.files}) == len(weights.files)


_URL_FORMS = {
    "official": r"https://github\.com/SwinTransformer/storage/releases/download/v2\.0\.0/"
                r"swinv2_(tiny|small|base|large)_patch4_window\d+(to\d+)?_\d+(to\d+)?(_22k|_22kto1k_ft)?\.pth",
    "timm": r"https://huggingface\.co/timm/(swinv2_\w+)\.(\w+)/resolve/main/model\.safetensors",
    "hf": r"https://huggingface\.co/microsoft/swinv2-[a-z0-9-]+/resolve/main/pytorch_model\.bin",
    "mindcv": r"https://(download\.mindspore\.cn|download-mindspore\.osinfra\.cn)/toolkits/mindcv/swinv2/"
              r"swinv2_tiny_window8-([0-9a-f]{8})(-910v2)?\.ckpt",
}
_EXTENSIONS = {"official": ".pth", "timm": ".safetensors", "hf": ".bin", "mindcv": ".ckpt"}


def test_every_file_has_its_publishers_url_form_a_known_layout_and_a_cache_name_of_its_own():
    cache_names = []
    for weights in table.PRETRAINED:
        for file in weights.files:
            match = re.fullmatch(_URL_FORMS[file.source], file.url)
            assert match, file.url
            assert file.layout in LAYOUTS and file.layout == file.source  # each publisher has its own names
            assert file.url.endswith(_EXTENSIONS[file.source])
            assert file.cache_name.startswith(file.source + "/")
            assert os.path.basename(file.cache_name) == os.path.basename(file.url)
            cache_names.append(file.cache_name)
            if file.source == "timm":
                assert match[1] == weights.model and match[2] == weights.tag  # timm's name.tag is the repository
            if file.source == "official":  # the official file name states the geometry the entry declares
                size, window, img = weights.model.split("_")[1], weights.window_size, weights.img_size
                stem = (f"swinv2_{size}_patch4_window12to{window}_192to{img}_22kto1k_ft"
                        if any(weights.pretrained_window_sizes) else f"swinv2_{size}_patch4_window{window}_{img}"
                        + ("_22k" if weights.num_classes == 21841 else ""))
                assert file.url.endswith(f"/{stem}.pth"), (weights.name, file.url)
                hf = next(f for f in weights.files if f.source == "hf")
                assert hf.url.split("/")[4] == stem.replace("_", "-")  # transformers named its repositories so
            if file.source == "mindcv":
                assert file.sha256 == match[2]  # mindcv's name carries the first 8 hex digits of the sha256
            else:
                assert file.sha256 is None  # not published by the official release, not read from the Hub
    assert len(cache_names) == len(set(cache_names))


def test_pretrained_true_means_timms_default_and_mindcvs_for_a_mindcv_name():
    assert pretrained.resolve_pretrained("swinv2_tiny_window8_256").weights.name == "swinv2_tiny_window8_256.ms_in1k"
    mindcv = pretrained.resolve_pretrained("swinv2_tiny_window8", True)
    assert mindcv.weights.tag == "mindcv_in1k" and mindcv.file.url.endswith("swinv2_tiny_window8-3ef8b787.ckpt")
    timm_style = pretrained.resolve_pretrained("swinv2_base_window12to24_192to384.ms_in22k_ft_in1k", True)
    assert timm_style.weights.top1 == 87.1 and timm_style.file.source == "official"
    assert pretrained.resolve_pretrained("swinv2_tiny_window8_256", "ms_in1k@timm").file.source == "timm"
    assert pretrained.resolve_pretrained("swinv2_tiny_window8_256", "@hf").file.layout == "hf"
    assert pretrained.resolve_pretrained("swinv2_tiny_window8_256", "mindcv_910v2_in1k").file.sha256 == "70c5e903"
    with pytest.raises(ConfigError, match="no weights tagged 'ms_in22k' are published for swinv2_tiny_window8_256; "
                                          "its tags: ms_in1k, mindcv_in1k, mindcv_910v2_in1k"):
        pretrained.resolve_pretrained("swinv2_tiny_window8_256", "ms_in22k")
    with pytest.raises(ConfigError, match="is not published by mindcv; it is by official, timm, hf"):
        pretrained.resolve_pretrained("swinv2_base_window8_256", "@mindcv")
    # True extended with a source, as a user extends --pretrained True: the default weights' copy there
    by_timm = pretrained.resolve_pretrained("swinv2_tiny_window8_256", "True@timm")
    assert by_timm == pretrained.resolve_pretrained("swinv2_tiny_window8_256", "@timm")
    assert by_timm.file.source == "timm"
    result = cli("train.py", "--model", "swinv2_base_window12_192", "--pretrained", "True@mindcv", "--data_dir", "/x")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "is not published by mindcv; it is by official, timm" in result.stderr, result.stderr
    with pytest.raises(ConfigError, match=f"{MICRO} has no published weights"):
        pretrained.resolve_pretrained(MICRO, True)


def test_the_sources_preference_of_a_site_picks_the_copy(monkeypatch):
    monkeypatch.setenv(pretrained.SOURCES_VARIABLE, "mindcv,timm")
    assert pretrained.resolve_pretrained("swinv2_small_window8_256").file.source == "timm"
    assert pretrained.resolve_pretrained("swinv2_tiny_window8").file.source == "mindcv"
    assert pretrained.resolve_pretrained("swinv2_small_window8_256", "@hf").file.source == "hf"  # named wins
    monkeypatch.setenv(pretrained.SOURCES_VARIABLE, "github")
    with pytest.raises(ConfigError, match="names unknown sources github"):
        pretrained.resolve_pretrained("swinv2_small_window8_256")


def test_the_fine_tuning_recipes_name_the_22k_weights_they_start_from():
    recipes = sorted((ROOT / "configs" / "swinv2").glob("*_22kto1k_ft.yaml"))
    assert len(recipes) == 4
    for recipe in recipes:
        config = load_config(str(recipe))
        assert not config.ckpt_path
        choice = pretrained.resolve_pretrained(config.model, config.pretrained)
        size = config.model.split("_")[1]
        assert choice.weights.name == f"swinv2_{size}_window12_192.ms_in22k"
        # the weights' window is the recipe's pretrained window (the last stage's 6 is the 192 px map's side)
        assert config.pretrained_window_sizes == [choice.weights.window_size] * 3 + [6]
        assert choice.weights.num_classes == 21841 and config.class_map == "imagenet22k_to_1k"


def test_the_readme_table_is_the_generated_one_and_its_first_example_loads_pretrained(capsys):
    from mindswin.pretrained.__main__ import main

    assert main(["--markdown"]) == 0
    generated = capsys.readouterr().out
    assert generated == pretrained.markdown_table() and generated.count("\n") == 2 + len(table.PRETRAINED)
    readme = (ROOT / "README.md").read_text()
    begin, end = "<!-- pretrained table: python -m mindswin.pretrained --markdown -->\n", "<!-- end of table -->"
    assert readme.split(begin)[1].split(end)[0] == generated
    first_python = readme.split("```python\n")[1].split("```")[0]
    assert re.search(r"create_model\(name, pretrained=True\)", first_python), first_python


@pytest.mark.parametrize("value, message", [
    ("no_such_weights", "is neither a tag"),
    ("ms_in1k@github", "names the unknown source 'github'"),
    ("swinv2_tiny_window8_256.ms_in22k", "unknown pretrained tag 'ms_in22k'"),
    (MICRO, f"names {MICRO}, which has no published weights"),
])
def test_a_wrong_pretrained_value_is_one_line_naming_the_key(value, message):
    result = cli("train.py", "--pretrained", value, "--data_dir", "nowhere")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: command line: 'pretrained'") and message in result.stderr


def test_pretrained_for_a_model_without_weights_is_refused_before_anything_runs():
    result = cli("train.py", "--model", MICRO, "--pretrained", "True", "--data_dir", "nowhere")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"'pretrained' True with model {MICRO}: {MICRO} has no published weights" in result.stderr


# ---------------------------------------------------------------- a real HTTP server on 127.0.0.1

class Server:
    """Serves ``bodies`` by path; records every request; can cut, corrupt, stall or slow a response."""

    def __init__(self) -> None:
        self.bodies: Dict[str, bytes] = {}
        self.requests: List[Tuple[str, Optional[str]]] = []
        self.cut_once: Set[str] = set()
        self.stall: Set[str] = set()
        self.chunk_delay = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path in server.stall:
                    time.sleep(3)  # longer than the client's timeout
                    return
                body = server.bodies.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"])[1])
                    if start >= len(body):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                data = body[start:]
                if self.path in server.cut_once:  # half the promised body, then the connection closes
                    server.cut_once.discard(self.path)
                    self.wfile.write(data[:len(data) // 2])
                    return
                for offset in range(0, len(data), 1 << 16):
                    self.wfile.write(data[offset:offset + (1 << 16)])
                    time.sleep(server.chunk_delay)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def gets(self, path: str = SERVED) -> List[Optional[str]]:
        """The Range header of each request for ``path`` (None: the whole body)."""
        return [rng for requested, rng in self.requests if requested == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _safetensors(tensors: Dict[str, np.ndarray]) -> bytes:
    """The safetensors encoding of float32 ``tensors`` (8-byte header length, JSON header, raw data)."""
    header, offset, blobs = {}, 0, []
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


@pytest.fixture(scope="module")
def weights_body() -> bytes:
    """The micro model's weights (random, non-trivial), official names, as a safetensors file."""
    model = randomize(mindswin.create_model(MICRO), seed=3)
    return _safetensors({name: p.asnumpy() for name, p in model.parameters_and_names()})


@pytest.fixture
def server(weights_body):
    served = Server()
    served.bodies[SERVED] = weights_body
    yield served
    served.close()


@pytest.fixture
def entry(server, weights_body, monkeypatch, tmp_path):
    """``swinv2_micro_window4_32.test_in10``: the served file as a table entry with its sha256, the cache in tmp."""
    file = WeightFile("official", server.url + SERVED, "official", "official/micro.safetensors",
                      hashlib.sha256(weights_body).hexdigest())
    weights = register_published(monkeypatch, PretrainedWeights(MICRO, TAG, "test", 32, 4, 10, (0, 0, 0), None, "",
                                                                 (file,)))
    monkeypatch.setenv(download.CACHE_VARIABLE, str(tmp_path / "cache"))
    monkeypatch.setenv(download.TIMEOUT_VARIABLE, "5")
    for variable in (download.MIRROR_VARIABLE, download.OFFLINE_VARIABLE, "HF_ENDPOINT", "LOCAL_RANK",
                     "MS_WORKER_NUM", "RANK_TABLE_FILE", pretrained.SOURCES_VARIABLE):
        monkeypatch.delenv(variable, raising=False)
    return weights


def _logits(model) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    return model(ms.Tensor(x)).asnumpy()


def _leftovers(folder: Path) -> List[str]:
    """Files in the cache other than the lock folder's (empty lock files)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and ".locks" not in p.parts)


def test_a_fresh_download_loads_the_same_logits_as_the_file_and_a_second_call_downloads_nothing(
        entry, server, weights_body, tmp_path):
    on_disk = tmp_path / "micro.safetensors"
    on_disk.write_bytes(weights_body)
    expected = _logits(mindswin.create_model(MICRO, checkpoint_path=str(on_disk)))
    downloaded = mindswin.create_model(MICRO, pretrained=True)
    assert server.gets() == [None]
    cached = tmp_path / "cache" / "official" / "micro.safetensors"
    assert cached.read_bytes() == weights_body and _leftovers(tmp_path / "cache") == ["official/micro.safetensors"]
    assert np.array_equal(_logits(downloaded), expected)
    # again, by timm's name.tag, and with the server gone: the cache answers, no request is made
    server.close()
    again = mindswin.create_model(f"{MICRO}.{TAG}", pretrained=True)
    assert len(server.requests) == 1 and np.array_equal(_logits(again), expected)


def test_the_run_path_of_every_script_fetches_pretrained_and_ckpt_path_wins(entry, server, weights_body, tmp_path):
    from mindswin.cli import _with_pretrained
    from mindswin.engine.builder import model_from_config

    shared = tmp_path / "shared"
    shared.mkdir()  # a named pretrained_dir must exist (test_sweep)
    config = load_config(overrides={"model": MICRO, "pretrained": True, "pretrained_dir": str(shared)})
    model, report = model_from_config(config, 10, training=True)  # train.py (and the tasks) build so
    assert report.path == str(shared / "official" / "micro.safetensors") and report.layout == "official"
    assert len(report.loaded) == len(list(model.get_parameters())) and server.gets() == [None]
    evaluated, name = _with_pretrained(config)  # validate.py, infer.py, export.py: the file, before the metadata
    assert evaluated.ckpt_path == report.path and name == f"{MICRO}.{TAG}" and server.gets() == [None]
    own = tmp_path / "own.safetensors"
    own.write_bytes(weights_body)
    both = load_config(overrides={"model": MICRO, "pretrained": True, "ckpt_path": str(own),
                                  "pretrained_dir": str(tmp_path / "unused")})
    assert model_from_config(both, 10, training=True)[1].path == str(own)
    assert not (tmp_path / "unused").exists() and len(server.requests) == 1


def test_a_download_cut_in_the_middle_resumes(entry, server, weights_body, tmp_path):
    server.cut_once.add(SERVED)
    path = download.fetch(entry.files[0])
    assert open(path, "rb").read() == weights_body
    half = (len(weights_body)) // 2
    assert server.gets() == [None, f"bytes={half}-"]  # the second request asks only for the rest


def test_a_killed_download_leaves_a_partial_that_never_looks_complete_and_the_next_call_resumes(
        entry, server, weights_body, tmp_path):
    cached = tmp_path / "cache" / "official" / "micro.safetensors"
    cached.parent.mkdir(parents=True)
    cut = len(weights_body) // 3
    Path(str(cached) + ".partial").write_bytes(weights_body[:cut])  # what a kill mid-download leaves
    assert not cached.exists()
    assert download.fetch(entry.files[0]) == str(cached)
    assert cached.read_bytes() == weights_body and server.gets() == [f"bytes={cut}-"]
    assert _leftovers(tmp_path / "cache") == ["official/micro.safetensors"]


def test_a_corrupt_body_is_refused_and_removed_in_one_line(entry, server, weights_body, tmp_path):
    server.bodies[SERVED] = weights_body[:-4] + b"\0\0\0\0"
    result = cli("export.py", "--model", MICRO, "--pretrained", "True")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {tmp_path / 'cache' / 'official' / 'micro.safetensors'} from "
                                    f"{server.url}{SERVED} is corrupt: its sha256 is ")
    assert f"the official source publishes {entry.files[0].sha256}..." in result.stderr
    assert _leftovers(tmp_path / "cache") == []
    # a corrupt file already in the cache is refused and removed just the same
    cached = tmp_path / "cache" / "official" / "micro.safetensors"
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"not the weights")
    with pytest.raises(CheckpointError, match="is corrupt.*removed it; run again to download it again"):
        download.fetch(entry.files[0])
    assert not cached.exists()


def _one_error_line(result, url: str, cache: Path) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot download {url} to {cache}: "), lines
    assert "place it by hand: download " in lines[0] and "--ckpt_path" in lines[0]
    return lines[0]


def test_a_404_a_closed_port_a_stalled_server_and_offline_are_one_line_each(entry, server, tmp_path, monkeypatch):
    cache = tmp_path / "cache" / "official" / "micro.safetensors"
    export = ("export.py", "--model", MICRO, "--pretrained", "True")
    server.bodies.clear()
    assert "HTTP 404 Not Found" in _one_error_line(cli(*export), server.url + SERVED, cache)
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv(download.MIRROR_VARIABLE, closed)  # the mirror replaces the publisher's URL
    line = _one_error_line(cli(*export), f"{closed}/official/micro.safetensors", cache)
    assert "Connection refused" in line
    monkeypatch.delenv(download.MIRROR_VARIABLE)
    server.stall.add(SERVED)
    monkeypatch.setenv(download.TIMEOUT_VARIABLE, "0.5")
    began = time.time()
    assert "timed out" in _one_error_line(cli(*export), server.url + SERVED, cache)
    assert time.time() - began < 10
    assert _leftovers(tmp_path / "cache") == []
    monkeypatch.setenv(download.OFFLINE_VARIABLE, "1")
    requests = len(server.requests)
    offline = cli(*export)
    assert offline.returncode == 2 and offline.stderr.count("\n") == 1
    assert offline.stderr.startswith(f"error: {cache} is not in the cache and MINDSWIN_OFFLINE forbids "
                                     f"downloading {server.url}{SERVED}; place it by hand")
    assert len(server.requests) == requests


def test_a_full_disk_keeps_nothing_and_says_where(entry, server, tmp_path):
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
    try:
        with pytest.raises(CheckpointError) as caught:
            download.fetch(entry.files[0])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    message = str(caught.value)
    assert "\n" not in message and f"cannot download {server.url}{SERVED}" in message
    assert f"File too large in {tmp_path / 'cache' / 'official'}; free space there" in message
    assert _leftovers(tmp_path / "cache") == []


def test_a_mirror_and_a_shared_folder_are_used_as_they_are(entry, server, weights_body, tmp_path, monkeypatch):
    server.bodies["/mirror/official/micro.safetensors"] = weights_body
    monkeypatch.setenv(download.MIRROR_VARIABLE, server.url + "/mirror/")
    path = download.fetch(entry.files[0])
    assert server.gets("/mirror/official/micro.safetensors") == [None] and server.gets() == []
    # a folder on shared storage that already holds the file: no request at all, whatever the network
    shared = tmp_path / "shared"
    (shared / "official").mkdir(parents=True)
    (shared / "official" / "micro.safetensors").write_bytes(open(path, "rb").read())
    monkeypatch.setenv(download.MIRROR_VARIABLE, f"http://127.0.0.1:{free_port()}")
    assert download.fetch(entry.files[0], pretrained_dir=str(shared)) == str(shared / "official" /
                                                                              "micro.safetensors")
    assert len(server.requests) == 1
    monkeypatch.delenv(download.MIRROR_VARIABLE)
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    hub = pretrained.resolve_pretrained("swinv2_tiny_window8_256", "@timm").file
    assert download.source_url(hub) == ("https://hf-mirror.example/timm/swinv2_tiny_window8_256.ms_in1k/resolve/"
                                        "main/model.safetensors")
    monkeypatch.delenv(download.CACHE_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.default_cache_dir() == str(tmp_path / "xdg" / "mindswin" / "pretrained")


_WORKER = """\
import json, logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from mindswin.pretrained.download import fetch
from mindswin.models.published import WeightFile
file = WeightFile("official", sys.argv[1], "official", "official/micro.safetensors", sys.argv[2])
try:
    print(json.dumps({"path": fetch(file, pretrained_dir=sys.argv[3])}))
except Exception as exc:
    print(json.dumps({"error": str(exc)}))
"""


def _worker(script: Path, local_rank: int, url: str, sha256: str, cache: Path) -> subprocess.Popen:
    """A process as msrun starts one on a node (MS_WORKER_NUM set, DEVICE_ID its local rank)."""
    env = {**os.environ, "MS_WORKER_NUM": "2", "DEVICE_ID": str(local_rank), "PYTHONPATH": str(ROOT),
           download.WAIT_VARIABLE: "60", download.TIMEOUT_VARIABLE: "10"}
    env.pop("LOCAL_RANK", None)
    return subprocess.Popen([PYTHON, str(script), url, sha256, str(cache)], env=env, cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _waiting(process: subprocess.Popen, timeout: float = 120) -> None:
    """Block until ``process`` logs that it waits for local rank 0."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stderr.readline()
        if "waiting for local rank 0" in line:
            return
        assert line or process.poll() is None, "the worker ended before it waited"
    raise AssertionError("the worker never waited for local rank 0")


def _result(process: subprocess.Popen) -> dict:
    out, _ = process.communicate(timeout=120)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.distributed
@pytest.mark.slow
def test_under_msrun_the_two_workers_of_a_node_download_once(entry, server, weights_body, tmp_path):
    # the same as below, with the workers msrun really starts (its DEVICE_ID, its launch order)
    server.chunk_delay = 0.02  # long enough for the other worker to find the download under way
    cache = tmp_path / "node"
    cache.mkdir()
    result, logs = msrun(ROOT / "tests" / "msrun_scripts" / "fetch_once.py", server.url + SERVED,
                         entry.files[0].sha256, cache, logs=tmp_path / "logs")
    assert result.returncode == 0, logs[-4000:]
    reports = sorted((json.loads(line.split("FETCHED ", 1)[1]) for line in logs.splitlines() if "FETCHED " in line),
                     key=lambda report: report["rank"])
    path = str(cache / "official" / "micro.safetensors")
    assert reports == [{"rank": 0, "path": path}, {"rank": 1, "path": path}], reports
    assert server.gets() == [None] and open(path, "rb").read() == weights_body


def test_two_msrun_workers_on_one_node_download_once(entry, server, weights_body, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    sha = entry.files[0].sha256
    server.chunk_delay = 0.02  # rank 0's download takes a while: rank 1 waits through it
    cache = tmp_path / "node"
    cache.mkdir()
    # rank 1 first, so that it certainly waits; then rank 0, the one that downloads
    follower = _worker(script, 1, server.url + SERVED, sha, cache)
    _waiting(follower)
    leader = _worker(script, 0, server.url + SERVED, sha, cache)
    results = [_result(leader), _result(follower)]
    path = str(cache / "official" / "micro.safetensors")
    assert results == [{"path": path}, {"path": path}], results
    assert server.gets() == [None] and open(path, "rb").read() == weights_body
    # rank 0 fails: rank 1 says why at once instead of waiting out its patience
    (tmp_path / "other").mkdir()
    follower = _worker(script, 1, server.url + "/missing.safetensors", sha, tmp_path / "other")
    _waiting(follower)
    began = time.time()
    leader = _worker(script, 0, server.url + "/missing.safetensors", sha, tmp_path / "other")
    failed = [_result(leader)["error"], _result(follower)["error"]]
    assert time.time() - began < 50
    assert failed[0].startswith(f"cannot download {server.url}/missing.safetensors") and "HTTP 404" in failed[0]
    assert failed[1] == f"local rank 0 could not fetch the weights: {failed[0]}"
    assert server.gets("/missing.safetensors") == [None]


def test_the_waiting_rank_gives_up_with_a_line_when_rank_0_never_comes(entry, tmp_path, monkeypatch):
    monkeypatch.setenv(download.WAIT_VARIABLE, "0.5")
    began = time.time()
    with pytest.raises(CheckpointError, match=r"waited 0.5 s without progress for local rank 0 to download "):
        download.fetch(entry.files[0], rank=1)
    assert time.time() - began < 5 and _leftovers(tmp_path / "cache") == []


def test_jobs_sharing_a_cache_take_turns_and_fetch_once(entry, server, weights_body):
    server.chunk_delay = 0.01
    paths, errors = [], []

    def job() -> None:
        try:
            paths.append(download.fetch(entry.files[0], rank=0))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors and len(paths) == 2 and len(set(paths)) == 1 and server.gets() == [None]
    assert open(paths[0], "rb").read() == weights_body
