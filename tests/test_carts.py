"""
The shopping carts of the demo backends (L{manualb.testing.CartBackend}):
in memory, behind a L{MemoryBalancer}, and in a real Redis
(L{manualb.testing.RedisCarts}) that the test starts on a free loopback
port (skipped when redis-server is not installed; C{scripts/redis} installs
it).
"""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stderr

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http_headers import Headers

from manualb import testing
from manualb.__main__ import main
from manualb.state import parseStateURL
from manualb.testing import (
    CART_MAX_ITEM,
    CartBackend,
    CartFull,
    MemoryBalancer,
    MemoryCarts,
    RedisCarts,
    balancerConfig,
    cartStore,
    responseBody,
)

from .redisserver import RedisServer, requireRedis

SESSION = b"0123456789abcdef0123456789abcdef"


class _Store:
    """
    A cart store whose answers the test gives, when it likes.
    """

    description = "the test's store"

    def __init__(self):
        self.calls: list[tuple] = []
        self.answers: list[Deferred] = []

    def add(self, session, item):
        self.calls.append(("add", session, item))
        d: Deferred = Deferred()
        self.answers.append(d)
        return d

    def items(self, session):
        self.calls.append(("items", session))
        return fail(ConnectionError("no route to the store"))


class CartBackendTests(SynchronousTestCase):
    """
    L{CartBackend} behind a balancer, round robin over two of them.
    """

    def setUp(self):
        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:80", "10.0.0.2:80"]))
        self.agent = self.lb.agent()

    def backends(self, storeA, storeB):
        self.lb.addBackend("10.0.0.1:80", CartBackend("Backend A", storeA))
        self.lb.addBackend("10.0.0.2:80", CartBackend("Backend B", storeB))

    def request(self, method, path, cookie=None):
        """
        Fires with the status, the JSON answer and the C{Set-Cookie}s.
        """
        headers = Headers()
        if cookie is not None:
            headers.addRawHeader(b"Cookie", cookie)
        response = self.successResultOf(
            self.agent.request(method, b"http://shop" + path, headers)
        )
        body = self.successResultOf(responseBody(response))
        if body and response.headers.getRawHeaders(b"Content-Type") == [b"application/json"]:
            body = json.loads(body)
        return response, body, response.headers.getRawHeaders(b"Set-Cookie", [])

    def test_setsASessionCookie(self):
        """
        The first request, without a cookie, gets a new session in the
        cookie C{cart}; one with a well-formed session keeps it, and a
        malformed one is replaced.
        """
        self.backends(MemoryCarts(), MemoryCarts())
        response, body, cookies = self.request(b"POST", b"/cart/add?item=apple")
        self.assertEqual(response.code, 200)
        self.assertEqual(body, {"backend": "Backend A", "cart": ["apple"]})
        [cookie] = cookies
        self.assertRegex(cookie, rb"^cart=[0-9a-f]{32}; Path=/; HttpOnly$")
        self.assertEqual(self.request(b"GET", b"/cart", b"cart=" + SESSION)[2], [])
        for bad in (b"cart=apple", b"cart=" + SESSION.upper(), b"cart=" + SESSION + b"0"):
            [replaced] = self.request(b"GET", b"/cart", bad)[2]
            self.assertNotIn(bad, replaced)

    def test_memoryCartsSplit(self):
        """
        Each backend with carts in its own memory keeps its own part of
        the client's cart: round robin splits it.
        """
        self.backends(MemoryCarts(), MemoryCarts())
        cookie = b"cart=" + SESSION
        seen = [
            self.request(b"POST", b"/cart/add?item=" + item, cookie)[1]
            for item in (b"apple", b"bread", b"milk")
        ]
        self.assertEqual(
            seen,
            [
                {"backend": "Backend A", "cart": ["apple"]},
                {"backend": "Backend B", "cart": ["bread"]},
                {"backend": "Backend A", "cart": ["apple", "milk"]},
            ],
        )

    def test_sharedCartsWhole(self):
        """
        Backends sharing their carts' store serve the whole cart, whichever
        answers.
        """
        shared = MemoryCarts()
        self.backends(shared, shared)
        cookie = b"cart=" + SESSION
        self.request(b"POST", b"/cart/add?item=apple", cookie)
        self.request(b"POST", b"/cart/add?item=bread", cookie)
        views = [self.request(b"GET", b"/cart", cookie)[1] for _ in range(2)]
        self.assertEqual(
            views,
            [
                {"backend": "Backend A", "cart": ["apple", "bread"]},
                {"backend": "Backend B", "cart": ["apple", "bread"]},
            ],
        )
        response, body, cookies = self.request(b"HEAD", b"/cart", cookie)
        self.assertEqual((response.code, body), (200, b""))

    def test_otherPathsAnswerTheName(self):
        """
        Every other path is answered as by L{NamedBackend}: with the name.
        """
        self.backends(MemoryCarts(), MemoryCarts())
        response, body, cookies = self.request(b"GET", b"/cartography")
        self.assertEqual((response.code, body, cookies), (200, b"Backend A\n", []))

    def test_badRequests(self):
        """
        A wrong method gets a 405 with C{Allow}; an add without an item, or
        with one too long, a 400; each with the reason in JSON.
        """
        self.backends(MemoryCarts(), MemoryCarts())
        response, body, _ = self.request(b"GET", b"/cart/add?item=apple")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"Allow"), [b"POST"])
        self.assertEqual(body["error"], "use POST")
        response, body, _ = self.request(b"POST", b"/cart")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"Allow"), [b"GET, HEAD"])
        long = b"x" * (CART_MAX_ITEM + 1)
        for query in (b"", b"?item=", b"?item=%20", b"?other=1", b"?item=" + long):
            response, body, _ = self.request(b"POST", b"/cart/add" + query)
            self.assertEqual(response.code, 400, query)
            self.assertIn("?item=NAME", body["error"])

    def test_fullCart(self):
        """
        A cart holds L{testing.CART_MAX_ITEMS} items: one more gets a 409.
        """
        self.patch(testing, "CART_MAX_ITEMS", 2)
        self.backends(MemoryCarts(), MemoryCarts())
        codes = [
            self.request(b"POST", b"/cart/add?item=x", b"cart=" + SESSION)[0].code
            for _ in range(5)
        ]
        # A and B each keep their own cart: two items each, then full.
        self.assertEqual(codes, [200, 200, 200, 200, 409])

    def test_storeUnreachable(self):
        """
        A store that fails gets a 503 saying which and why.
        """
        store = _Store()
        self.backends(store, store)
        response, body, _ = self.request(b"GET", b"/cart", b"cart=" + SESSION)
        self.assertEqual(response.code, 503)
        self.assertEqual(
            body,
            {
                "backend": "Backend A",
                "error": "the carts in the test's store cannot be reached: "
                "no route to the store",
            },
        )

    def test_answerAfterTheClientWent(self):
        """
        When the store answers after the request's connection is gone,
        nothing is written to it, and nothing fails.
        """
        store = _Store()
        self.backends(store, store)
        d = self.agent.request(b"POST", b"http://shop/cart/add?item=apple")
        self.lb.flush()
        self.assertEqual(store.calls, [("add", store.calls[0][1], "apple")])
        d.cancel()
        self.failureResultOf(d)
        self.lb.flush()
        [answer] = store.answers
        answer.callback(["apple"])
        self.assertIsNone(self.successResultOf(answer))


