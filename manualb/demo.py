"""
The built-in demo, after the article manualb grew from: two backends in two
zones behind one load balancer, and a few requests to show round robin.
"""

from __future__ import annotations

import sys

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, readBody

from manualb.service import makeService
from manualb.testing import NamedBackend, balancerConfig, listenBackend, serverAddress


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@inlineCallbacks
def _start(reactor, port: int):
    backendA = yield listenBackend(reactor, NamedBackend("Backend A (zone A)"))
    backendB = yield listenBackend(reactor, NamedBackend("Backend B (zone B)"))
    config = balancerConfig(
        [serverAddress(backendA), serverAddress(backendB)],
        listen=["tcp:%d:interface=127.0.0.1" % (port,)],
        upstream="my_backend_pool",
        accessLog="-",
    )
    service = makeService(config, reactor)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    _say("Backend A (zone A) listens on %s" % (serverAddress(backendA),))
    _say("Backend B (zone B) listens on %s" % (serverAddress(backendB),))
    _say("manualb listens on http://127.0.0.1:%d/ (round robin over both)\n" % (port,))
    _say("Round robin: four requests through manualb:")
    agent = Agent(reactor)
    for i in range(4):
        response = yield agent.request(b"GET", b"http://127.0.0.1:%d/" % (port,))
        body = yield readBody(response)
        _say("  request %d -> %s" % (i + 1, body.decode("utf-8").strip()))
    _say("\nTry it yourself:  curl http://127.0.0.1:%d/   (Ctrl-C stops the demo)" % (port,))


def runDemo(port: int) -> int:
    """
    Run the demo until interrupted.
    """
    from twisted.internet import reactor

    failures = []

    def failed(reason):
        failures.append(reason)
        _say("demo failed: %s" % (reason.getErrorMessage(),))
        reactor.stop()

    reactor.callWhenRunning(lambda: _start(reactor, port).addErrback(failed))
    reactor.run()
    return 1 if failures else 0
