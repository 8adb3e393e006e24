"""
Rate limits (L{manualb.ratelimit}): the syntax of C{rate}, the leaky bucket
of nginx's C{limit_req} and its bounded store, keys with C{$route}; what a
stage may ask of the exchange (a delay, a body limit, a look at the body
before any of it goes to a backend); and C{limit_conn}.
"""

from __future__ import annotations

import attrs
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from manualb.config import RateLimitConfig
from manualb.interfaces import IRateLimiter, IRateLimitStore, IStage
from manualb.ratelimit import MemoryStore, RateLimiter, parseRate
from manualb.stages import requestView
from manualb.testing import MemoryBalancer, balancerConfig
from manualb.variables import parseHashKey, parseKey
from manualb.view import Answer, Passage

from .test_proxy import GET, OK, headOf


def view(client="192.0.2.1", headers=()):
    return requestView(client, False, b"GET", b"/a?x=1", [(b"Host", b"example.com"), *headers])


class ParseRateTests(SynchronousTestCase):
    """
    L{parseRate} reads nginx's C{limit_req} syntax.
    """

    def test_perSecond(self):
        self.assertEqual(parseRate("10r/s"), RateLimitConfig(rate=10.0))

    def test_perMinute(self):
        self.assertEqual(parseRate("600r/m").rate, 10.0)
        self.assertAlmostEqual(parseRate("1r/m").rate, 1 / 60)

    def test_burstAndNodelay(self):
        self.assertEqual(
            parseRate("10r/s burst=20 nodelay"),
            RateLimitConfig(rate=10.0, burst=20, nodelay=True),
        )
        self.assertEqual(
            parseRate(" 5r/s  nodelay burst=3 "),
            RateLimitConfig(rate=5.0, burst=3, nodelay=True),
        )

    def test_off(self):
        self.assertEqual(parseRate("off").rate, 0)

    def test_key(self):
        self.assertEqual(parseRate("1r/s", "$route:$http_x_api_key").key, "$route:$http_x_api_key")

    def assertRefused(self, text, words, key="$remote_addr"):
        error = self.assertRaises(ValueError, parseRate, text, key)
        for word in words:
            self.assertIn(word, str(error))

    def test_errors(self):
        """
        What is not a rate is refused, saying what is wrong and how a rate
        is written.
        """
        self.assertRefused("", ["empty", "10r/s"])
        self.assertRefused("10", ["'10'", "10r/s or 600r/m"])
        self.assertRefused("10r/h", ["'10r/h'", "10r/s or 600r/m"])
        self.assertRefused("0r/s", ["not above 0", "off"])
        self.assertRefused("10r/s burst=x", ["'burst=x'"])
        self.assertRefused("10r/s burst=-1", ["'burst=-1'"])
        self.assertRefused("10r/s burst=1 burst=2", ["burst is given twice"])
        self.assertRefused("10r/s nodelay nodelay", ["nodelay is given twice"])
        self.assertRefused("10r/s delay", ["'delay'"])
        self.assertRefused("off burst=2", ["off takes nothing else"])
        self.assertRefused("10r/s", ["$nonesuch"], key="$nonesuch")


class KeyTests(SynchronousTestCase):
    """
    L{parseKey}: the C{$variable} syntax of hash keys, with C{$route}.
    """

    def test_route(self):
        key = parseKey("$route")
        self.assertEqual(key(view(), "login"), b"login")
        self.assertEqual(key(view(), None), b"")

    def test_combined(self):
        key = parseKey("${route}:$remote_addr/$http_x_api_key")
        request = view(headers=[(b"X-Api-Key", b"k1")])
        self.assertEqual(key(request, "api"), b"api:192.0.2.1/k1")

    def test_single(self):
        self.assertEqual(parseKey("$remote_addr")(view(), "r"), b"192.0.2.1")
        self.assertEqual(parseKey("all")(view(), "r"), b"all")

    def test_hashKeyHasNoRoute(self):
        """
        A pool's hash key cannot name the route, which a pool does not know.
        """
        error = self.assertRaises(ValueError, parseHashKey, "$route")
        self.assertIn("$route in hash key", str(error))

    def test_unknown(self):
        error = self.assertRaises(ValueError, parseKey, "$nonesuch")
        self.assertIn("$route", str(error))

    def test_balancersKeepParseHashKey(self):
        from manualb import balancers, variables

        self.assertIs(balancers.parseHashKey, variables.parseHashKey)