class MemoryCartsTests(SynchronousTestCase):
    def test_keepsCartsBySession(self):
        carts = MemoryCarts()
        self.assertEqual(self.successResultOf(carts.items("a")), [])
        self.assertEqual(self.successResultOf(carts.add("a", "x")), ["x"])
        self.assertEqual(self.successResultOf(carts.add("a", "y")), ["x", "y"])
        self.assertEqual(self.successResultOf(carts.add("b", "z")), ["z"])
        self.assertEqual(self.successResultOf(carts.items("a")), ["x", "y"])

    def test_boundedSessions(self):
        """
        At most L{testing.CART_MAX_SESSIONS} carts are kept: the one
        changed longest ago goes first.
        """
        self.patch(testing, "CART_MAX_SESSIONS", 2)
        carts = MemoryCarts()
        carts.add("a", "1")
        carts.add("b", "1")
        carts.add("a", "2")
        carts.add("c", "1")
        self.assertEqual(self.successResultOf(carts.items("b")), [])
        self.assertEqual(self.successResultOf(carts.items("a")), ["1", "2"])

    def test_full(self):
        self.patch(testing, "CART_MAX_ITEMS", 1)
        carts = MemoryCarts()
        carts.add("a", "1")
        self.failureResultOf(carts.add("a", "2"), CartFull)
        self.assertEqual(self.successResultOf(carts.items("a")), ["1"])


