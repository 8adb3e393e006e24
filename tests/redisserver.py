"""
A redis-server for the tests: started on a free loopback port, in a
temporary directory, saving nothing, and stopped by the test's cleanup.  It
runs under a shell that stops it when its standard input closes, so that it
cannot outlive the test process, however that ends.
"""

from __future__ import annotations

import os
import shutil
import socket

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest

from manualb.cartdemo import RedisProcess

#: Where scripts/redis installs it.
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"

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


class RedisServer(RedisProcess):
    """
    A redis-server for a test, in C{directory}, which may be stopped and
    started again on the same port (see L{RedisProcess}); starting it skips
    the test when redis-server is not installed.
    """

    def __init__(self, reactor, directory: str, port: int | None = None):
        super().__init__(reactor, REDIS_SERVER, directory, port or freePort())

    def start(self) -> Deferred[None]:
        requireRedis()
        return super().start()
