"""
The state shared between instances (L{manualb.state}), with the store in
the process (L{MemoryStateStore}): what C{state} accepts, admin changes that
reach every balancer, health views, shared rate limits and their error
bound, and a store that goes and comes back.
"""

from __future__ import annotations

import json
import os
from io import BytesIO

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from manualb.config import RateLimitConfig
from manualb.config import ConfigError
from manualb.configfile import loadConfig, parseConfig
from manualb.interfaces import IRateLimitStore, IStateListener, IStateStore
from manualb.ratelimit import MemoryStore, RateLimiter
from manualb.sharedrates import SYNC_INTERVAL, SharedRateStore, bucketAfter
from manualb.state import (
    HEALTH_INTERVAL,
    HEARTBEAT,
    MemoryStateStore,
    SharedState,
    parseStateURL,
)
from manualb.testing import MemoryBalancer, NamedBackend, responseBody

from .test_ratelimit import view

A, B = "10.0.0.1:80", "10.0.0.2:80"


def configText(extra: str = "", gatekeeper: str = "") -> str:
    return (
        "[manualb]\nlisten = tcp:8080\naccess_log = off\nadmin = tcp:9000\n" + extra
        + ("[gatekeeper]\n" + gatekeeper if gatekeeper else "")
        + "\n[upstream web]\nservers =\n    %s\n    %s\n" % (A, B)
        + "[route r]\npath = /\nupstream = web\n"
    )


def balancer(clock, store, instance: str, gatekeeper: str = "") -> MemoryBalancer:
    config = parseConfig(configText("instance = %s\n" % (instance,), gatekeeper), "<test>")
    lb = MemoryBalancer(config, clock, store)
    lb.addBackend(A, NamedBackend("a"))
    lb.addBackend(B, NamedBackend("b"))
    return lb


def change(lb: MemoryBalancer, server: str, body: dict) -> dict:
    """
    C{POST /api/upstreams/web/servers/SERVER} with C{body}, to the admin API
    of C{lb}.
    """
    request = DummyRequest([b"api", b"upstreams", b"web", b"servers", server.encode("ascii")])
    request.method = b"POST"
    request.client = IPv4Address("TCP", "127.0.0.1", 40000)
    request.content = BytesIO(json.dumps(body).encode("utf-8"))
    return json.loads(lb.balancer.admin.render(request))


def status(lb: MemoryBalancer) -> dict:
    return lb.balancer.admin.status()


def serverOf(lb: MemoryBalancer, name: str):
    return lb.balancer.pools["web"].server(name)


class Logged:
    """
    The log events emitted while it is installed.
    """

    def __init__(self, testCase):
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        testCase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, text: str) -> list[dict]:
        return [e for e in self.events if text in e.get("log_format", "")]


class ConfigTests(SynchronousTestCase):
    """
    C{state} and C{instance} of C{[manualb]}.
    """

    def test_default(self):
        """
        Without C{state}, the state stays in the process: no shared state,
        and the rate limits' buckets in a L{MemoryStore}.
        """
        config = parseConfig(configText(gatekeeper="rate = 1r/s\n"), "<test>")
        self.assertIsNone(config.state)
        self.assertIsNone(config.instance)
        lb = MemoryBalancer(config)
        self.assertIsNone(lb.balancer.shared)
        limiter = lb.balancer.rateLimiter(config.gatekeeper.rate, None)
        self.assertIsInstance(limiter.store, MemoryStore)
        self.assertNotIn("sharedState", status(lb))

    def test_memory(self):
        """
        C{state = memory} is the default, written out.
        """
        config = parseConfig(configText("state = memory\n"), "<test>")
        self.assertIsNone(config.state)

    def test_redis(self):
        config = parseConfig(
            configText("state = redis://127.0.0.1:6390/2\ninstance = lb-1\n"), "<test>"
        )
        self.assertEqual(config.state, "redis://127.0.0.1:6390/2")
        self.assertEqual(config.instance, "lb-1")

    def test_defaults(self):
        """
        The port is 6379 and the database 0 unless given.
        """
        self.assertEqual(str(parseStateURL("redis://redis.example")), "redis://redis.example:6379/0")
        self.assertEqual(str(parseStateURL("redis://[::1]:7000/")), "redis://[::1]:7000/0")
        url = parseStateURL("redis://:secret@10.0.0.9/1")
        self.assertEqual((url.host, url.port, url.db, url.password), ("10.0.0.9", 6379, 1, "secret"))

    def assertStateError(self, value: str, message: str):
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "lb.ini")
        with open(path, "w") as f:
            f.write(configText("state = %s\n" % (value,)))
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertIn(message, str(error))
        # The file, the line and the key, as for every key.
        self.assertTrue(
            str(error).startswith(path + ", line 5: [manualb] state: "), str(error)
        )

    def test_errors(self):
        """
        A value that is not a Redis URL is refused, with the file, line and
        key.
        """
        self.assertStateError("http://127.0.0.1:6379/0", "is not a redis:// URL")
        self.assertStateError("redis://", "names no host")
        self.assertStateError("redis://h:99999/0", "is not valid")
        self.assertStateError("redis://h:6379/x", "the database in")
        self.assertStateError("redis://h:6379/0?a=b", "query")

    def test_badInstance(self):
        error = self.assertRaises(
            ConfigError, parseConfig, configText("instance = a\x01b\n"), "lb.ini"
        )
        self.assertIn("[manualb] instance: the instance name", str(error))

    def test_reloadKeeps(self):
        """
        A reload does not change the store: it says that needs a restart.
        """
        clock = MemoryReactorClock()
        lb = balancer(clock, MemoryStateStore(clock), "a")
        message = lb.balancer.reload(parseConfig(configText("instance = other\n"), "<test>"))
        self.assertIn("needs a restart", message)
        self.assertIn("instance", message)
        self.assertEqual(lb.balancer.config.instance, "a")


