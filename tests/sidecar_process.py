"""Shared by the Python suites: a real `cdc-cache demo` process, stubs generated from the proto,
and small process and HTTP helpers. Imported by name: tests/conftest.py puts this directory on
the path."""

import contextlib
import importlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPO / "proto"
PROTO = PROTO_ROOT / "cdc_cache" / "v1" / "cache.proto"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=5):
    """(status, body) without raising on HTTP error statuses."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def log_tail(path, lines=40):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(process):
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def binary():
    """The cdc-cache binary under test: CDC_CACHE_BIN, default target/debug/cdc-cache."""
    path = Path(os.environ.get("CDC_CACHE_BIN", REPO / "target" / "debug" / "cdc-cache"))
    if not path.is_absolute():
        path = REPO / path
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"cdc-cache binary not found at {path}: run `cargo build` first, or point CDC_CACHE_BIN at it")
    return path


@contextlib.contextmanager
def demo(workdir, *args):
    """A running `cdc-cache demo ARGS...`, ready; yields (grpc address, admin address)."""
    with sidecar(workdir, "demo", *args) as (process, grpc_addr, admin_addr):
        yield grpc_addr, admin_addr


@contextlib.contextmanager
def sidecar(workdir, command, *args, ready=True, log_name="cdc-cache.log"):
    """A running `cdc-cache COMMAND ARGS...` on free ports; waits until ready unless told not
    to. Yields (process, grpc address, admin address); its log is WORKDIR/LOG_NAME."""
    grpc_addr = f"127.0.0.1:{free_port()}"
    admin_addr = f"127.0.0.1:{free_port()}"
    log = Path(workdir) / log_name
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(binary()), command, "--grpc-listen", grpc_addr, "--admin-listen", admin_addr, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
        )
    try:
        if ready:
            wait_ready(process, admin_addr, log, command)
        yield process, grpc_addr, admin_addr
    finally:
        stop(process)


def wait_ready(process, admin_addr, log, what="cdc-cache", timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"cdc-cache {what} exited with {process.returncode}:\n{log_tail(log)}")
        try:
            status, _ = http_get(f"http://{admin_addr}/readyz", timeout=2)
        except OSError:
            status = None
        if status == 200:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"cdc-cache {what} not ready within {timeout} s (last /readyz: {status}):\n{log_tail(log)}")
        time.sleep(0.2)


def tansu_binary():
    path = os.environ.get("TANSU_BIN") or str(Path.home() / ".cargo" / "bin" / "tansu")
    if not Path(path).exists():
        pytest.fail(f"the Tansu broker is not installed at {path}: scripts/test installs it")
    return path


@contextlib.contextmanager
def tansu(workdir):
    """A Tansu broker with in-memory storage on a free port; yields its bootstrap address."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with open(Path(workdir) / "tansu.log", "wb") as out:
        process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"tansu did not start:\n{log_tail(Path(workdir) / 'tansu.log')}")
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        stop(process)


def metric(admin_addr, name, **labels):
    """The value of one Prometheus sample from /metrics (0 when absent)."""
    status, body = http_get(f"http://{admin_addr}/metrics")
    assert status == 200, body
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in body.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{")[0] != name:
            continue
        found = series[len(name):].strip("{}")
        if all(part in found.split(",") for part in wanted.split(",") if part):
            return float(value)
    return 0.0


def generate_stubs(out):
    """The Python modules for cdc_cache.v1, generated into `out`: (cache_pb2, cache_pb2_grpc)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"grpc_tools.protoc failed:\n{result.stderr}"
    sys.path.insert(0, str(out))
    try:
        importlib.invalidate_caches()
        pb2 = importlib.import_module("cdc_cache.v1.cache_pb2")
        pb2_grpc = importlib.import_module("cdc_cache.v1.cache_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc
