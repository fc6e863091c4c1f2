"""Checks before a sweep starts: everything that can fail at start is checked before anything is written.

:func:`check_local` runs before Ray starts (storage folder, results name, MLflow store, CPUs/GPUs of this
machine); :func:`check_cluster` runs after ``ray.init(address=...)`` and compares a trial's resources with the
cluster's nodes. Each failure is one :class:`PreflightError` line; the caller writes nothing when one is raised,
so rerunning the same command after fixing the cause works.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tuneclust.rules import check_tracking_uri
from tuneclust.spec import Spec
from tuneclust.yamlsafe import clip

PSEUDO_FILESYSTEMS = ("/proc", "/sys", "/dev")
TRIAL_PATH_RESERVE = 120
"""Characters kept free under the results folder for Ray's trial folders and checkpoint names."""


class PreflightError(RuntimeError):
    """A sweep cannot start; ``str(err)`` is one line naming what to fix."""


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a name too long, a loop of links: it does not exist as a usable path
        return False


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not _exists(p) and p != p.parent:
        p = p.parent
    return p


def check_local_folder(out: Path) -> None:
    """``out`` (STORAGE/NAME) is, or can be created as, a writable folder on a real filesystem."""
    if str(out).startswith(PSEUDO_FILESYSTEMS):
        raise PreflightError(
            f"storage: {clip(str(out.parent), 120)} is a system pseudo-filesystem, not a folder"
        )
    if _exists(out) and not out.is_dir():
        raise PreflightError(f"storage: {clip(str(out), 150)} exists and is not a folder")
    base = _existing_ancestor(out.parent)
    if not base.is_dir():
        raise PreflightError(f"storage: {clip(str(base), 150)} is a file, expected a folder (or a new path)")
    if not os.access(base, os.W_OK | os.X_OK):
        raise PreflightError(f"storage: {clip(str(base), 150)} is not writable by this user")
    try:
        name_max = os.pathconf(base, "PC_NAME_MAX")
        path_max = os.pathconf(base, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in out.relative_to(base).parts:
        if len(part.encode()) > name_max:
            raise PreflightError(
                f"storage: the folder name {clip(part, 40)!r} is {len(part.encode())} bytes; "
                f"this filesystem allows {name_max}"
            )
    if len(str(out).encode()) + TRIAL_PATH_RESERVE > path_max:
        raise PreflightError(
            f"storage: {clip(str(out), 80)} is too long a path for trial folders (max {path_max})"
        )


def check_remote_storage(uri: str) -> None:
    """A storage URI (``s3://``, ``gs://``...) as :func:`tuneclust.storage.check_storage` checks it."""
    from tuneclust.storage import check_storage

    try:
        check_storage(uri)
    except (OSError, ValueError) as e:
        raise PreflightError(f"storage: {clip(uri, 100)}: {clip(str(e), 150)}") from None


def check_mlflow(uri: str) -> None:
    """The tracking URI has a scheme MLflow accepts and, for sqlite, its database file can be written."""
    try:
        check_tracking_uri(uri)
    except ValueError as e:
        raise PreflightError(f"tracking.mlflow.uri: {clip(uri, 80)}: {e}") from None
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
        if str(db) in ("", ":memory:"):
            raise PreflightError("tracking.mlflow.uri: an in-memory sqlite store would lose the sweep's runs")
        if str(db.resolve()).startswith(PSEUDO_FILESYSTEMS):
            raise PreflightError(
                f"tracking.mlflow.uri: {clip(str(db), 100)} is on a system pseudo-filesystem"
            )
        if _exists(db):
            if not db.is_file() or not os.access(db, os.R_OK | os.W_OK):
                raise PreflightError(f"tracking.mlflow.uri: {clip(str(db), 120)} is not a writable file")
            return
        base = _existing_ancestor(db.parent)
        if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
            raise PreflightError(
                f"tracking.mlflow.uri: cannot create {clip(str(db), 120)} ({clip(str(base), 80)} is not a writable folder)"
            )


MLFLOW_TIMEOUT_S = 5.0
"""How long the start check waits for an ``http(s)://`` MLflow tracking server to answer."""


def check_mlflow_server(uri: str, timeout: float = MLFLOW_TIMEOUT_S) -> None:
    """An ``http(s)://`` tracking server answers ``GET <uri>/health`` (``mlflow server`` serves it) within
    ``timeout`` seconds. Any HTTP answer below 500 counts (an auth proxy's 401 is MLflow's business later);
    a refused connection, a timeout, a name that does not resolve or a 5xx is one :class:`PreflightError` line."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as e:
        if e.code < 500:
            return
        why = f"HTTP {e.code} {e.reason}"
    except urllib.error.URLError as e:
        why = str(e.reason)
    except (OSError, ValueError) as e:  # a timeout while reading, a malformed URL
        why = str(e) or type(e).__name__
    raise PreflightError(
        f"tracking.mlflow.uri: the MLflow server at {clip(uri, 100)} is not reachable ({clip(why, 100)}); "
        "start it, or fix the URI"
    )


def local_capacity() -> tuple[float, float]:
    """CPUs and GPUs of this machine (what a local Ray would offer), without starting Ray."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    try:
        import torch

        gpus = float(torch.cuda.device_count())
    except ImportError:
        gpus = 0.0
    return cpus, gpus


def check_resources_local(spec: Spec) -> None:
    """One trial's CPUs and GPUs fit this machine (else Ray would wait forever, or fail after starting)."""
    cpus, gpus = local_capacity()
    r = spec.resources
    if r.gpu > 0 and gpus == 0:
        raise PreflightError(
            "resources.gpu: the spec asks for GPUs but this machine has none; use --smoke, or --set resources.gpu=0"
        )
    if r.gpu > gpus:
        raise PreflightError(f"resources.gpu: a trial asks for {r.gpu:g} GPUs; this machine has {gpus:g}")
    if r.cpu > cpus:
        raise PreflightError(
            f"resources.cpu: a trial asks for {r.cpu:g} CPUs; this machine has {cpus:g} "
            f"(--set resources.cpu={cpus:g}, or run on a cluster with --address)"
        )


def check_local(
    spec: Spec, out: Path, mlflow_uri: str | None, storage: str | None, address: str | None
) -> None:
    """Every check that needs no Ray: called by ``run_sweep`` before it writes anything or starts Ray."""
    root = storage or spec.storage
    if "://" in root:
        check_remote_storage(root)
    else:
        check_local_folder(out)
    if mlflow_uri is not None:
        check_mlflow(mlflow_uri)
        if mlflow_uri.lower().startswith(("http://", "https://")):
            check_mlflow_server(mlflow_uri)
    if address is None:
        check_resources_local(spec)
    else:
        check_address(address)


ADDRESS_TIMEOUT_S = 5.0


def check_address(address: str) -> None:
    """A ``host:port`` address answers on TCP within :data:`ADDRESS_TIMEOUT_S` (Ray itself retries a wrong one for
    minutes); ``auto`` and ``ray://`` addresses are left to Ray."""
    import socket

    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not host or not port.isdigit():
        return
    try:
        with socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as e:
        raise PreflightError(
            f"--address {clip(address, 80)}: no Ray cluster answers there ({e.strerror or type(e).__name__}); "
            "on a `ray up` head node use --address auto"
        ) from None


def _autoscales() -> bool:
    """Whether the connected cluster was launched with an autoscaler config (``ray up``), which may start a node
    that fits. ``ray up`` leaves that config on the head node, where ``--address auto`` drivers run. (Ray's GCS
    key ``__autoscaling_status`` is no signal: every local Ray's monitor writes it.)"""
    from tuneclust import raycompat

    return raycompat.autoscales()


def check_cluster(spec: Spec, nodes: list[dict[str, Any]] | None = None) -> None:
    """With ``--address``: some alive node has a trial's CPUs and GPUs, or the cluster autoscales."""
    import ray

    nodes = ray.nodes() if nodes is None else nodes
    need = {"CPU": spec.resources.cpu, "GPU": spec.resources.gpu}
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    if any(all(res.get(k, 0.0) >= v for k, v in need.items() if v > 0) for res in alive):
        return
    if _autoscales():
        return
    biggest = max(alive, key=lambda res: (res.get("GPU", 0.0), res.get("CPU", 0.0)), default={})
    raise PreflightError(
        f"resources: a trial needs {need['CPU']:g} CPU and {need['GPU']:g} GPU; the cluster's largest node has "
        f"{biggest.get('CPU', 0):g} CPU and {biggest.get('GPU', 0):g} GPU and it does not autoscale"
    )