class MemoryStoreTests(SynchronousTestCase):
    def test_interfaces(self):
        clock = MemoryReactorClock()
        store = MemoryStateStore(clock)
        verifyObject(IStateStore, store)
        shared = SharedState(store, {}, clock, "a")
        verifyObject(IStateListener, shared)
        verifyObject(IRateLimitStore, shared.rates)

    def test_bucketAfter(self):
        """
        The shared level counts as L{MemoryStore} does, one request after
        another: the first to a new or drained bucket leaves it at 0.
        """
        self.assertEqual(bucketAfter(None, 1.0, 1, 0.0), (0.0, 1))
        self.assertEqual(bucketAfter(None, 1.0, 5, 0.0), (4.0, 5))
        self.assertEqual(bucketAfter([4.0, 0.0, 5], 1.0, 0, 2.0), (2.0, 5))
        self.assertEqual(bucketAfter([4.0, 0.0, 5], 1.0, 2, 2.0), (4.0, 7))
        self.assertEqual(bucketAfter([1.0, 0.0, 5], 1.0, 1, 10.0), (0.0, 6))
        memory = MemoryStore()
        for now in (0.0, 0.1, 0.2, 0.3):
            memory.take(b"k", 1.0, 10, now)
        level, total = bucketAfter(None, 1.0, 2, 0.0)
        level, total = bucketAfter([level, 0.0, total], 1.0, 2, 0.3)
        self.assertAlmostEqual(level, memory._buckets[b"k"][0])