class LimiterTests(SynchronousTestCase):
    """
    L{RateLimiter} with a L{MemoryStore}: nginx's leaky bucket.
    """

    def limiter(self, text, key="$remote_addr", store=None):
        self.clock = MemoryReactorClock()
        self.store = MemoryStore() if store is None else store
        return RateLimiter(parseRate(text, key), self.store, self.clock)

    def checks(self, limiter, count, request=None):
        request = view() if request is None else request
        return [limiter.check(request, None) for _ in range(count)]

    def test_interfaces(self):
        limiter = self.limiter("1r/s")
        verifyObject(IRateLimiter, limiter)
        verifyObject(IRateLimitStore, self.store)

    def test_noBurst(self):
        """
        Without a burst, one request each 1/rate seconds; an earlier one is
        refused, with how long until one would pass.
        """
        limiter = self.limiter("10r/s")
        first, second = self.checks(limiter, 2)
        self.assertEqual((first.allowed, first.delay), (True, 0.0))
        self.assertFalse(second.allowed)
        self.assertAlmostEqual(second.retryAfter, 0.1)
        self.assertEqual(second.bucket, "$remote_addr=192.0.2.1")
        self.clock.advance(0.05)
        refused = limiter.check(view(), None)
        self.assertFalse(refused.allowed)
        self.assertAlmostEqual(refused.retryAfter, 0.05)
        self.clock.advance(0.05)
        self.assertEqual(self.checks(limiter, 1)[0].allowed, True)

    def test_burstDelayed(self):
        """
        Without nodelay, requests of the burst are delayed so that they
        leave at the rate: the n-th waits n/rate seconds; beyond the burst
        they are refused.
        """
        limiter = self.limiter("10r/s burst=3")
        decisions = self.checks(limiter, 5)
        self.assertEqual([d.allowed for d in decisions], [True] * 4 + [False])
        for expected, decision in zip([0.0, 0.1, 0.2, 0.3], decisions):
            self.assertAlmostEqual(decision.delay, expected)
        self.assertAlmostEqual(decisions[4].retryAfter, 0.1)

    def test_burstNodelay(self):
        """
        With nodelay, the burst passes at once, and the bucket fills as it
        does without.
        """
        limiter = self.limiter("10r/s burst=3 nodelay")
        decisions = self.checks(limiter, 5)
        self.assertEqual([d.allowed for d in decisions], [True] * 4 + [False])
        self.assertEqual([d.delay for d in decisions[:4]], [0.0] * 4)

    def test_refill(self):
        """
        The bucket drains at the rate: after a full burst, one request more
        passes each 1/rate seconds, and after (burst + 1)/rate seconds of
        quiet a whole burst passes again at once.
        """
        limiter = self.limiter("2r/s burst=2 nodelay")
        self.assertEqual([d.allowed for d in self.checks(limiter, 4)], [True] * 3 + [False])
        self.clock.advance(0.5)
        self.assertEqual([d.allowed for d in self.checks(limiter, 2)], [True, False])
        self.clock.advance(1.5)
        self.assertEqual([d.allowed for d in self.checks(limiter, 4)], [True] * 3 + [False])

    def test_refusedCostsNothing(self):
        """
        Refused requests take nothing from the bucket: a client that keeps
        asking is let in as soon as one is allowed.
        """
        limiter = self.limiter("1r/s")
        self.checks(limiter, 1)
        for _ in range(9):
            self.clock.advance(0.1)
            self.assertFalse(self.checks(limiter, 1)[0].allowed)
        self.clock.advance(0.1)
        self.assertTrue(self.checks(limiter, 1)[0].allowed)

    def test_partialDrain(self):
        """
        A request half a period after the last one waits the other half
        (nginx's arithmetic: the level after it is 0.5).
        """
        limiter = self.limiter("10r/s burst=5")
        self.checks(limiter, 1)
        self.clock.advance(0.05)
        decision = self.checks(limiter, 1)[0]
        self.assertAlmostEqual(decision.delay, 0.05)

    def test_perKey(self):
        """
        Each value of the key has its bucket; C{$route} keeps routes apart.
        """
        limiter = self.limiter("1r/s", key="$route")
        self.assertTrue(limiter.check(view(), "a").allowed)
        self.assertTrue(limiter.check(view(), "b").allowed)
        self.assertFalse(limiter.check(view("192.0.2.9"), "a").allowed)
        self.assertEqual(limiter.check(view(), "b").bucket, "$route=b")

    def test_zones(self):
        """
        Limiters sharing a store keep their buckets apart by zone.
        """
        clock = MemoryReactorClock()
        store = MemoryStore()
        one = RateLimiter(parseRate("1r/s"), store, clock, zone=b"one:")
        two = RateLimiter(parseRate("1r/s"), store, clock, zone=b"two:")
        self.assertTrue(one.check(view(), None).allowed)
        self.assertTrue(two.check(view(), None).allowed)
        self.assertFalse(one.check(view(), None).allowed)

    def test_off(self):
        limiter = self.limiter("off")
        self.assertEqual([d.allowed for d in self.checks(limiter, 100)], [True] * 100)
        self.assertEqual(len(self.store), 0)

    def test_unprintableBucket(self):
        limiter = self.limiter("1r/s", key="$http_x_key")
        decision = limiter.check(view(headers=[(b"X-Key", b"a\xff\x01" + b"b" * 100)]), None)
        self.assertEqual(decision.bucket, "$http_x_key=a??" + "b" * 61)


