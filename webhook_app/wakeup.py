"""A local wake-up from the web processes to the job workers on one host (the SQLite setup).

After a commit that queued a job, the intake sends a one-byte datagram; a worker waiting for
work is woken at once instead of at its next poll. Nothing depends on it arriving: a datagram
lost, a worker not listening or a socket that cannot be opened only means the worker finds the
job at its next poll (`WEBHOOK_APP_POLL_INTERVAL`), as before.

The sockets are in Linux's abstract namespace (no file to clean up, no path length limit),
named after the database file, so two services on one host do not wake each other. Up to
`SLOTS` workers per database listen, each on the first free slot; a notification goes to every
slot (a `sendto` to a slot nobody listens on fails at once and is ignored).
"""

from __future__ import annotations

import errno
import hashlib
import os
import select
import socket

SLOTS = 8


def socket_path(db_path: str) -> str:
    """The address prefix for a database file (abstract namespace: starts with a NUL)."""
    digest = hashlib.sha256(os.path.realpath(db_path).encode()).hexdigest()[:32]
    return f"\0webhook-app-wake-{digest}"


class Waker:
    """Both ends: `notify()` (web processes) and `wait(timeout)` (a worker)."""

    def __init__(self, prefix: str) -> None:
        self.addresses = [f"{prefix}-{n}" for n in range(SLOTS)]
        self._out: socket.socket | None = None
        self._out_pid: int | None = None
        self._in: socket.socket | None = None

    def notify(self) -> None:
        """Tell every listening worker that a job was committed; never raises, never blocks."""
        try:
            if self._out is None or self._out_pid != os.getpid():
                self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
                self._out_pid = os.getpid()
            for address in self.addresses:
                try:
                    self._out.sendto(b"j", address)
                except OSError:
                    continue  # nobody on this slot (ECONNREFUSED), or its queue is full: already woken
        except OSError:
            return

    def wait(self, timeout: float) -> bool:
        """Block until notified or `timeout` seconds pass; True if notified."""
        sock = self._listening()
        if sock is None:
            select.select([], [], [], timeout)
            return False
        ready, _, _ = select.select([sock], [], [], timeout)
        if not ready:
            return False
        while True:  # one wake-up for everything that arrived meanwhile
            try:
                sock.recv(64)
            except BlockingIOError:
                return True
            except OSError:
                return True

    def _listening(self) -> socket.socket | None:
        if self._in is not None:
            return self._in
        for address in self.addresses:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            try:
                sock.bind(address)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    continue  # another worker has this slot
                return None
            self._in = sock
            return sock
        return None  # every slot taken: this worker polls

    def close(self) -> None:
        for sock in (self._in, self._out):
            if sock is not None:
                sock.close()
        self._in = self._out = None

    __del__ = close  # a store dropped without close() leaves no socket open