class AdminTests(SynchronousTestCase):
    """
    A change made through the admin API of one balancer is made on every
    balancer sharing the store.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.store = MemoryStateStore(self.clock)
        self.a = balancer(self.clock, self.store, "a")
        self.b = balancer(self.clock, self.store.another(), "b")

    def test_drain(self):
        logged = Logged(self)
        change(self.a, A, {"state": "drain"})
        self.assertEqual(serverOf(self.b, A).state, "drain")
        self.assertEqual(serverOf(self.b, A).adminState, "drain")
        self.assertEqual(serverOf(self.b, B).state, "up")
        [line] = logged.lines("changed by instance")
        self.assertEqual(line["by"], "a")

    def test_sameName(self):
        """
        Two processes given the same instance name still apply each other's
        changes: a change is told from the process's own by its origin.
        """
        twin = balancer(self.clock, self.store.another(), "a")
        change(self.a, A, {"state": "drain"})
        self.assertEqual(serverOf(twin, A).state, "drain")

    def test_weightKeepsState(self):
        """
        Each change published is the server's whole admin state: a weight
        set on one balancer after a drain on another keeps the drain.
        """
        change(self.a, A, {"state": "down"})
        change(self.b, A, {"weight": 7})
        for lb in (self.a, self.b):
            self.assertEqual(serverOf(lb, A).state, "down")
            self.assertEqual(serverOf(lb, A).config.weight, 7)
        change(self.b, A, {"state": "up"})
        self.assertEqual(serverOf(self.a, A).state, "up")

    def test_joinLater(self):
        """
        A balancer that starts later reads the changes already made.
        """
        change(self.a, B, {"state": "drain", "weight": 3})
        c = balancer(self.clock, self.store.another(), "c")
        self.assertEqual(serverOf(c, B).state, "drain")
        self.assertEqual(serverOf(c, B).config.weight, 3)

    def test_olderIgnored(self):
        """
        A change of a lower version than one already applied is older: it
        changes nothing (news and the stored copy may arrive in any order).
        """
        change(self.a, A, {"state": "drain"})
        shared = self.b.balancer.shared
        shared.stateChanged("admin", "web " + A, {"state": "up", "by": "x"}, 0)
        self.assertEqual(serverOf(self.b, A).state, "drain")

    def test_garbageIgnored(self):
        shared = self.b.balancer.shared
        for value in ({"state": "sideways"}, {"weight": "heavy"}, {"weight": 0}, "x", None):
            shared.stateChanged("admin", "web " + A, value, 100)
        shared.stateChanged("admin", "nosuchpool " + A, {"state": "down"}, 101)
        shared.stateChanged("admin", "web 10.9.9.9:80", {"state": "down"}, 102)
        shared.stateChanged("admin", "", {"state": "down"}, 103)
        self.assertEqual(serverOf(self.b, A).state, "up")
        self.assertEqual(serverOf(self.b, A).config.weight, 1)

    def test_reload(self):
        """
        A server a reload adds takes the change published for it.
        """
        self.a.balancer.shared.serverChanged("web", "10.0.0.3:80", {"state": "drain"})
        text = configText("instance = b\n").replace(
            "    %s\n" % (B,), "    %s\n    10.0.0.3:80\n" % (B,)
        )
        self.b.balancer.reload(parseConfig(text, "<test>"))
        self.assertEqual(serverOf(self.b, "10.0.0.3:80").state, "drain")

    def test_lostAndBack(self):
        """
        While the store is lost, a change applies where it is made, and
        the balancer says so once; it is published when the store is back,
        over the stored copy.
        """
        logged = Logged(self)
        self.store.lose("Redis went away")
        self.store.lose("Redis went away")
        # Once by each balancer.
        warnings = logged.lines("cannot be reached ({reason})")
        self.assertEqual([w["reason"] for w in warnings], ["Redis went away"] * 2)
        self.assertEqual(status(self.a)["sharedState"]["connected"], False)
        change(self.a, A, {"state": "drain"})
        self.assertEqual(serverOf(self.a, A).state, "drain")
        self.assertEqual(serverOf(self.b, A).state, "up")
        self.store.restore()
        self.assertEqual(len(logged.lines("can be reached again")), 2)
        self.assertEqual(serverOf(self.b, A).state, "drain")
        self.assertEqual(status(self.a)["sharedState"]["connected"], True)

    def test_restartedEmpty(self):
        """
        A store that comes back empty (a Redis restarted without saving)
        counts its versions from 1 again: its news are still applied, and
        the balancers give it back the changes it lost.
        """
        change(self.a, A, {"state": "drain"})
        for i in range(5):
            change(self.a, B, {"weight": 2 + i})
        self.store.lose()
        data = self.store._data
        data.topics = {topic: {} for topic in data.topics}
        data.version = 0
        self.store.restore()
        change(self.b, B, {"weight": 42})
        self.assertEqual(serverOf(self.a, B).config.weight, 42)
        c = balancer(self.clock, self.store.another(), "c")
        self.assertEqual(serverOf(c, A).state, "drain")
        self.assertEqual(serverOf(c, B).config.weight, 42)

    def test_metric(self):
        """
        C{manualb_shared_state_connected} tells whether the store can be
        reached.
        """
        from prometheus_client import generate_latest

        metrics = self.a.balancer.metrics
        self.assertIn(b"manualb_shared_state_connected 1.0", generate_latest(metrics.registry))
        self.store.lose()
        self.assertIn(b"manualb_shared_state_connected 0.0", generate_latest(metrics.registry))

    def test_close(self):
        """
        Closing a balancer removes its health view from the store.
        """
        self.clock.advance(HEALTH_INTERVAL)
        self.assertIn("a", status(self.b)["sharedState"]["instances"])
        self.successResultOf(self.a.close())
        self.assertNotIn("a", status(self.b)["sharedState"]["instances"])


class HealthTests(SynchronousTestCase):
    """
    Each balancer publishes the health it sees; the status of any shows
    what every one sees.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.store = MemoryStateStore(self.clock)
        self.a = balancer(self.clock, self.store, "a")
        self.b = balancer(self.clock, self.store.another(), "b")

    def seenBy(self, lb, server: str) -> dict:
        [entry] = [
            each for each in status(lb)["upstreams"]["web"]["servers"] if each["server"] == server
        ]
        return entry["seenBy"]

    def test_views(self):
        serverOf(self.a, A).health.requestFailed("connection refused")
        self.clock.advance(HEALTH_INTERVAL)
        for lb in (self.a, self.b):
            seen = self.seenBy(lb, A)
            self.assertEqual(sorted(seen), ["a", "b"])
            self.assertEqual(seen["a"]["health"], "down")
            self.assertIn("connection refused", seen["a"]["reason"])
            self.assertEqual(seen["b"]["health"], "up")
            self.assertEqual(self.seenBy(lb, B)["a"]["health"], "up")
        shared = status(self.b)["sharedState"]
        self.assertEqual(shared["instance"], "b")
        self.assertEqual(shared["store"], "memory")
        self.assertEqual(list(shared["instances"]), ["a"])

    def test_publishedOnChangeOnly(self):
        """
        A view is published when it changes, and every L{HEARTBEAT} seconds.
        """
        self.clock.advance(HEALTH_INTERVAL)
        version = self.b.balancer.shared.views["a"][0]
        self.clock.advance(HEALTH_INTERVAL)
        self.assertEqual(self.b.balancer.shared.views["a"][0], version)
        self.clock.advance(HEARTBEAT)
        self.assertGreater(self.b.balancer.shared.views["a"][0], version)

    def test_stale(self):
        """
        The view of an instance not heard of for long is shown as stale.
        """
        self.clock.advance(HEALTH_INTERVAL)
        # Instance a hangs.
        self.a.balancer.shared._loop.stop()
        self.clock.advance(5 * HEARTBEAT)
        self.assertTrue(status(self.b)["sharedState"]["instances"]["a"]["stale"])
        self.assertTrue(self.seenBy(self.b, A)["a"]["stale"])