class StoreBoundsTests(SynchronousTestCase):
    """
    L{MemoryStore} holds a bounded number of buckets of bounded size.
    """

    def test_fullBucketsForgotten(self):
        """
        A bucket that holds all its tokens again is forgotten as others are
        used; one that does not is kept.
        """
        store = MemoryStore()
        store.take(b"a", 1.0, 0, 0.0)
        store.take(b"b", 1.0, 0, 0.5)
        # At 0.9, "a" still holds a request back: kept.
        store.take(b"c", 1.0, 0, 0.9)
        self.assertEqual(len(store), 3)
        # At 1.6, "a" and "b" hold nothing back.
        store.take(b"d", 1.0, 0, 1.6)
        self.assertEqual(len(store), 2)
        # Forgetting "a" changed nothing for it.
        self.assertEqual(store.take(b"a", 1.0, 0, 1.6), 0.0)
        self.assertGreater(store.take(b"d", 1.0, 0, 1.6), 0.0)

    def test_cycledAddresses(self):
        """
        A client cycling through addresses faster than buckets drain cannot
        make the store hold more than its cap: the bucket used longest ago
        goes.
        """
        store = MemoryStore(maxBuckets=100)
        for n in range(10000):
            store.take(b"10.%d.%d.%d" % (n >> 16, (n >> 8) & 255, n & 255), 1.0, 5, 0.0)
        self.assertEqual(len(store), 100)
        # The most recent ones are still counted.
        self.assertGreater(store.take(b"10.0.39.15", 1.0, 5, 0.0), 0.0)
        self.assertEqual(store.take(b"10.0.0.0", 1.0, 5, 0.0), 0.0)

    def test_usedBucketKept(self):
        """
        A bucket in use moves to the end: the cap evicts the idle ones.
        """
        store = MemoryStore(maxBuckets=3)
        store.take(b"busy", 1.0, 10, 0.0)
        for key in [b"x", b"busy", b"y", b"busy", b"z"]:
            store.take(key, 1.0, 10, 0.0)
        self.assertAlmostEqual(store.take(b"busy", 1.0, 10, 0.0), 3.0)

    def test_longKeys(self):
        """
        A long key (a header's value) is kept as a digest.
        """
        store = MemoryStore()
        store.take(b"k" * 10000, 1.0, 0, 0.0)
        [key] = store._buckets
        self.assertLessEqual(len(key), 64)
        self.assertGreater(store.take(b"k" * 10000, 1.0, 0, 0.0), 0.0)
        self.assertEqual(store.take(b"k" * 9999, 1.0, 0, 0.0), 0.0)


@implementer(IStage)
class Ask:
    """
    A stage that asks the exchange what its fields say, as the gatekeeper
    does.
    """

    def __init__(self, **fields):
        self.fields = fields
        self.checked: list[bytes] = []
        self.refuse: bytes | None = None

    def handle(self, passage: Passage):
        for name, value in self.fields.items():
            setattr(passage, name, value)
        if "bodyCheckSize" in self.fields:
            passage.bodyCheck = self.check
        return None

    def check(self, prefix: bytes):
        self.checked.append(prefix)
        if self.refuse is not None and self.refuse in prefix:
            return Answer(403, b"Forbidden", b"Not this body.", [(b"X-Refused-By", b"r1")])
        return None


