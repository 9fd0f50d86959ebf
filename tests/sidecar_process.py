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
    grpc_addr = f"127.0.0.1:{free_port()}"
    admin_addr = f"127.0.0.1:{free_port()}"
    log = Path(workdir) / "cdc-cache.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(binary()), "demo", "--grpc-listen", grpc_addr, "--admin-listen", admin_addr, *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"cdc-cache demo exited with {process.returncode}:\n{log_tail(log)}")
            try:
                status, _ = http_get(f"http://{admin_addr}/readyz", timeout=2)
            except OSError:
                status = None
            if status == 200:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"cdc-cache demo not ready within 60 s (last /readyz: {status}):\n{log_tail(log)}")
            time.sleep(0.2)
        yield grpc_addr, admin_addr
    finally:
        stop(process)


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
