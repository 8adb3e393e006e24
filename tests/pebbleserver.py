"""
A pebble (Let's Encrypt's ACME test server) for the tests: started on free
loopback ports with its own TLS certificate, validating challenges on the
ports the test gives it, and resolving every name to 127.0.0.1 through a
small DNS answerer of the test's own (L{LoopbackDNS}), which can also be
told to answer nothing, so that validation fails.  Stopped by the test's
cleanup; it runs under a shell that stops it when its standard input
closes, so that it cannot outlive the test process.
"""

from __future__ import annotations

import json
import os
import shutil

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.names import dns, error
from twisted.names.common import ResolverBase
from twisted.names.server import DNSServerFactory
from twisted.trial.unittest import SkipTest

from manualb.tlstesting import makeCA, writeCA, writeTLSFiles
from tests.redisserver import freePort

#: Where scripts/pebble installs it.
PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"

_WRAPPER = (
    '"$0" "$@" & pid=$!; '
    "cat >/dev/null; kill $pid 2>/dev/null; wait $pid"
)


def requirePebble() -> None:
    """
    @raise SkipTest: When pebble is not installed.
    """
    if not os.access(PEBBLE, os.X_OK):
        raise SkipTest(
            "pebble is not installed (scripts/pebble installs it from the OS "
            "packages; scripts/test runs it)"
        )


class LoopbackDNS(ResolverBase):
    """
    Answers every A question with 127.0.0.1, every other with nothing; with
    C{refuse} set, answers every name with NXDOMAIN.
    """

    refuse = False

    def _lookup(self, name, cls, type, timeout):
        if self.refuse:
            return fail(error.DomainError(name))
        if type != dns.A:
            return succeed(([], [], []))
        record = dns.RRHeader(
            name=name, type=dns.A, ttl=0, payload=dns.Record_A("127.0.0.1", ttl=0)
        )
        return succeed(([record], [], []))


def listenDNS(reactor, resolver: LoopbackDNS):
    """
    Serve C{resolver} over UDP on a free loopback port; returns the port.
    """
    factory = DNSServerFactory(clients=[resolver])
    return reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")


class Pebble(ProcessProtocol):
    """
    One pebble process.

    @ivar directory: The URL of its ACME directory.
    @ivar ca: The file of the CA that signs its own TLS certificate.
    """

    def __init__(self, reactor, workdir: str, httpPort: int, tlsPort: int, dnsPort: int,
                 validity: int | None = None):
        self.reactor = reactor
        self.port = freePort()
        ca = makeCA("pebble test CA")
        self.ca = writeCA(workdir, ca, "pebble-ca")
        certificate, key = writeTLSFiles(workdir, ca, ["localhost", "127.0.0.1"], "pebble")
        settings = {
            "listenAddress": "127.0.0.1:%d" % (self.port,),
            "managementListenAddress": "127.0.0.1:%d" % (freePort(),),
            "certificate": certificate,
            "privateKey": key,
            "httpPort": httpPort,
            "tlsPort": tlsPort,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if validity is not None:
            settings["certificateValidityPeriod"] = validity
        self.config = os.path.join(workdir, "pebble.json")
        with open(self.config, "w") as f:
            json.dump({"pebble": settings}, f)
        self.dnsPort = dnsPort
        self.directory = "https://127.0.0.1:%d/dir" % (self.port,)
        self.output = b""
        self._ready: Deferred[None] | None = None
        self._ended: Deferred[None] | None = None

    def start(self) -> Deferred[None]:
        requirePebble()
        self._ready = Deferred()
        self._ended = Deferred()
        args = [
            "/bin/sh", "-c", _WRAPPER, PEBBLE,
            "-config", self.config, "-dnsserver", "127.0.0.1:%d" % (self.dnsPort,),
        ]
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_VA_ALWAYS_VALID": "0",
            "PEBBLE_WFE_NONCEREJECT": "0",
            "PEBBLE_AUTHZREUSE": "0",
        }
        self.reactor.spawnProcess(self, args[0], args, env=env)
        return self._ready

    def stop(self) -> Deferred[None]:
        if self.transport is None or self._ended is None:
            return succeed(None)
        ended = self._ended
        self.transport.closeStdin()
        return ended

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if self._ready is not None and b"ACME directory available" in self.output:
            ready, self._ready = self._ready, None
            ready.callback(None)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.transport = None
        if self._ready is not None:
            ready, self._ready = self._ready, None
            ready.errback(RuntimeError("pebble ended: %r" % (self.output[-2000:],)))
        ended, self._ended = self._ended, None
        if ended is not None:
            ended.callback(None)
