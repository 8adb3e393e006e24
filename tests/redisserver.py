"""
A redis-server for the tests: started on a free loopback port, in a
temporary directory, saving nothing, and stopped by the test's cleanup.  It
runs under a shell that stops it when its standard input closes, so that it
cannot outlive the test process, however that ends.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest

#: Where scripts/redis installs it.
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

_WRAPPER = (
    '"$0" "$@" & pid=$!; echo "pid $pid"; '
    # Standard input closes when the test process goes: stop the server.
    "cat >/dev/null; kill -CONT $pid 2>/dev/null; kill $pid 2>/dev/null; wait $pid"
)


def freePort() -> int:
    """
    A TCP port of the loopback interface that nothing listens on now.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def requireRedis() -> None:
    """
    @raise SkipTest: When redis-server is not installed.
    """
    if not os.access(REDIS_SERVER, os.X_OK):
        raise SkipTest(
            "redis-server is not installed (scripts/redis installs it from the OS "
            "packages; scripts/test runs it)"
        )


class RedisServer(ProcessProtocol):
    """
    One redis-server process, which may be stopped and started again on the
    same port.

    @ivar port: Its port.
    @ivar pid: The process id of the server itself, once started.
    """

    def __init__(self, reactor, directory: str, port: int | None = None):
        self.reactor = reactor
        self.directory = directory
        self.port = port or freePort()
        self.pid: int | None = None
        self._output = b""
        self._ready: Deferred[None] | None = None
        self._ended: Deferred[None] | None = None
        self.transport = None

    @property
    def url(self) -> str:
        return "redis://127.0.0.1:%d/0" % (self.port,)

    def start(self) -> Deferred[None]:
        """
        Start the server; fires once it accepts connections.
        """
        requireRedis()
        self.pid = None
        self._output = b""
        self._ready = Deferred()
        self._ended = Deferred()
        args = [
            "/bin/sh", "-c", _WRAPPER, REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", self.directory,
            "--logfile", "",
        ]
        self.reactor.spawnProcess(self, args[0], args, env={"PATH": os.environ.get("PATH", "")})
        return self._ready

    def stop(self) -> Deferred[None]:
        """
        Stop the server (if running); fires once it has exited.
        """
        if self.transport is None or self._ended is None:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        ended = self._ended
        self.transport.closeStdin()
        return ended

    def pause(self) -> None:
        """
        Freeze the server (SIGSTOP): it keeps its connections and answers
        nothing, as a Redis that hangs.
        """
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def outReceived(self, data: bytes) -> None:
        self._output += data
        if self.pid is None and b"\n" in self._output and self._output.startswith(b"pid "):
            self.pid = int(self._output.split(b"\n", 1)[0].split()[1])
        if self._ready is not None and b"Ready to accept connections" in self._output:
            ready, self._ready = self._ready, None
            ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.transport = None
        self.pid = None
        if self._ready is not None:
            ready, self._ready = self._ready, None
            ready.errback(
                RuntimeError("redis-server ended before it was ready: %r" % (self._output[-2000:],))
            )
        ended, self._ended = self._ended, None
        if ended is not None:
            ended.callback(None)