class RateTests(SynchronousTestCase):
    """
    L{SharedRateStore}: buckets answered locally, synchronised in the
    background.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.store = MemoryStateStore(self.clock)

    def limiter(self, store, rate=1 / 60, burst=4):
        shared = SharedRateStore(store, self.clock)
        shared.start()
        self.addCleanup(shared.stop)
        config = RateLimitConfig(rate=rate, burst=burst, nodelay=True)
        return shared, RateLimiter(config, shared, self.clock)

    def test_shared(self):
        """
        Requests let in by one instance count against the others' once
        synchronised: two instances let in one burst (and one request more,
        the first the second sees before it hears of the bucket), not two.
        """
        a, limitA = self.limiter(self.store)
        b, limitB = self.limiter(self.store.another())
        allowed = [limitA.check(view()).allowed for _ in range(6)]
        self.assertEqual(allowed, [True] * 5 + [False])
        self.clock.advance(SYNC_INTERVAL)
        self.assertTrue(limitB.check(view()).allowed)
        self.clock.advance(SYNC_INTERVAL)
        self.assertEqual([limitB.check(view()).allowed for _ in range(5)], [False] * 5)
        self.assertFalse(limitA.check(view()).allowed)
        # Other clients have their own buckets.
        self.assertTrue(limitB.check(view("192.0.2.9")).allowed)

    def test_drainsShared(self):
        """
        A bucket drains at the rate, once, for every instance.
        """
        a, limitA = self.limiter(self.store, rate=1.0, burst=0)
        b, limitB = self.limiter(self.store.another(), rate=1.0, burst=0)
        self.assertTrue(limitA.check(view()).allowed)
        self.clock.advance(SYNC_INTERVAL)
        self.assertTrue(limitB.check(view()).allowed)
        self.clock.advance(SYNC_INTERVAL)
        self.assertFalse(limitA.check(view()).allowed)
        self.clock.advance(2.0)
        self.assertTrue(limitA.check(view()).allowed)

    def test_errorBound(self):
        """
        Three instances each sent a request every 10 ms of the same client,
        for 20 seconds, with C{rate = 10r/s burst=5}: every second window
        lets in no more than the bound of L{manualb.sharedrates}' docstring, and
        the total stays close to the rate.
        """
        rate, burst, n = 10.0, 5, 3
        limiters = [self.limiter(self.store, rate, burst)[1]]
        limiters += [self.limiter(self.store.another(), rate, burst)[1] for _ in range(n - 1)]
        admitted = []
        step = 0.01
        for tick in range(2000):
            for limiter in limiters:
                if limiter.check(view()).allowed:
                    admitted.append(self.clock.seconds())
            self.clock.advance(step)
        duration = 2000 * step
        bound = rate * duration + (burst + 1) + (n - 1) * (burst + 1 + rate * SYNC_INTERVAL)
        self.assertLessEqual(len(admitted), bound)
        self.assertGreaterEqual(len(admitted), rate * duration * 0.9)
        unshared = n * (rate * duration + burst + 1)
        self.assertLess(len(admitted), unshared / 2)
        for start in range(0, 20):
            window = [t for t in admitted if start <= t < start + 1]
            self.assertLessEqual(
                len(window), rate + (burst + 1) + (n - 1) * (burst + 1 + rate * SYNC_INTERVAL)
            )

    def test_lostStaysLocal(self):
        """
        While the store is lost, each instance limits on its own, and the
        counts of that time are not sent when it is back.
        """
        a, limitA = self.limiter(self.store, rate=1 / 60, burst=0)
        b, limitB = self.limiter(self.store.another(), rate=1 / 60, burst=0)
        self.store.lose()
        self.assertTrue(limitA.check(view()).allowed)
        self.assertFalse(limitA.check(view()).allowed)
        self.assertTrue(limitB.check(view()).allowed)
        self.clock.advance(SYNC_INTERVAL)
        self.store.restore()
        self.clock.advance(SYNC_INTERVAL)
        self.assertTrue(limitB.check(view("192.0.2.7")).allowed)
        self.assertEqual(self.store._data.buckets, {})

    def test_bounded(self):
        """
        The local copies are bounded as L{MemoryStore}'s buckets are.
        """
        shared = SharedRateStore(self.store, self.clock, maxBuckets=10)
        for i in range(100):
            shared.take(b"client %d" % (i,), 1.0, 0, 0.0)
        self.assertEqual(len(shared), 10)

    def test_balancerUsesShared(self):
        """
        The rate limits of a balancer with a shared state count in its
        shared buckets.
        """
        lb = balancer(self.clock, self.store, "a", gatekeeper="rate = 1r/m\n")
        limiter = lb.balancer.rateLimiter(lb.balancer.config.gatekeeper.rate, None)
        self.assertIs(limiter.store, lb.balancer.shared.rates)


class StickinessTests(SynchronousTestCase):
    """
    Stickiness needs no shared state: C{ip_hash}, C{hash} and C{cookie}
    send a client to the same server from every instance that has the same
    servers, whatever the order they are listed in.
    """

    servers = ["10.0.0.%d:80" % (i,) for i in range(1, 6)]

    def instances(self, balance: str) -> list[MemoryBalancer]:
        made = []
        for order in (self.servers, list(reversed(self.servers)), self.servers[2:] + self.servers[:2]):
            config = parseConfig(
                "[manualb]\nlisten = tcp:8080\naccess_log = off\n"
                "[upstream web]\nservers =\n"
                + "".join("    %s\n" % (name,) for name in order)
                + "balance = %s\n" % (balance,)
                + "[route r]\npath = /\nupstream = web\n",
                "<test>",
            )
            lb = MemoryBalancer(config)
            for name in self.servers:
                lb.addBackend(name, NamedBackend(name))
            made.append(lb)
        return made

    def served(self, lb, path=b"/", clientHost="127.0.0.1", headers=None):
        d = lb.agent(clientHost=clientHost).request(
            b"GET", b"http://example.com" + path, Headers(headers or {})
        )
        lb.flush()
        response = self.successResultOf(d)
        body = responseBody(response)
        lb.flush()
        return self.successResultOf(body), response

    def test_ipHash(self):
        instances = self.instances("ip_hash")
        answers = set()
        for i in range(40):
            client = "198.51.%d.%d" % (i, i * 7 % 250)
            [answer] = {self.served(lb, clientHost=client)[0] for lb in instances}
            answers.add(answer)
        self.assertGreater(len(answers), 2)

    def test_hash(self):
        instances = self.instances("hash $request_uri")
        servers = set()
        for i in range(40):
            path = b"/item/%d" % (i,)
            [answer] = {self.served(lb, path)[0] for lb in instances}
            servers.add(answer.split(b" ")[0])
        self.assertGreater(len(servers), 2)

    def test_cookie(self):
        """
        The cookie one instance sets sends the client to the same server
        from the others.
        """
        first, *others = self.instances("cookie")
        for i in range(10):
            body, response = self.served(first, clientHost="198.51.100.%d" % (i,))
            [cookie] = response.headers.getRawHeaders(b"set-cookie")
            cookie = cookie.split(b";")[0]
            for lb in others:
                again, ignored = self.served(lb, headers={b"Cookie": [cookie]})
                self.assertEqual(again, body)
