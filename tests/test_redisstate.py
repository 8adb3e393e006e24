"""
The shared state in a real Redis (L{manualb.redisstate}): a redis-server
started by the test on a free loopback port, and two load balancers of this
process sharing it, each with its own proxy and admin listeners.  Admin
changes, health views and rate limits are shared; Redis stopped, restarted
and frozen mid-test.  Skipped when redis-server is not installed
(C{scripts/redis} installs it).
"""

from __future__ import annotations

import json
import os
from io import BytesIO

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from manualb.front import siteOf
from manualb.configfile import parseConfig
from manualb.interfaces import IStateStore
from manualb.redisstate import RedisStateStore
from manualb.service import makeService
from manualb.state import parseStateURL
from manualb.testing import NamedBackend, listenBackend, serverAddress

from .redisserver import RedisServer, requireRedis


@inlineCallbacks
def waitFor(predicate, timeout: float = 10.0, what: str = "the condition"):
    """
    Poll C{predicate} on the reactor every 10 ms until it is true; fail
    after C{timeout} seconds.

    @return: How long it took, in seconds.
    """
    started = reactor.seconds()
    while not predicate():
        if reactor.seconds() - started > timeout:
            raise AssertionError("%s did not happen within %ss" % (what, timeout))
        yield deferLater(reactor, 0.01, lambda: None)
    return reactor.seconds() - started


class Instance:
    """
    One load balancer of the test: its service, and its proxy and admin
    ports.
    """

    def __init__(self, testCase: TestCase, service):
        self.testCase = testCase
        self.service = service
        self.balancer = service.balancer
        self.shared = service.balancer.shared
        ports = {}
        for child in service:
            if child.name:
                child._waitingForPort.addCallback(
                    lambda port, child=child: ports.__setitem__(siteOf(child.serving), port) or port
                )
        self.proxyPort = ports.pop(service.balancer.sites["default"]).getHost().port
        [adminPort] = ports.values()
        self.adminPort = adminPort.getHost().port
        self.agent = Agent(reactor)

    def server(self, name: str):
        return self.balancer.pools["web"].server(name)

    @inlineCallbacks
    def get(self, path: bytes = b"/", clientHost: str | None = None):
        response = yield self.agent.request(
            b"GET", b"http://127.0.0.1:%d%s" % (self.proxyPort, path)
        )
        body = yield readBody(response)
        return response.code, body

    @inlineCallbacks
    def api(self, method: bytes, path: str, body: object = None):
        producer = None
        if body is not None:
            producer = FileBodyProducer(BytesIO(json.dumps(body).encode("utf-8")))
        response = yield self.agent.request(
            method,
            b"http://127.0.0.1:%d%s" % (self.adminPort, path.encode("ascii")),
            Headers(),
            producer,
        )
        data = yield readBody(response)
        return response.code, (json.loads(data) if path.startswith("/api") else data)

    @inlineCallbacks
    def status(self):
        code, status = yield self.api(b"GET", "/api/status")
        return status

    @inlineCallbacks
    def metrics(self) -> bytes:
        code, text = yield self.api(b"GET", "/metrics")
        return text


class RedisTestCase(TestCase):
    """
    A redis-server, two backends, and the load balancers the test makes.
    """

    timeout = 60

    @inlineCallbacks
    def setUp(self):
        requireRedis()
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.redis = RedisServer(reactor, self.directory)
        yield self.redis.start()
        self.addCleanup(self.redis.stop)
        self.names = []
        for name in ("a", "b"):
            port = yield listenBackend(reactor, NamedBackend(name))
            self.addCleanup(port.stopListening)
            self.names.append(serverAddress(port))
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @inlineCallbacks
    def instance(self, name: str, gatekeeper: str = "") -> Instance:
        """
        Start a load balancer named C{name} sharing the test's Redis; fires
        once it has reached Redis.
        """
        config = parseConfig(
            "[manualb]\nlisten = tcp:0:interface=127.0.0.1\naccess_log = off\n"
            "admin = tcp:0:interface=127.0.0.1\n"
            f"state = {self.redis.url}\ninstance = {name}\n"
            + ("[gatekeeper]\n" + gatekeeper + "\n" if gatekeeper else "")
            + "[upstream web]\nservers =\n"
            + "".join(f"    {server}\n" for server in self.names)
            + "[route r]\npath = /\nupstream = web\n",
            os.path.join(self.directory, name + ".ini"),
        )
        service = makeService(config, reactor)
        service.startService()
        self.addCleanup(service.balancer.close)
        self.addCleanup(lambda: service.running and service.stopService())
        made = Instance(self, service)
        yield waitFor(lambda: made.shared.connected, what=name + " reaching Redis")
        return made

    def logged(self, text: str) -> list[dict]:
        return [e for e in self.events if text in e.get("log_format", "")]