def post(length: int | None, path=b"/upload") -> bytes:
    framing = b"Content-Length: %d" % (length,) if length is not None else b"Transfer-Encoding: chunked"
    return b"POST %s HTTP/1.1\r\nHost: example.com\r\n%s\r\n\r\n" % (path, framing)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class ExchangeHookTests(SynchronousTestCase):
    """
    What a stage sets on the L{Passage} for the exchange: a delay, a body
    limit, a check of the body's first bytes.
    """

    def setUp(self):
        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))

    def ask(self, **fields) -> Ask:
        stage = Ask(**fields)
        self.lb.balancer.resource.stages.append(stage)
        return stage

    def delayedCalls(self, name):
        return [
            call for call in self.lb.reactor.getDelayedCalls()
            if getattr(call.func, "__name__", None) == name
        ]

    def test_delay(self):
        """
        A delayed request goes to a backend once the delay is over.
        """
        self.ask(delay=1.5)
        client = self.lb.client()
        client.send(GET)
        self.assertEqual(self.lb.pendingConnections(), [])
        self.lb.advance(1.4)
        self.assertEqual(self.lb.pendingConnections(), [])
        self.lb.advance(0.1)
        backend = self.lb.acceptConnection()
        self.assertTrue(backend.received().startswith(b"GET /path?q=1 HTTP/1.1\r\n"))
        backend.send(OK)
        self.assertTrue(client.received().endswith(b"hello"))

    def test_delayClientGone(self):
        """
        A client that leaves while its request is delayed gets the 499 of
        any client gone; no backend is asked, no timer is left behind.
        """
        self.ask(delay=2.0)
        client = self.lb.client()
        client.send(GET)
        self.assertEqual(len(self.delayedCalls("_delayOver")), 1)
        client.reset()
        self.assertEqual(self.delayedCalls("_delayOver"), [])
        self.lb.advance(3.0)
        self.assertEqual(self.lb.pendingConnections(), [])
        self.assertIn(b'"GET /path?q=1 HTTP/1.1" 499 ', self.lb.accessLog.getvalue())

    def test_noDelay(self):
        """
        Without a delay the exchange asks for no reactor call of its own.
        """
        self.ask()
        self.lb.client().send(GET)
        self.assertEqual(self.delayedCalls("_delayOver"), [])
        self.assertEqual(len(self.lb.pendingConnections()), 1)

    def assert413(self, client, rest):
        """
        The client got 413, no backend was asked, and the connection
        closes once the rest of the body (read and dropped) is in.
        """
        line, headers = headOf(client.received())
        self.assertEqual(line, b"HTTP/1.1 413 Content Too Large")
        self.assertEqual(self.lb.pendingConnections(), [])
        self.assertIn(b'"POST /upload HTTP/1.1" 413 ', self.lb.accessLog.getvalue())
        self.assertTrue(client.connected)
        client.send(rest)
        self.assertFalse(client.connected)

    def test_bodyLimitDeclared(self):
        """
        A declared length beyond the route's limit gets 413 before any of
        the body is read, though the front end's limit is larger.
        """
        self.ask(bodyLimit=10)
        client = self.lb.client()
        client.send(post(11))
        self.assert413(client, b"x" * 11)

    def test_bodyLimitWithin(self):
        self.ask(bodyLimit=10)
        client = self.lb.client()
        client.send(post(10) + b"0123456789")
        backend = self.lb.acceptConnection()
        self.assertTrue(backend.received().endswith(b"\r\n\r\n0123456789"))

    def test_bodyLimitChunked(self):
        """
        A chunked body that grows beyond the route's limit gets 413 as it
        streams, and its backend attempt is given up.
        """
        self.ask(bodyLimit=10)
        client = self.lb.client()
        client.send(post(None) + chunk(b"01234567"))
        self.assertEqual(len(self.lb.pendingConnections()), 1)
        client.send(chunk(b"890"))
        self.assert413(client, chunk(b"x" * 100) + b"0\r\n\r\n")

    def test_bodyLimitOff(self):
        """
        A route's limit of 0 lifts the limit.
        """
        self.ask(bodyLimit=0)
        client = self.lb.client()
        client.send(post(None) + chunk(b"x" * 5000))
        backend = self.lb.acceptConnection()
        self.assertIn(b"x" * 5000, backend.received())

    def test_bodyCheckRefuses(self):
        """
        A body whose first bytes the check refuses is answered with the
        check's answer, and the connection closes after it; no backend is
        asked.
        """
        stage = self.ask(bodyCheckSize=16)
        stage.refuse = b"evil"
        client = self.lb.client()
        client.send(post(1000) + b"0123456789")
        self.assertEqual(stage.checked, [])
        self.assertEqual(client.received(), b"")
        client.send(b"evil-0123456789abcdef")
        self.assertEqual(stage.checked, [b"0123456789evil-0"])
        line, headers = headOf(client.received())
        self.assertEqual(line, b"HTTP/1.1 403 Forbidden")
        self.assertEqual(headers[b"x-refused-by"], [b"r1"])
        self.assertTrue(client.connected)
        self.assertEqual(self.lb.pendingConnections(), [])
        client.send(b"x" * (1000 - 31))
        self.assertFalse(client.connected)
        self.assertIn(b'"POST /upload HTTP/1.1" 403 ', self.lb.accessLog.getvalue())

    def test_bodyCheckShortBody(self):
        """
        A body shorter than the check's size is checked whole once it is in,
        whatever its framing.
        """
        stage = self.ask(bodyCheckSize=1000)
        client = self.lb.client()
        client.send(post(5) + b"hello")
        client.send(post(None) + chunk(b"abc"))
        self.assertEqual(stage.checked, [b"hello"])
        backend = self.lb.acceptConnection()
        backend.send(OK)
        client.send(chunk(b"def") + b"0\r\n\r\n")
        self.assertEqual(stage.checked, [b"hello", b"abcdef"])

    def test_bodyCheckFails(self):
        """
        A check that raises is logged, and the client gets 500 rather than a
        dropped connection.
        """
        stage = self.ask(bodyCheckSize=4)
        stage.check = lambda prefix: 1 / 0
        client = self.lb.client()
        client.send(post(4) + b"abcd")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        line, headers = headOf(client.received())
        self.assertEqual(line, b"HTTP/1.1 500 Internal Server Error")
        self.assertEqual(self.lb.pendingConnections(), [])

    def test_bodyCheckNoBody(self):
        """
        A request without a body is not held for the check.
        """
        stage = self.ask(bodyCheckSize=1000)
        self.lb.client().send(GET)
        self.assertEqual(stage.checked, [])
        self.assertEqual(len(self.lb.pendingConnections()), 1)

    def test_bodyCheckPasses(self):
        """
        A body the check lets through goes to the backend whole, byte for
        byte; while it is held, the client is paused only once more than
        both the check's size and the proxy's buffer are waiting.
        """
        size = 100 * 1024
        stage = self.ask(bodyCheckSize=size)
        body = bytes(range(256)) * 2000
        client = self.lb.client()
        client.send(post(len(body)))
        client.send(body[:90 * 1024])
        self.assertEqual(stage.checked, [])
        self.assertEqual(client.transport.producerState, "producing")
        client.send(body[90 * 1024 : 110 * 1024])
        self.assertEqual(stage.checked, [body[:size]])
        self.assertEqual(client.transport.producerState, "paused")
        backend = self.lb.acceptConnection()
        self.assertEqual(client.transport.producerState, "producing")
        for start in range(110 * 1024, len(body), 7 * 1024):
            client.send(body[start : start + 7 * 1024])
        received = backend.received()
        head, _, sent = received.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: %d" % (len(body),), head)
        self.assertEqual(sent, body)
        backend.send(OK)
        self.assertTrue(client.received().endswith(b"hello"))

    def test_bodyCheckClientGone(self):
        """
        A client that leaves while its body is held gets 499; the check is
        not made.
        """
        stage = self.ask(bodyCheckSize=100)
        client = self.lb.client()
        client.send(post(1000) + b"x" * 10)
        client.reset()
        self.assertEqual(stage.checked, [])
        self.assertEqual(self.lb.pendingConnections(), [])
        self.assertIn(b'"POST /upload HTTP/1.1" 499 ', self.lb.accessLog.getvalue())

    def test_delayThenCheck(self):
        """
        A delayed request with a body check waits, then is checked.
        """
        stage = self.ask(delay=1.0, bodyCheckSize=4)
        client = self.lb.client()
        client.send(post(8) + b"abcdefgh")
        self.assertEqual(stage.checked, [])
        self.lb.advance(1.0)
        self.assertEqual(stage.checked, [b"abcd"])
        self.assertEqual(len(self.lb.pendingConnections()), 1)


