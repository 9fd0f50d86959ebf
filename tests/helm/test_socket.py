"""The unix socket as the chart sets it up, with real processes under different UIDs.

The chart renders a pod whose app runs as another user than the sidecar; this test rebuilds the
socket directory the way kubelet builds that emptyDir (mode 0777, group fsGroup, setgid), runs a
server as the sidecar's UID and GID and a client as the app's, each with the pod's fsGroup as a
supplementary group (kubelet adds it to every container), and checks that the client connects,
through the group alone. Controls that must fail: the same client without the group, and the
old 0600 socket.

The server is a stand-in that creates its socket as the binary does (bind, then chmod to
CDC_CACHE_GRPC_SOCKET_MODE). With CDC_CACHE_BIN set (scripts/test sets it), the real binary runs
too: `cdc-cache demo` as the sidecar and `cdc-cache wait` as the app.

Needs root (to start processes as other users).
"""

import os
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from test_chart import BASE, CHART, KUBE_VERSION, env_of, helm, merge

SERVER = """
import os, socket, sys
path, mode = sys.argv[1], int(sys.argv[2], 8)
os.umask(0o022)  # a container's default
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
os.chmod(path, mode)  # what cdc-cache does after bind
server.listen(8)
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    conn.sendall(b"hello")
    conn.close()
"""

CLIENT = """
import socket, sys
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    client.connect(sys.argv[1])
except OSError as e:
    print(f"error {e.errno}")
else:
    print("ok " + client.recv(5).decode())
"""


