"""Where a sweep's results live: a local/NFS folder or any URI pyarrow's filesystems accept.

``storage`` (spec key or ``--storage``) is turned into a :class:`Location` (a ``pyarrow.fs.FileSystem`` and a path
inside it) in one place. Ray's ``storage_path`` and checkpoints, ``spec.yaml``, ``mlflow.json`` and the Parquet
tables all go through it, so ``s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http`` never becomes a local
folder named ``s3:``. :func:`check_storage` validates a value without touching the network (spec validation);
:func:`locate` opens the filesystem (an S3 URI without a region may look the bucket's region up).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pyarrow.fs as pafs

SCHEMES = {
    "file": "LocalFileSystem",
    "local": "LocalFileSystem",
    "s3": "S3FileSystem",
    "gs": "GcsFileSystem",
    "gcs": "GcsFileSystem",
    "abfs": "AzureFileSystem",
    "abfss": "AzureFileSystem",
    "hdfs": "HadoopFileSystem",
    "viewfs": "HadoopFileSystem",
}
"""URI schemes pyarrow knows, and the filesystem class each needs (absent when pyarrow was built without it)."""


class StorageError(ValueError):
    """``storage`` cannot be used (unknown scheme, missing filesystem library, unreachable); one line."""


RETRY_ENV = "TUNECLUST_STORAGE_RETRY_S"
RETRY_S = 300.0
"""How long (seconds, in total) one storage read or write of tuneclust's is retried before its error is raised
(``$TUNECLUST_STORAGE_RETRY_S`` overrides it): an S3 endpoint or NFS server away for a few minutes is ridden out."""
BACKOFF_S = (0.5, 10.0)
"""The first wait between tries and the longest one (each wait doubles)."""
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
T = TypeVar("T")
_LIMITS: list[float] = []


@contextlib.contextmanager
def retry_limit(seconds: float) -> Iterator[None]:
    """Within this block, storage errors are retried for at most ``seconds`` (e.g. a best-effort write on the way
    out of a failed sweep)."""
    _LIMITS.append(seconds)
    try:
        yield
    finally:
        _LIMITS.pop()


def retry_budget() -> float:
    """:data:`RETRY_S`, or ``$TUNECLUST_STORAGE_RETRY_S`` when set (0 disables retries); at most the innermost
    :func:`retry_limit`."""
    if _LIMITS:
        return min(_LIMITS[-1], _env_budget())
    return _env_budget()


def env_seconds(name: str, default: float) -> float:
    """Seconds from the environment variable ``name`` when it holds a number >= 0, else ``default`` (the one reader
    of tuneclust's delay settings: storage retries, MLflow's final wait, the lease's delays)."""
    try:
        value = float(os.environ.get(name, ""))
    except ValueError:
        return default
    return value if 0 <= value < float("inf") else default


def _env_budget() -> float:
    return env_seconds(RETRY_ENV, RETRY_S)


def transient(e: BaseException) -> bool:
    """An error worth retrying: an ``OSError`` that is not about the path itself (pyarrow raises plain
    ``OSError`` for an unreachable endpoint, a reset connection or a timeout)."""
    return isinstance(e, OSError) and not isinstance(e, _PERMANENT) and e.errno != errno.ENAMETOOLONG


def retrying(fn: Callable[[], T], what: str, budget_s: float | None = None) -> T:
    """``fn()``, tried again after a transient error (:func:`transient`) with exponential backoff
    (:data:`BACKOFF_S`) until ``budget_s`` (default :func:`retry_budget`) have passed; then the last error is
    raised. One warning line on stderr when it first fails, one when it succeeds again."""
    budget = retry_budget() if budget_s is None else budget_s
    start, wait, failed = time.monotonic(), BACKOFF_S[0], 0
    while True:
        try:
            result = fn()
        except Exception as e:
            elapsed = time.monotonic() - start
            if not transient(e) or elapsed + wait > budget:
                raise
            if not failed:
                first = first_line(e)
                print(f"warning: storage unreachable ({what}): {first}; retrying for up to {budget:.0f} s",
                      file=sys.stderr, flush=True)  # fmt: skip
            failed += 1
            time.sleep(wait)
            wait = min(2 * wait, BACKOFF_S[1])
            continue
        if failed:
            print(f"storage reachable again ({what}) after {time.monotonic() - start:.0f} s", file=sys.stderr)
        return result


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to ``limit`` characters."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def is_uri(storage: str | Path) -> bool:
    """True for ``scheme://...`` (not for a local or NFS path)."""
    return "://" in str(storage)


def check_storage(storage: str) -> str:
    """Check ``storage`` without network access: a path, or a URI with a scheme pyarrow supports here.

    Raises:
        StorageError: the scheme is unknown, or pyarrow lacks its filesystem.
    """
    if not is_uri(storage):
        return storage
    scheme = urlsplit(storage).scheme.lower()
    if scheme not in SCHEMES:
        raise StorageError(
            f"{storage!r}: unknown storage scheme {scheme!r}; expected a path or one of "
            + ", ".join(f"{s}://" for s in sorted(SCHEMES))
        )
    if not hasattr(pafs, SCHEMES[scheme]):
        raise StorageError(
            f"{storage!r}: this pyarrow has no {SCHEMES[scheme]} (install a pyarrow built with it)"
        )
    if not urlsplit(storage).netloc and scheme not in ("file", "local"):
        raise StorageError(f"{storage!r}: no bucket/container after {scheme}://")
    return storage


@dataclass(frozen=True)
class Location:
    """A folder on a filesystem: ``fs`` (pyarrow) and ``path`` inside it; ``uri`` is what users see."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def __truediv__(self, name: str) -> Location:
        base, _, query = self.uri.partition("?")
        uri = posixpath.join(base, name) if not self.local else str(Path(self.path) / name)
        return Location(
            self.fs, posixpath.join(self.path, name), uri + (f"?{query}" if query and not self.local else "")
        )

    def __str__(self) -> str:
        return self.uri

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.File

    def has_children(self, ignore: tuple[str, ...] = ()) -> bool:
        """True when this is a folder holding anything but the files named in ``ignore`` (and their temp files
        while :meth:`write_bytes` replaces them); False for a missing path."""
        if self.fs.get_file_info(self.path).type != pafs.FileType.Directory:
            return False
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return any(not _named(i.base_name, ignore) for i in infos)

    def files(self, suffix: str = "") -> list[Location]:
        """The files directly in this folder whose name ends with ``suffix`` (sorted; none if missing); a transient
        error is retried (:func:`retrying`)."""
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        infos = retrying(lambda: self.fs.get_file_info(selector), f"listing {self.uri}")
        names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File)
        return [self / n for n in names if n.endswith(suffix) and not n.startswith(".")]

    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def delete(self) -> None:
        """Remove this folder and everything in it (nothing when missing)."""
        if self.fs.get_file_info(self.path).type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)

    def clear(self, keep: tuple[str, ...] = ()) -> None:
        """Remove everything in this folder except the entries named in ``keep`` (nothing when missing)."""
        for info in self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True)):
            if _named(info.base_name, keep):
                continue
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(info.path)
            else:
                self.fs.delete_file(info.path)

    def read_bytes(self) -> bytes:
        """The file's bytes; a transient error is retried (:func:`retrying`)."""

        def read() -> bytes:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()

        return retrying(read, f"reading {self.uri}")

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Write a whole file atomically: a temp file renamed on local disks; object stores' PUT is atomic. A
        transient error (an unreachable endpoint) is retried (:func:`retrying`), so an outage shorter than
        :func:`retry_budget` only delays the write."""
        retrying(lambda: self._write_bytes(data), f"writing {self.uri}")

    def _write_bytes(self, data: bytes) -> None:
        self.fs.create_dir(posixpath.dirname(self.path), recursive=True)
        target = self.path
        if self.local:
            target = posixpath.join(posixpath.dirname(self.path), f".{self.name}.{uuid.uuid4().hex}.tmp")
        with self.fs.open_output_stream(target) as f:
            f.write(data)
        if self.local:
            os.replace(target, self.path)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())


def _named(base_name: str, names: tuple[str, ...]) -> bool:
    """``base_name`` is one of ``names``, or the temp file :meth:`Location.write_bytes` is writing one through."""
    return base_name in names or any(
        base_name.startswith(f".{n}.") and base_name.endswith(".tmp") for n in names
    )


def locate(storage: str | Path | Location) -> Location:
    """Open ``storage``: a URI through ``pyarrow.fs.FileSystem.from_uri`` (query options such as
    ``endpoint_override`` kept), a path as an absolute local folder.

    Raises:
        StorageError: unknown scheme, missing filesystem library, or the filesystem cannot be opened.
    """
    if isinstance(storage, Location):
        return storage
    text = str(storage)
    if not is_uri(text):
        path = str(Path(text).expanduser().resolve())
        return Location(pafs.LocalFileSystem(), path, path)
    check_storage(text)
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except Exception as e:  # pyarrow raises ArrowInvalid, ArrowNotImplementedError or OSError here
        raise StorageError(f"{text!r}: cannot open this storage: {first_line(e)}") from None
    if isinstance(fs, pafs.LocalFileSystem):
        return Location(fs, path, path)
    return Location(fs, path.rstrip("/"), text)