class LimitConnTests(SynchronousTestCase):
    """
    C{limit_conn}: the most connections one client address holds at once.
    """

    def setUp(self):
        config = balancerConfig(["10.0.0.1:8001"])
        config = attrs.evolve(
            config, gatekeeper=attrs.evolve(config.gatekeeper, limit_conn=2)
        )
        self.lb = MemoryBalancer(config)

    def test_limit(self):
        """
        A client address beyond its limit gets 503 and is closed; other
        addresses are not affected; once one of its connections closes, the
        address may open another.
        """
        first = self.lb.client("192.0.2.7", 40001)
        second = self.lb.client("192.0.2.7", 40002)
        third = self.lb.client("192.0.2.7", 40003)
        self.assertTrue(first.connected and second.connected)
        self.assertFalse(third.connected)
        self.assertTrue(third.received().startswith(b"HTTP/1.1 503 "))
        other = self.lb.client("192.0.2.8", 40004)
        self.assertTrue(other.connected)
        third.protocol.connectionLost(Failure(ConnectionError()))
        first.protocol.connectionLost(Failure(ConnectionError()))
        fourth = self.lb.client("192.0.2.7", 40005)
        self.assertTrue(fourth.connected)
        fourth.send(GET)
        self.assertEqual(len(self.lb.pendingConnections()), 1)

    def test_boundedMemory(self):
        """
        Only addresses with connections open are counted.
        """
        connections = self.lb.balancer.connections
        peers = [self.lb.client("192.0.2.%d" % (n,), 40000 + n) for n in range(1, 50)]
        self.assertEqual(len(connections._clients), 49)
        for peer in peers:
            peer.protocol.connectionLost(Failure(ConnectionError()))
        self.assertEqual(connections._clients, {})

    def test_noLimit(self):
        lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        peers = [lb.client("192.0.2.7", 40000 + n) for n in range(10)]
        self.assertTrue(all(peer.connected for peer in peers))
        self.assertEqual(lb.balancer.connections._clients, {})