class RedisStoreTests(RedisTestCase):
    def test_interface(self):
        verifyObject(IStateStore, RedisStateStore(reactor, parseStateURL(self.redis.url)))

    @inlineCallbacks
    def test_adminChange(self):
        """
        A drain through the admin API of one instance is made on the other
        (by Redis's publish and subscribe, in a round trip), which then
        sends no request to the server; its status says who made it.
        """
        a = yield self.instance("a")
        b = yield self.instance("b")
        code, body = yield a.api(
            b"POST", "/api/upstreams/web/servers/" + self.names[0], {"state": "drain"}
        )
        self.assertEqual(code, 200)
        took = yield waitFor(lambda: b.server(self.names[0]).state == "drain", timeout=5)
        # One round trip to Redis: far below the second allowed.
        self.assertLess(took, 5)
        for i in range(4):
            code, body = yield b.get()
            self.assertEqual(body, b"b\n")
        status = yield b.status()
        [drained] = [s for s in status["upstreams"]["web"]["servers"] if s["server"] == self.names[0]]
        self.assertEqual(drained["state"], "drain")
        self.assertEqual(drained["setBy"], "admin")
        code, body = yield b.api(
            b"POST", "/api/upstreams/web/servers/" + self.names[0], {"weight": 3}
        )
        yield waitFor(lambda: a.server(self.names[0]).config.weight == 3, timeout=5)
        self.assertEqual(a.server(self.names[0]).state, "drain")

    @inlineCallbacks
    def test_joinLater(self):
        """
        An instance that starts later reads the changes kept in Redis.
        """
        a = yield self.instance("a")
        yield a.api(b"POST", "/api/upstreams/web/servers/" + self.names[1], {"state": "down"})
        yield waitFor(lambda: a.shared.admin, what="the change kept")
        b = yield self.instance("b")
        yield waitFor(lambda: b.server(self.names[1]).state == "down", timeout=5)

    @inlineCallbacks
    def test_healthViews(self):
        """
        The status of each instance shows what each instance sees of every
        server.
        """
        a = yield self.instance("a")
        b = yield self.instance("b")
        a.server(self.names[1]).health.requestFailed("seen failing by a only")

        def seen():
            views = b.shared.views.get("a")
            if views is None:
                return False
            return views[1]["upstreams"]["web"][self.names[1]]["health"] == "down"

        yield waitFor(seen, what="a's view reaching b")
        for instance in (a, b):
            yield waitFor(lambda: "a" in instance.shared.views and "b" in instance.shared.views)
            status = yield instance.status()
            [server] = [
                s for s in status["upstreams"]["web"]["servers"] if s["server"] == self.names[1]
            ]
            self.assertEqual(server["seenBy"]["a"]["health"], "down")
            self.assertIn("seen failing by a only", server["seenBy"]["a"]["reason"])
            self.assertEqual(server["seenBy"]["b"]["health"], "up")
            self.assertTrue(status["sharedState"]["connected"])
            self.assertEqual(status["sharedState"]["store"], self.redis.url)

    @inlineCallbacks
    def test_rateLimitShared(self):
        """
        Two instances share a client's bucket: with 1r/m burst=4, the five
        requests one lets in count on the other, which lets one more in
        (before it has heard of the bucket) and then refuses, where two
        unshared instances would let ten in.
        """
        gatekeeper = "rate = 1r/m burst=4 nodelay"
        a = yield self.instance("a", gatekeeper)
        b = yield self.instance("b", gatekeeper)
        codes = []
        for i in range(6):
            code, body = yield a.get()
            codes.append(code)
        self.assertEqual(codes, [200] * 5 + [429])

        def synced(instance, total):
            def check():
                buckets = instance.shared.rates._buckets
                return any(bucket.total == total for bucket in buckets.values())

            return check

        yield waitFor(synced(a, 5), what="a's bucket synchronised")
        code, body = yield b.get()
        self.assertEqual(code, 200)
        yield waitFor(synced(b, 6), what="b's bucket synchronised")
        codes = []
        for i in range(5):
            code, body = yield b.get()
            codes.append(code)
        self.assertEqual(codes, [429] * 5)
        code, body = yield a.get()
        self.assertEqual(code, 429)