def system_python():
    """An interpreter other users may run (sys.executable may live under a private home)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable):
        mode = os.stat(candidate).st_mode if os.path.exists(candidate) else 0
        if mode & stat.S_IXOTH and all(os.stat(p).st_mode & stat.S_IXOTH for p in Path(candidate).resolve().parents):
            return candidate
    pytest.skip("no Python interpreter that other users can run")


@pytest.fixture(scope="module", autouse=True)
def root_only():
    if os.geteuid() != 0:
        pytest.skip("needs root to run the server and the client as other users")


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    """What the chart renders for a unix socket, a pod fsGroup and an app with its own UID."""
    values = merge(BASE, {
        "grpcListen": "unix",
        "podSecurityContext": {"fsGroup": 3000},
        "app": {"securityContext": {"runAsUser": 10001, "runAsGroup": 10001}},
    })
    path = tmp_path_factory.mktemp("values") / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    out = helm("template", "r1", CHART, "--kube-version", KUBE_VERSION, "--values", path).stdout
    deployment = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    sidecar = next(c for c in spec["initContainers"] if c["name"] == "cdc-cache")
    app = next(c for c in spec["containers"] if c["name"] == "app")
    env = env_of(sidecar)
    socket_dir = next(m["mountPath"] for m in sidecar["volumeMounts"] if m["name"] == "cdc-cache-socket")
    assert any(m["mountPath"] == socket_dir for m in app["volumeMounts"]), "the app does not mount the socket"
    return {
        "address": env["CDC_CACHE_GRPC_LISTEN"],
        "mode": env["CDC_CACHE_GRPC_SOCKET_MODE"],
        "dir": socket_dir,
        "fs_group": spec["securityContext"]["fsGroup"],
        "sidecar": (sidecar["securityContext"]["runAsUser"], sidecar["securityContext"]["runAsGroup"]),
        "app": (app["securityContext"]["runAsUser"], app["securityContext"]["runAsGroup"]),
    }


@pytest.fixture
def volume(pod):
    """The socket directory as kubelet makes an emptyDir with an fsGroup, under a fresh root."""
    root = Path(tempfile.mkdtemp(prefix="cdc-cache-pod-", dir="/tmp"))
    os.chmod(root, 0o755)
    directory = root / pod["dir"].lstrip("/")
    directory.mkdir(parents=True)
    for parent in list(directory.parents)[: len(directory.relative_to(root).parts) - 1]:
        os.chmod(parent, 0o755)
    os.chmod(directory, 0o777)
    os.chown(directory, -1, pod["fs_group"])
    os.chmod(directory, 0o2777)  # kubelet: group rw(x) and setgid, so new files get the group
    yield root, directory
    subprocess.run(["rm", "-rf", str(root)], check=False)


def as_user(ids, groups):
    uid, gid = ids
    return {"user": uid, "group": gid, "extra_groups": groups}


def start_server(pod, path, mode):
    server = subprocess.Popen(
        [system_python(), "-c", SERVER, str(path), mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        **as_user(pod["sidecar"], [pod["fs_group"]]),
    )
    line = server.stdout.readline()
    assert line.strip() == "ready", f"server did not start: {line} {server.stderr.read() if server.poll() is not None else ''}"
    return server


def connect(pod, path, groups):
    result = subprocess.run(
        [system_python(), "-c", CLIENT, str(path)], capture_output=True, text=True, timeout=30,
        **as_user(pod["app"], groups),
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def socket_path(pod, root):
    address = pod["address"]
    assert address.startswith("unix:/"), address
    return root / address.removeprefix("unix:/")


def test_the_app_connects_through_the_pod_group_under_another_uid(pod, volume):
    root, directory = volume
    path = socket_path(pod, root)
    assert path.parent == directory
    assert pod["app"][0] != pod["sidecar"][0] and pod["fs_group"] not in pod["sidecar"]
    server = start_server(pod, path, pod["mode"])
    try:
        info = path.stat()
        assert stat.S_ISSOCK(info.st_mode)
        assert info.st_uid == pod["sidecar"][0]
        # The group comes from the directory (setgid), not from the sidecar's own GID.
        assert info.st_gid == pod["fs_group"]
        assert stat.S_IMODE(info.st_mode) == int(pod["mode"], 8) == 0o660
        assert connect(pod, path, [pod["fs_group"]]) == "ok hello"
        # Control: without the pod's group the same client is refused, so the group is what works.
        assert connect(pod, path, []) == "error 13"
    finally:
        server.kill()
        server.wait()


def test_the_old_owner_only_socket_refuses_the_app(pod, volume):
    root, _ = volume
    path = socket_path(pod, root)
    server = start_server(pod, path, "0600")
    try:
        assert connect(pod, path, [pod["fs_group"]]) == "error 13"
    finally:
        server.kill()
        server.wait()


def test_the_real_binary_serves_the_app_through_the_socket(pod, volume):
    """cdc-cache demo as the sidecar, cdc-cache wait as the app, with the chart's env."""
    binary = os.environ.get("CDC_CACHE_BIN")
    if not binary:
        pytest.skip("CDC_CACHE_BIN is not set (scripts/test sets it to the built binary)")
    source = Path(binary)
    if not source.is_absolute():
        source = Path(__file__).resolve().parents[2] / source
    if not source.is_file():
        pytest.fail(f"CDC_CACHE_BIN={binary}: no such file; run cargo build first")
    root, _ = volume
    path = socket_path(pod, root)
    # A copy every user can execute (the build tree may not be reachable for them).
    executable = root / "cdc-cache"
    executable.write_bytes(source.read_bytes())
    os.chmod(executable, 0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        admin = f"127.0.0.1:{s.getsockname()[1]}"
    env = {
        "PATH": "/usr/bin:/bin",
        "CDC_CACHE_GRPC_LISTEN": f"unix:{path}",
        "CDC_CACHE_GRPC_SOCKET_MODE": pod["mode"],
        "CDC_CACHE_ADMIN_LISTEN": admin,
        "CDC_CACHE_LOG_FORMAT": "text",
    }
    log = open(root / "demo.log", "wb")
    server = subprocess.Popen([str(executable), "demo"], env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                              **as_user(pod["sidecar"], [pod["fs_group"]]))
    try:
        def wait(groups, timeout):
            return subprocess.run([str(executable), "wait", "--addr", f"unix:{path}", "--timeout", timeout],
                                  env={"PATH": "/usr/bin:/bin"}, cwd=root, capture_output=True, text=True,
                                  timeout=120, **as_user(pod["app"], groups))

        ready = wait([pod["fs_group"]], "90s")
        assert ready.returncode == 0, f"{ready.stdout}{ready.stderr}\n{(root / 'demo.log').read_text()[-3000:]}"
        assert path.stat().st_gid == pod["fs_group"]
        # Control: the same user without the pod's group never gets through.
        denied = wait([], "3s")
        assert denied.returncode != 0, denied.stdout
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
