"""
The kill test of the article, for real: backends in their own processes,
one killed with SIGKILL in the middle of traffic, then started again.
"""

from collections import Counter

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, readBody

from manualb.service import LoadBalancer
from manualb.testing import BackendProcess, balancerConfig

CLIENTS = 50


class Load:
    """
    C{CLIENTS} keep-alive clients sending GETs one after another until
    C{total} have been answered; C{onCount} is called with the running
    count after each answer.
    """

    def __init__(self, url: bytes, total: int, onCount=lambda count: None):
        self.url = url
        self.total = total
        self.onCount = onCount
        self.sent = 0
        self.answers: Counter = Counter()
        self.failures: list = []
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = CLIENTS
        self.pool = pool
        self.agent = Agent(reactor, pool=pool)

    def run(self) -> Deferred:
        self.done = Deferred()
        self.running = CLIENTS
        for _ in range(CLIENTS):
            self._next()
        return self.done

    def _next(self) -> None:
        if self.sent >= self.total:
            self.running -= 1
            if self.running == 0:
                self.done.callback(None)
            return
        self.sent += 1
        d = self.agent.request(b"GET", self.url)

        def answered(response):
            return readBody(response).addCallback(lambda body: (response.code, body))

        def counted(result):
            code, body = result
            if code == 200:
                self.answers[body.strip().decode()] += 1
            else:
                self.failures.append((code, body))
            self.onCount(sum(self.answers.values()) + len(self.failures))

        d.addCallback(answered)
        d.addCallback(counted)
        d.addErrback(lambda reason: self.failures.append(reason))
        d.addBoth(lambda _: self._next())


class KillTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_killAndRestart(self):
        """
        SIGKILL one of two backends under 50 concurrent keep-alive clients:
        no client request fails.  Start it again: traffic reaches it again
        once its fail_timeout has passed.
        """
        a = BackendProcess(reactor, "Backend A")
        b = BackendProcess(reactor, "Backend B")
        self.addCleanup(lambda: a.kill())
        self.addCleanup(lambda: b.kill())
        addressA = yield a.start()
        addressB = yield b.start()
        config = balancerConfig(
            [addressA + " fail_timeout=1s", addressB + " fail_timeout=1s"]
        )
        balancer = LoadBalancer(config, reactor)
        self.addCleanup(balancer.close)
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            balancer.site
        )
        self.addCleanup(port.stopListening)
        url = b"http://127.0.0.1:%d/" % (port.getHost().port,)

        killed = []

        def killHalfway(count):
            if count >= 500 and not killed:
                killed.append(a.kill())

        load = Load(url, 2000, killHalfway)
        self.addCleanup(load.pool.closeCachedConnections)
        yield load.run()
        yield killed[0]
        self.assertEqual(load.failures, [])
        self.assertGreater(load.answers["Backend A"], 200)
        self.assertGreater(load.answers["Backend B"], 1000)

        yield a.start()

        def stopOnceBack(count):
            if again.answers["Backend A"]:
                again.total = 0

        again = Load(url, 50000, stopOnceBack)
        self.addCleanup(again.pool.closeCachedConnections)
        yield again.run()
        self.assertEqual(again.failures, [])
        self.assertGreater(again.answers["Backend A"], 0)
        self.flushLoggedErrors()