class CartOptionTests(SynchronousTestCase):
    """
    Where a backend keeps its carts: C{python -m manualb backend --cart}.
    """

    def test_cartStore(self):
        self.assertIsInstance(cartStore(reactor, "memory"), MemoryCarts)
        store = cartStore(reactor, "redis://127.0.0.1:7000/2")
        self.assertIsInstance(store, RedisCarts)
        self.assertEqual(store.description, "redis://127.0.0.1:7000/2")
        self.assertRaises(ValueError, cartStore, reactor, "http://127.0.0.1/")

    def test_badOption(self):
        """
        The command line refuses a C{--cart} that is neither, saying why.
        """
        err = io.StringIO()
        with redirect_stderr(err), self.assertRaises(SystemExit) as raised:
            main(["backend", "A", "--cart", "redis://127.0.0.1:6379/x"])
        self.assertEqual(raised.exception.code, 2)
        self.assertIn("argument --cart: the database in", err.getvalue())


class RedisCartsTests(TestCase):
    """
    L{RedisCarts} against a real redis-server.
    """

    timeout = 30

    @inlineCallbacks
    def setUp(self):
        requireRedis()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.redis = RedisServer(reactor, directory)
        yield self.redis.start()
        self.addCleanup(self.redis.stop)

    def carts(self, **options) -> RedisCarts:
        carts = RedisCarts(reactor, parseStateURL(self.redis.url), **options)
        self.addCleanup(carts.close)
        return carts

    @inlineCallbacks
    def test_shared(self):
        """
        Two stores naming the same Redis (two backend processes) keep the
        same carts, each a list that expires.
        """
        one, two = self.carts(), self.carts()
        self.assertEqual((yield one.add("s", "apple")), ["apple"])
        self.assertEqual((yield two.add("s", "bread")), ["apple", "bread"])
        self.assertEqual((yield one.items("s")), ["apple", "bread"])
        self.assertEqual((yield two.items("other")), [])
        ttl = yield one._call("TTL", "manualb:cart:s")
        self.assertTrue(0 < int(ttl) <= testing.CART_EXPIRY, ttl)

    @inlineCallbacks
    def test_full(self):
        self.patch(testing, "CART_MAX_ITEMS", 1)
        carts = self.carts()
        yield carts.add("s", "1")
        yield self.assertFailure(carts.add("s", "2"), CartFull)
        self.assertEqual((yield carts.items("s")), ["1"])

    @inlineCallbacks
    def test_redisRestarted(self):
        """
        While Redis is down every call fails (the backend answers 503);
        once it is back, the next call connects again.
        """
        carts = self.carts()
        yield carts.add("s", "apple")
        yield self.redis.stop()
        yield self.assertFailure(carts.items("s"), Exception)
        yield self.redis.start()
        self.assertEqual((yield carts.items("s")), [])
        self.assertEqual((yield carts.add("s", "bread")), ["bread"])

    @inlineCallbacks
    def test_redisHangs(self):
        """
        A Redis that answers nothing fails the call within the timeout, and
        its connection is dropped.
        """
        carts = self.carts(timeout=0.2)
        yield carts.add("s", "apple")
        protocol = carts._protocol
        self.redis.pause()
        self.addCleanup(self.redis.resume)
        yield self.assertFailure(carts.items("s"), Exception)
        yield protocol.lost
        self.assertIsNone(carts._protocol)

    @inlineCallbacks
    def test_close(self):
        """
        close() drops the connection; calls fail from then on.
        """
        carts = self.carts()
        yield carts.add("s", "apple")
        protocol = carts._protocol
        yield carts.close()
        self.assertFalse(protocol.connected)
        yield self.assertFailure(carts.items("s"), ConnectionError)

    @inlineCallbacks
    def test_closeWhileConnecting(self):
        """
        close() while the connection is being made ends the attempt.
        """
        carts = self.carts()
        d = carts.items("s")
        yield carts.close()
        yield self.assertFailure(d, Exception)
        self.assertIsNone(carts._protocol)

