"""One driver per sweep: a lease file, ``<storage>/<name>/lease.json``, written through the sweep's Location.

It names its holder (host, pid, start time, command line), carries a random token and a heartbeat time that a
daemon thread in the driver renews every :data:`RENEW_S` seconds. Another driver refuses to start while the lease
is live; a lease whose heartbeat is older than :data:`STALE_S`, or held on this host by a pid that no longer exists,
is taken over with a warning; ``--takeover`` forces it. The holder deletes it on every exit (only if the token is
still its own); a holder whose token was replaced stops renewing and warns.

Object stores have no lock and pyarrow's filesystems no conditional put, so acquisition is write-then-verify on
every filesystem: write the lease with our token, wait :data:`SETTLE_S`, read it back; another token there means
another driver wrote after us and we refuse. S3 (and GCS, Azure, local/NFS renames) are read-after-write
consistent, so the read-back sees the last writer: of two drivers writing within the settle window the last one
wins and the first one sees that. Limits: a driver that stalls longer than SETTLE_S between reading "no live lease"
and writing its own could still overwrite a winner that had verified already (that winner's heartbeat thread then
sees the foreign token, stops and warns); heartbeat ages compare the reader's clock with the holder's, so clocks
must agree to well within STALE_S. Each delay can be overridden by ``TUNECLUST_LEASE_{RENEW,STALE,SETTLE}_S``.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tuneclust.storage import Location
from tuneclust.yamlsafe import clip

NAME = "lease.json"
RENEW_S = 10.0
"""Seconds between two heartbeats of the holder."""
STALE_S = 60.0
"""A lease whose heartbeat is older than this is abandoned (its driver died elsewhere): taken over automatically."""
SETTLE_S = 1.0
"""Seconds between writing the lease and reading it back (two drivers racing: the last writer wins)."""


class LeaseError(RuntimeError):
    """The lease is held by a live driver (or was lost in a race); ``str(err)`` is one line."""


def setting(name: str, default: float) -> float:
    """``$TUNECLUST_LEASE_<NAME>_S`` if set (tests shorten the delays), else ``default``."""
    return float(os.environ.get(f"TUNECLUST_LEASE_{name}_S") or default)


def default_command() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(os.path.join("tuneclust", "__main__.py")):
        argv = ["python", "-m", "tuneclust", *argv[1:]]
    return shlex.join(argv)


def read(loc: Location) -> dict[str, Any] | None:
    """The lease at ``loc`` (a dict), or None if there is none or it is unreadable (a torn or foreign file)."""
    try:
        data = json.loads(loc.read_text())
    except (FileNotFoundError, ValueError):
        return None
    except OSError:
        if not loc.exists():
            return None
        raise
    return data if isinstance(data, dict) and "token" in data else None


def dead_here(lease: dict[str, Any]) -> bool:
    """Held on this host by a process that no longer exists (e.g. a SIGKILLed driver)."""
    if lease.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(lease.get("pid", -1)), 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):  # PermissionError: alive, another user's
        return False
    return False


def describe(lease: dict[str, Any], now: float | None = None) -> str:
    """``pid P on host H since T (heartbeat N s ago): COMMAND`` (one line)."""
    age = (now or time.time()) - float(lease.get("heartbeat", 0))
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(lease.get("started", 0))))
    who = f"pid {lease.get('pid')} on host {clip(lease.get('host'), 40)}"
    return f"{who} since {started} (heartbeat {age:.0f} s ago): {clip(lease.get('command', '?'), 80)}"


def where(loc: Location) -> str:
    """The lease's path or URI for messages: without a URI's query (endpoint options), its last 60 characters."""
    text = str(loc).partition("?")[0]
    return text if len(text) <= 60 else "..." + text[-57:]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass
class Lease:
    """A lease this process holds; :meth:`release` ends it (also stops the heartbeat)."""

    folder: Location
    record: dict[str, Any]
    renew_s: float
    lost: bool = False
    created_dir: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def loc(self) -> Location:
        return self.folder / NAME

    @property
    def token(self) -> str:
        return self.record["token"]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="tuneclust-lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                current = read(self.loc)
                if current is None or current.get("token") != self.token:
                    self.lost = True
                    holder = describe(current) if current else "nobody (the lease was deleted)"
                    _warn(
                        f"{where(self.loc)}: this sweep's lease was taken over by {holder}; no longer renewing it"
                    )
                    return
                self.record["heartbeat"] = time.time()
                self.loc.write_text(json.dumps(self.record))
            except OSError as e:  # a transient storage error: try again at the next beat
                _warn(
                    f"{where(self.loc)}: lease heartbeat failed: {str(e).splitlines()[0] if str(e) else e!r}"
                )

    def release(self) -> None:
        """Stop renewing; delete the lease if it is still ours (and the sweep folder if the lease made it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        try:
            current = read(self.loc)
            if current is not None and current.get("token") == self.token:
                self.loc.fs.delete_file(self.loc.path)
            if self.created_dir and not self.folder.has_children():
                self.folder.delete()
        except OSError as e:
            _warn(
                f"{where(self.loc)}: could not release the lease: {str(e).splitlines()[0] if str(e) else e!r}"
            )


def acquire(folder: Location, *, takeover: bool = False, command: str | None = None) -> Lease:
    """Take the lease of the sweep in ``folder`` and start its heartbeat.

    Raises:
        LeaseError: a live driver holds it (and ``takeover`` is off), or another driver won the race.
    """
    loc = folder / NAME
    stale_s = setting("STALE", STALE_S)
    current = read(loc)
    if current is not None:
        age = time.time() - float(current.get("heartbeat", 0))
        if takeover:
            _warn(f"{where(loc)}: --takeover: taking this sweep over from {describe(current)}")
        elif dead_here(current):
            _warn(f"{where(loc)}: taking over the lease of a driver that is gone ({describe(current)})")
        elif age > stale_s:
            _warn(
                f"{where(loc)}: taking over a stale lease (no heartbeat for over {stale_s:g} s; {describe(current)})"
            )
        else:
            raise LeaseError(
                f"{where(loc)}: this sweep is running: {describe(current)}; if it is gone, rerun with "
                f"--takeover (or wait until its heartbeat is {stale_s:g} s old)"
            )
    created_dir = not folder.exists()
    now = time.time()
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": now,
        "command": command or default_command(),
        "token": secrets.token_hex(16),
        "heartbeat": now,
    }
    loc.write_text(json.dumps(record))
    time.sleep(setting("SETTLE", SETTLE_S))
    winner = read(loc)
    if winner is None or winner.get("token") != record["token"]:
        who = describe(winner) if winner else "a driver that deleted it"
        raise LeaseError(f"{where(loc)}: another driver took this sweep at the same time: {who}")
    lease = Lease(folder, record, setting("RENEW", RENEW_S), created_dir=created_dir)
    lease.start()
    return lease