class RedisGoneTests(RedisTestCase):
    @inlineCallbacks
    def test_stoppedAndRestarted(self):
        """
        Redis stops mid-test: both instances keep serving, say so once in
        their log, their status and their metric; a change made meanwhile
        applies where it is made.  Redis starts again (empty): both
        reconnect and resynchronise, and the change reaches the other.
        """
        a = yield self.instance("a")
        b = yield self.instance("b")
        yield b.api(b"POST", "/api/upstreams/web/servers/" + self.names[1], {"state": "down"})
        yield waitFor(lambda: a.server(self.names[1]).state == "down", what="a change before")
        yield self.redis.stop()
        yield waitFor(lambda: not a.shared.connected and not b.shared.connected)
        for instance in (a, b):
            code, body = yield instance.get()
            self.assertEqual(code, 200)
            status = yield instance.status()
            self.assertFalse(status["sharedState"]["connected"])
            metrics = yield instance.metrics()
            self.assertIn(b"manualb_shared_state_connected 0.0", metrics)
        code, body = yield a.api(
            b"POST", "/api/upstreams/web/servers/" + self.names[0], {"state": "drain"}
        )
        self.assertEqual(code, 200)
        self.assertEqual(a.server(self.names[0]).state, "drain")
        self.assertEqual(b.server(self.names[0]).state, "up")
        # Let the instances retry a few times, refused.
        yield deferLater(reactor, 0.5, lambda: None)
        self.assertEqual(len(self.logged("cannot be reached ({reason})")), 2)
        yield self.redis.start()
        yield waitFor(lambda: a.shared.connected and b.shared.connected, what="reconnecting")
        yield waitFor(lambda: b.server(self.names[0]).state == "drain", what="the change")
        self.assertEqual(len(self.logged("can be reached again")), 2)
        self.assertEqual(len(self.logged("cannot be reached ({reason})")), 2)
        metrics = yield b.metrics()
        self.assertIn(b"manualb_shared_state_connected 1.0", metrics)
        # And the news flow again, though Redis counts its versions from 1
        # again.
        yield b.api(b"POST", "/api/upstreams/web/servers/" + self.names[1], {"weight": 9})
        yield waitFor(lambda: a.server(self.names[1]).config.weight == 9, what="news")
        # What Redis lost, the instances gave back: one started now sees
        # the changes made before Redis stopped and while it was gone.
        c = yield self.instance("c")
        yield waitFor(lambda: c.server(self.names[0]).state == "drain", what="drain for c")
        yield waitFor(lambda: c.server(self.names[1]).state == "down", what="down for c")
        self.assertEqual(c.server(self.names[1]).config.weight, 9)

    @inlineCallbacks
    def test_frozen(self):
        """
        A Redis that answers nothing (stopped with SIGSTOP) makes no client
        wait: requests, rate limited ones too, are served while the store's
        calls time out and the instance counts it lost; once Redis answers
        again, it reconnects.
        """
        a = yield self.instance("a", "rate = 100r/s burst=100")
        self.redis.pause()
        resumed = [False]

        def resume():
            if not resumed[0]:
                resumed[0] = True
                self.redis.resume()

        self.addCleanup(resume)
        for i in range(20):
            code, body = yield a.get()
            self.assertEqual(code, 200)
        yield waitFor(lambda: not a.shared.connected, what="the timeout")
        code, body = yield a.get()
        self.assertEqual(code, 200)
        resume()
        yield waitFor(lambda: a.shared.connected, what="reconnecting")
