"""Shared fixtures: one Ray session for the whole test run, MLflow on sqlite in a temp dir, no network."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "search_spaces").glob("*.yaml"))

os.environ.setdefault("TUNECLUST_DATA", str(ROOT / ".test-data-root-unused"))
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
# Ray 2.60's first local ray.init() here turns token auth on (RAY_AUTH_MODE=token, inherited by every process started
# afterwards) with its token in ~/.ray/auth_token; drivers run with another HOME still find it
os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(Path.home() / ".ray" / "auth_token"))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that sweeps (starting Ray takes seconds; share it)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module of tiny nets and tensors: faster than oversubscribing a shared
    CPU. The previous count is restored after the module.

    Use it in a module with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def write_spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@contextlib.contextmanager
def benchmark_script(name: str, module: str | None = None) -> Iterator[ModuleType]:
    """``benchmarks/<name>.py`` imported as the module ``module`` (default ``name``); benchmarks/ is not a package,
    so its folder is put on ``sys.path`` (spawned workers import the script by name) and taken off afterwards."""
    path = ROOT / "benchmarks" / f"{name}.py"
    module = module or name
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(module, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module] = mod
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(module, None)
        sys.path.remove(str(path.parent))


class TcpProxy:
    """A loopback TCP proxy (127.0.0.1:``port`` -> 127.0.0.1:``target``) that can be cut and restored: an outage of
    the service behind it (S3) without losing the service's data. :meth:`stop` closes the listener and drops every
    live connection (clients see refused/reset connections); :meth:`start` listens again on the same port."""

    def __init__(self, target: int, port: int = 0) -> None:
        import socket

        self.target = target
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            self.port = s.getsockname()[1]
        self._listener = None
        self._conns: list = []

    def start(self) -> None:
        import socket
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # stop() closed the listener
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:
        import socket

        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        import socket

        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept(); close() alone may not
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[int]:
    """A moto S3 server on 127.0.0.1 holding ``bucket``; yields its port. Test credentials are set in the
    environment meanwhile (inherited by Ray nodes and subprocesses started inside), restored after."""
    import boto3
    from moto.server import ThreadedMotoServer

    keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1").create_bucket(
            Bucket=bucket
        )
        yield port
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class MlflowServer:
    """A real ``mlflow server`` subprocess on 127.0.0.1 with a sqlite store in ``folder``; :meth:`stop` kills it
    (SIGKILL: an outage, not a shutdown), :meth:`start` brings it back on the same port and database."""

    def __init__(self, folder: Path, port: int = 0) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 90) -> None:
        import subprocess
        import time
        import urllib.request

        cmd = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
            "--artifacts-destination", str(self.folder / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (the child's output, closed with the child)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {(self.folder / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(
                self.proc.pid, signal.SIGKILL
            )  # its own session: the server and its workers, nothing else
            self.proc.wait(timeout=30)
        self.proc = None


@contextlib.contextmanager
def ray_cluster(prefix: str, workers: int = 2) -> Iterator[Any]:
    """``ray.cluster_utils.Cluster``: a head with 0 CPUs (the driver only) and ``workers`` nodes of 1 CPU, in a
    private temp dir on private ports, so neither it nor its address file is seen by the session's local Ray."""
    import shutil
    import tempfile

    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Ray's socket paths live under it
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp
    c = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 0, "gcs_server_port": free_port(), "include_dashboard": False},
    )
    try:
        for _ in range(workers):
            c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
        shutil.rmtree(tmp, ignore_errors=True)


def sweep_command(spec: Path | str, *options: str) -> list[str]:
    """``python -m tuneclust sweep SPEC --quiet OPTIONS...`` as a subprocess argv (this interpreter)."""
    return [sys.executable, "-m", "tuneclust", "sweep", str(spec), "--quiet", *options]