class HTTP2HookTests(SynchronousTestCase):
    """
    HTTP/2 streams share the request bodies, and so the body check and
    limit.
    """

    def setUp(self):
        from .test_http2 import REQUEST, MemoryClient

        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        self.client = MemoryClient()
        self.client.server.site.resource = self.lb.balancer.resource
        headers = dict(REQUEST)
        headers[b":method"] = b"POST"
        headers[b":path"] = b"/upload"
        self.headers = list(headers.items())

    def ask(self, **fields) -> Ask:
        stage = Ask(**fields)
        self.lb.balancer.resource.stages.append(stage)
        return stage

    def post(self, body: bytes, length: bool = True) -> int:
        client = self.client
        extra = [(b"content-length", b"%d" % (len(body),))] if length else []
        stream = client.request(self.headers + extra, False)
        client.h2.send_data(stream, body, end_stream=True)
        client.exchange()
        return stream

    def test_bodyCheck(self):
        """
        A stream's body is checked before it goes to a backend: refused, the
        stream gets the check's answer; let through, the backend gets it.
        """
        stage = self.ask(bodyCheckSize=8)
        stage.refuse = b"evil"
        stream = self.post(b"evil body")
        self.assertEqual(stage.checked, [b"evil bod"])
        self.assertEqual(self.client.status(stream), 403)
        self.assertEqual(self.lb.pendingConnections(), [])
        self.post(b"good body")
        self.assertEqual(stage.checked[1:], [b"good bod"])
        backend = self.lb.acceptConnection()
        self.assertTrue(backend.received().endswith(b"\r\n\r\ngood body"))

    def test_bodyLimit(self):
        """
        The route's body limit holds a stream too, declared or not.
        """
        self.ask(bodyLimit=4)
        self.assertEqual(self.client.status(self.post(b"hello")), 413)
        stream = self.post(b"hello", length=False)
        self.assertEqual(self.client.status(stream), 413)
        self.assertEqual(self.lb.pendingConnections(), [])
