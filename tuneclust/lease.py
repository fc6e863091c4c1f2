"""One driver per sweep: a lease file, ``<storage>/<name>/lease.json``, written through the sweep's Location.

It names its holder (host, pid, start time, command line) and carries a random token and a heartbeat time that a
daemon thread of the driver renews every :data:`RENEW_S` s. Another driver refuses to start while it is live; one
whose heartbeat is older than :data:`STALE_S`, or held on this host by a pid that is gone (or reused), is taken
over with a warning; ``--takeover`` forces it. The holder deletes it on every exit if the token is still its own;
a holder whose token was replaced stops renewing and calls its ``on_lost`` (the sweep's driver exits at once,
without writing). Object stores have no lock and pyarrow's filesystems no conditional put, so acquiring is
write-then-verify everywhere: write with our token, wait :data:`SETTLE_S`, read back; another token means another
driver wrote after us: we refuse. S3 (like GCS, Azure, local/NFS renames) is read-after-write consistent, so the
read-back sees the last writer: of two drivers writing within the settle window the last wins. Limits: a driver
stalled for over SETTLE_S between finding no live lease and writing its own can overwrite a winner that had
verified (whose heartbeat then sees the foreign token and stops it); heartbeat ages compare two hosts' clocks,
which must agree to well within STALE_S. ``TUNECLUST_LEASE_{RENEW,STALE,SETTLE}_S`` override the delays.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneclust.storage import Location, env_seconds
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
    """``$TUNECLUST_LEASE_<NAME>_S`` if set to a number >= 0 (tests shorten the delays), else ``default``."""
    return env_seconds(f"TUNECLUST_LEASE_{name}_S", default)


def default_command() -> str:
    """This process's command line (``python -m tuneclust ...`` when run so)."""
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
    if not isinstance(data, dict) or not isinstance(data.get("token"), str):
        return None
    numbers = all(isinstance(data.get(k), int | float) for k in ("heartbeat", "started"))
    return data if numbers else None


def process_start(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None if it is gone or there is
    no /proc (not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def dead_here(lease: dict[str, Any]) -> bool:
    """Held on this host by a process that no longer exists (e.g. a SIGKILLed driver), or whose pid now belongs
    to a later process (the start time the lease recorded differs)."""
    if lease.get("host") != socket.gethostname():
        return False
    try:
        pid = int(lease.get("pid", -1))
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, ValueError):  # PermissionError: alive, another user's
        return False
    recorded, now = lease.get("pid_start"), process_start(pid)
    return recorded is not None and now is not None and recorded != now


def describe(lease: dict[str, Any]) -> str:
    """``pid P on host H since T (heartbeat N s ago): COMMAND`` (one line)."""
    age = time.time() - float(lease["heartbeat"])
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(lease["started"])))
    who = f"pid {lease.get('pid')} on host {clip(lease.get('host'), 40)}"
    return f"{who} since {started} (heartbeat {age:.0f} s ago): {clip(lease.get('command', '?'), 80)}"


def where(loc: Location) -> str:
    """The lease's path or URI for messages: without a URI's query (endpoint options), its last 60 characters."""
    text = str(loc).partition("?")[0]
    return text if len(text) <= 60 else "..." + text[-57:]


def _warn(loc: Location, message: str | OSError) -> None:
    text = str(message).strip().splitlines()[0] if str(message).strip() else repr(message)
    print(f"warning: {where(loc)}: {text}", file=sys.stderr, flush=True)


@dataclass
class Lease:
    """A lease this process holds; :meth:`release` ends it (also stops the heartbeat)."""

    folder: Location
    record: dict[str, Any]
    renew_s: float
    lost: bool = False
    created_dir: bool = False
    on_lost: Callable[[str], None] | None = None
    """Called (from the heartbeat thread) with one line when another driver has taken the lease; None: a warning."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def loc(self) -> Location:
        return self.folder / NAME

    @property
    def token(self) -> str:
        return self.record["token"]

    def _beat(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                current = read(self.loc)
                if current is None or current.get("token") != self.token:
                    self.lost = True
                    holder = describe(current) if current else "nobody (the lease was deleted)"
                    line = f"{where(self.loc)}: this sweep's lease was taken over by {holder}"
                    if self.on_lost is None:
                        _warn(
                            self.loc, f"this sweep's lease was taken over by {holder}; no longer renewing it"
                        )
                    else:
                        self.on_lost(line)
                    return
                self.record["heartbeat"] = time.time()
                self.loc.write_text(json.dumps(self.record))
            except OSError as e:  # a transient storage error: try again at the next beat
                _warn(self.loc, f"lease heartbeat failed: {e}")

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
            _warn(self.loc, f"could not release the lease: {e}")


def acquire(
    folder: Location,
    *,
    takeover: bool = False,
    command: str | None = None,
    on_lost: Callable[[str], None] | None = None,
) -> Lease:
    """Take the lease of the sweep in ``folder`` and start its heartbeat (``on_lost``: see :class:`Lease`).

    Raises:
        LeaseError: a live driver holds it (and ``takeover`` is off), or another driver won the race.
    """
    loc = folder / NAME
    stale_s = setting("STALE", STALE_S)
    current = read(loc)
    if current is not None:
        age = time.time() - float(current["heartbeat"])
        if takeover:
            _warn(loc, f"--takeover: taking this sweep over from {describe(current)}")
        elif dead_here(current):
            _warn(loc, f"taking over the lease of a driver that is gone ({describe(current)})")
        elif age > stale_s:
            _warn(
                loc, f"taking over a stale lease (no heartbeat for over {stale_s:g} s; {describe(current)})"
            )
        else:
            raise LeaseError(
                f"{where(loc)}: this sweep is running: {describe(current)}; if it is gone, rerun with "
                f"--takeover (or wait until its heartbeat is {stale_s:g} s old)"
            )
    now = time.time()
    record = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid()),
              "started": now, "heartbeat": now, "command": command or default_command(),
              "token": secrets.token_hex(16)}  # fmt: skip
    lease = Lease(folder, record, setting("RENEW", RENEW_S), created_dir=not folder.exists(), on_lost=on_lost)
    loc.write_text(json.dumps(record))
    try:
        time.sleep(setting("SETTLE", SETTLE_S))
        winner = read(loc)
    except BaseException:  # Ctrl-C while settling: leave no lease behind
        lease.release()
        raise
    if winner is None or winner.get("token") != record["token"]:
        who = describe(winner) if winner else "a driver that deleted it"
        raise LeaseError(f"{where(loc)}: another driver took this sweep at the same time: {who}")
    lease._thread = threading.Thread(target=lease._beat, name="tuneclust-lease", daemon=True)
    lease._thread.start()
    return lease
