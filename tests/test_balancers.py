"""
The balancing strategies, each shown to spread requests as it promises.
"""

from __future__ import annotations

import os
import random
import sys
from collections import Counter

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from manualb.balancers import (
    BALANCERS,
    Cookie,
    Hash,
    IPHash,
    LeastConn,
    Random,
    RoundRobin,
    makeBalancer,
    parseHashKey,
    serverID,
)
from manualb.config import ServerAddress, ServerConfig
from manualb.interfaces import IAffinity
from manualb.selection import IBalancer, Server
from manualb.view import RequestView, clientHost, normalizeHost

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


class FakeHealth:
    """
    Stands in for a server's health: always available, with a weight factor
    the test sets (a slow start in progress).
    """

    def __init__(self, factor: float = 1.0) -> None:
        self.factor = factor

    def weightFactor(self) -> float:
        return self.factor

    def available(self) -> bool:
        return True


def server(host: str, weight: int = 1, port: int = 80) -> Server:
    return Server(ServerConfig(ServerAddress(host, port), weight=weight), FakeHealth(), None)


def servers(count: int) -> list[Server]:
    return [server(f"10.0.0.{index + 1}") for index in range(count)]


def request(
    uri: bytes = b"/",
    client: str | None = "192.0.2.1",
    headers: dict[bytes, bytes] | None = None,
    cookies: dict[bytes, bytes] | None = None,
) -> RequestView:
    """
    The view of a request for C{uri} from C{client} (an IPv4 or IPv6
    address, or L{None} for a UNIX socket), with C{headers} and C{cookies}
    (sent in a C{Cookie} header).
    """
    if client is None:
        address = UNIXAddress(None)
    elif ":" in client:
        address = IPv6Address("TCP", client, 1234)
    else:
        address = IPv4Address("TCP", client, 1234)
    lines = list((headers or {}).items())
    if cookies:
        lines.append((b"Cookie", b"; ".join(name + b"=" + value for name, value in cookies.items())))
    hosts = [value for name, value in lines if name.lower() == b"host"]
    return RequestView(
        clientHost(address),
        target=uri,
        path=uri.split(b"?", 1)[0],
        host=normalizeHost(hosts[0] if hosts else None),
        headers=lines,
    )


def picks(balancer: IBalancer, candidates: list[Server], count: int) -> str:
    """
    The first letters of the hosts of C{count} picks.
    """
    return "".join(balancer.pick(candidates, request()).name[0] for _ in range(count))


def clientAddresses(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [
        ".".join(str(rng.randrange(1, 255)) for _ in range(4)) for _ in range(count)
    ]


class RoundRobinTests(SynchronousTestCase):
    def test_weightsInterleaved(self):
        """
        Weights 3 and 1 give A A B A, over and over.
        """
        a, b = server("a", 3), server("b", 1)
        self.assertEqual(picks(RoundRobin(), [a, b], 20), "aaba" * 5)

    def test_nginxSequence(self):
        """
        Weights 5, 1, 1 give nginx's documented a a b a c a a.
        """
        candidates = [server("a", 5), server("b"), server("c")]
        self.assertEqual(picks(RoundRobin(), candidates, 21), "aabacaa" * 3)

    def test_equalWeightsAlternate(self):
        candidates = [server("a"), server("b"), server("c")]
        self.assertEqual(picks(RoundRobin(), candidates, 9), "abc" * 3)

    def test_effectiveWeight(self):
        """
        The current effective weight counts at every pick: a server whose
        slow start brings it from a third of its weight to all of it goes from
        a quarter of the picks to half.
        """
        a, b = server("a", 3), server("b", 3)
        a.health = FakeHealth(1 / 3)
        balancer = RoundRobin()
        self.assertEqual(Counter(picks(balancer, [a, b], 400)), {"a": 100, "b": 300})
        a.health.factor = 1.0
        self.assertEqual(Counter(picks(balancer, [a, b], 400)), {"a": 200, "b": 200})

    def test_allWeightsZero(self):
        """
        When every server's weight is 0, they still take turns.
        """
        candidates = [server("a"), server("b"), server("c")]
        for candidate in candidates:
            candidate.health = FakeHealth(0.0)
        self.assertEqual(picks(RoundRobin(), candidates, 6), "abcabc")

    def test_zeroWeightSkipped(self):
        """
        A server of weight 0 among weighted ones gets nothing.
        """
        a, b = server("a"), server("b")
        b.health = FakeHealth(0.0)
        self.assertEqual(picks(RoundRobin(), [a, b], 4), "aaaa")

    def test_singleCandidate(self):
        only = server("a")
        self.assertIs(RoundRobin().pick([only], request()), only)


class LeastConnTests(SynchronousTestCase):
    def test_lowestLoadWins(self):
        a, b, c = servers(3)
        a.active, b.active, c.active = 3, 1, 2
        self.assertIs(LeastConn().pick([a, b, c], request()), b)

    def test_weighted(self):
        """
        The load is in-flight requests per unit of weight: 4 requests on a
        server of weight 4 is less than 2 on one of weight 1.
        """
        heavy, light = server("10.0.0.1", 4), server("10.0.0.2", 1)
        heavy.active, light.active = 4, 2
        self.assertIs(LeastConn().pick([heavy, light], request()), heavy)
        heavy.active = 9
        self.assertIs(LeastConn().pick([heavy, light], request()), light)

    def test_tiesAlternate(self):
        a, b, c = server("a"), server("b"), server("c")
        c.active = 1
        self.assertEqual(picks(LeastConn(), [a, b, c], 6), "ababab")

    def test_tiesByWeight(self):
        """
        Idle servers, as in a quiet pool, share by weight.
        """
        a, b = server("a", 3), server("b", 1)
        self.assertEqual(picks(LeastConn(), [a, b], 8), "aabaaaba")

    def test_zeroWeight(self):
        """
        A server of weight 0 is taken only while it is idle and every other
        server is busy.
        """
        a, b = server("a"), server("b")
        b.health = FakeHealth(0.0)
        a.active = 5
        self.assertIs(LeastConn().pick([a, b], request()), b)
        b.active = 1
        self.assertIs(LeastConn().pick([a, b], request()), a)

    def test_spreadsAsLoadGrows(self):
        """
        Requests that stay in flight fill the servers evenly, by weight.
        """
        a, b = server("a", 2), server("b", 1)
        balancer = LeastConn()
        for _ in range(30):
            balancer.pick([a, b], request()).active += 1
        self.assertEqual((a.active, b.active), (20, 10))


class IPHashTests(SynchronousTestCase):
    def assign(self, balancer, candidates, addresses):
        return {
            address: balancer.pick(candidates, request(client=address))
            for address in addresses
        }

    def test_sameClientSameServer(self):
        candidates = servers(4)
        balancer = IPHash()
        for address in clientAddresses(50):
            first = balancer.pick(candidates, request(client=address))
            for _ in range(3):
                self.assertIs(balancer.pick(candidates, request(client=address)), first)

    def test_wholeAddress(self):
        """
        Clients of the same /24 are spread, unlike nginx's ip_hash.
        """
        chosen = self.assign(IPHash(), servers(4), [f"198.51.100.{n}" for n in range(1, 101)])
        self.assertEqual(len(set(chosen.values())), 4)

    def test_ipv6(self):
        candidates = servers(4)
        balancer = IPHash()
        addresses = [f"2001:db8::{n:x}" for n in range(1, 201)]
        chosen = self.assign(balancer, candidates, addresses)
        self.assertEqual(len(set(chosen.values())), 4)
        self.assertEqual(chosen, self.assign(IPHash(), candidates, addresses))

    def test_mappedIPv4(self):
        """
        An IPv4 client seen through an IPv6 socket keeps its server.
        """
        candidates = servers(4)
        for address in clientAddresses(20):
            self.assertIs(
                IPHash().pick(candidates, request(client="::ffff:" + address)),
                IPHash().pick(candidates, request(client=address)),
            )

    def test_noAddress(self):
        """
        A client without an IP address (a UNIX socket) is still served.
        """
        candidates = servers(2)
        unix = request(client=None)
        self.assertEqual(unix.clientAddress, "")
        self.assertIn(IPHash().pick(candidates, unix), candidates)

    def test_evenSpread(self):
        candidates = servers(4)
        shares = Counter(self.assign(IPHash(), candidates, clientAddresses(10000)).values())
        for candidate in candidates:
            self.assertTrue(1500 <= shares[candidate] <= 3500, shares)

    def test_weightsAsShares(self):
        heavy, light = server("10.0.0.1", 3), server("10.0.0.2", 1)
        shares = Counter(self.assign(IPHash(), [heavy, light], clientAddresses(10000)).values())
        self.assertTrue(6500 <= shares[heavy] <= 8500, shares)

    def test_addingMovesOnlyToNewServer(self):
        """
        Adding a fifth server moves about a fifth of the clients, all of them
        to the new server.
        """
        addresses = clientAddresses(10000)
        old = servers(4)
        new = old + [server("10.0.0.5")]
        balancer = IPHash()
        before = self.assign(balancer, old, addresses)
        after = self.assign(balancer, new, addresses)
        moved = [address for address in addresses if before[address] is not after[address]]
        self.assertEqual({after[address] for address in moved}, {new[4]})
        self.assertTrue(1000 <= len(moved) <= 3000, len(moved))

    def test_removingMovesOnlyItsClients(self):
        addresses = clientAddresses(10000)
        old = servers(4)
        gone = old[1]
        remaining = [candidate for candidate in old if candidate is not gone]
        balancer = IPHash()
        before = self.assign(balancer, old, addresses)
        after = self.assign(balancer, remaining, addresses)
        for address in addresses:
            if before[address] is not gone:
                self.assertIs(after[address], before[address])
        moved = Counter(after[address] for address in addresses if before[address] is gone)
        self.assertEqual(set(moved), set(remaining))

    def test_effectiveWeightDoesNotMoveClients(self):
        """
        The ring is made of configured weights: a slow start moves nobody.
        """
        candidates = servers(4)
        addresses = clientAddresses(500)
        balancer = IPHash()
        before = self.assign(balancer, candidates, addresses)
        candidates[0].health = FakeHealth(0.1)
        self.assertEqual(self.assign(IPHash(), candidates, addresses), before)

    def test_ringsCached(self):
        """
        Many different sets of candidates (servers going up and down) are
        all served right, with the rings they need.
        """
        pool = servers(6)
        balancer = IPHash()
        addresses = clientAddresses(50)
        for mask in range(1, 64):
            candidates = [pool[n] for n in range(6) if mask & (1 << n)]
            expected = self.assign(IPHash(), candidates, addresses)
            self.assertEqual(self.assign(balancer, candidates, addresses), expected)
        self.assertLessEqual(len(balancer._hash._rings), 16)


class HashKeyTests(SynchronousTestCase):
    def test_requestURI(self):
        key = parseHashKey("$request_uri")
        self.assertEqual(key(request(b"/a/b?x=1&y=2")), b"/a/b?x=1&y=2")
        self.assertEqual(key(request(b"http://example.com/a?x=1")), b"/a?x=1")

    def test_uriAndArgs(self):
        self.assertEqual(parseHashKey("$uri")(request(b"/a/b?x=1")), b"/a/b")
        self.assertEqual(parseHashKey("$args")(request(b"/a/b?x=1&y=2")), b"x=1&y=2")
        self.assertEqual(parseHashKey("$args")(request(b"/a/b")), b"")

    def test_argument(self):
        key = parseHashKey("$arg_user")
        self.assertEqual(key(request(b"/?id=3&user=bob&user=eve")), b"bob")
        self.assertEqual(key(request(b"/?id=3")), b"")

    def test_cookie(self):
        key = parseHashKey("$cookie_sid")
        self.assertEqual(key(request(cookies={b"sid": b"abc"})), b"abc")
        self.assertEqual(key(request()), b"")

    def test_cookieFromHeader(self):
        """
        A cookie is read from the header when Twisted has not parsed it yet
        (a request whose body is still streaming).
        """
        key = parseHashKey("$cookie_sid")
        self.assertEqual(key(request(headers={b"Cookie": b"a=1; sid=abc"})), b"abc")

    def test_header(self):
        key = parseHashKey("$http_x_user")
        self.assertEqual(key(request(headers={b"X-User": b"alice"})), b"alice")
        self.assertEqual(key(request()), b"")

    def test_hostAndConcatenation(self):
        key = parseHashKey("$host$uri")
        self.assertEqual(
            key(request(b"/a?x=1", headers={b"Host": b"Example.COM:8080"})), b"example.com/a"
        )

    def test_literalsAndBraces(self):
        key = parseHashKey("user:${http_x_user}v2-$remote_addr")
        self.assertEqual(
            key(request(headers={b"X-User": b"alice"}, client="192.0.2.7")),
            b"user:alicev2-192.0.2.7",
        )

    def test_unknownVariable(self):
        error = self.assertRaises(ValueError, parseHashKey, "$host$nonesuch")
        self.assertIn("$nonesuch", str(error))

    def test_badKeys(self):
        self.assertRaises(ValueError, parseHashKey, "")
        self.assertRaises(ValueError, parseHashKey, "$")
        self.assertRaises(ValueError, parseHashKey, "${}")
        self.assertRaises(ValueError, parseHashKey, "$http_")


class HashTests(SynchronousTestCase):
    def test_sameKeySameServer(self):
        candidates = servers(4)
        balancer = Hash("$cookie_sid")
        chosen = {}
        for n in range(200):
            sid = b"session%d" % (n,)
            chosen[sid] = balancer.pick(candidates, request(cookies={b"sid": sid}))
        for sid, expected in chosen.items():
            self.assertIs(
                balancer.pick(candidates, request(cookies={b"sid": sid}, client="203.0.113.9")),
                expected,
            )
        self.assertEqual(len(set(chosen.values())), 4)

    def test_keyedOnRequestURI(self):
        candidates = servers(3)
        balancer = Hash("$request_uri")
        first = balancer.pick(candidates, request(b"/page?id=7"))
        for client in clientAddresses(20):
            self.assertIs(balancer.pick(candidates, request(b"/page?id=7", client=client)), first)

    def test_sameRingAsIPHash(self):
        """
        C{hash $remote_addr} and C{ip_hash} agree.
        """
        candidates = servers(4)
        for address in clientAddresses(100):
            self.assertIs(
                Hash("$remote_addr").pick(candidates, request(client=address)),
                IPHash().pick(candidates, request(client=address)),
            )

    def test_retryMovesAlongTheRing(self):
        """
        Without the server a key hashed to (tried already), the key goes to
        another, the same one every time.
        """
        candidates = servers(4)
        balancer = Hash("$uri")
        first = balancer.pick(candidates, request(b"/x"))
        rest = [candidate for candidate in candidates if candidate is not first]
        second = balancer.pick(rest, request(b"/x"))
        self.assertIsNot(second, first)
        self.assertIs(balancer.pick(rest, request(b"/x")), second)

    def test_consistentAccepted(self):
        self.assertEqual(Hash("$uri consistent").key, "$uri")

    def test_badArguments(self):
        self.assertRaises(ValueError, Hash, None)
        self.assertRaises(ValueError, Hash, "  ")
        self.assertRaises(ValueError, Hash, "$uri $args")
        self.assertRaises(ValueError, Hash, "$unknown")


class RandomTests(SynchronousTestCase):
    def test_fairShares(self):
        candidates = servers(3)
        balancer = Random(rng=random.Random(42))
        shares = Counter(balancer.pick(candidates, request()) for _ in range(30000))
        for candidate in candidates:
            self.assertTrue(9000 <= shares[candidate] <= 11000, shares)

    def test_weightedShares(self):
        heavy, light = server("10.0.0.1", 3), server("10.0.0.2", 1)
        balancer = Random(rng=random.Random(42))
        shares = Counter(balancer.pick([heavy, light], request()) for _ in range(20000))
        self.assertTrue(14000 <= shares[heavy] <= 16000, shares)

    def test_lessLoadedOfTwo(self):
        """
        Both servers are drawn every time, so the busy one is never taken.
        """
        busy, idle = servers(2)
        busy.active = 10
        balancer = Random(rng=random.Random(1))
        self.assertEqual({balancer.pick([busy, idle], request()) for _ in range(100)}, {idle})

    def test_busyServerAvoided(self):
        """
        Among three servers, the busy one always loses to whichever other
        server was drawn with it; the other two share.
        """
        busy, a, b = servers(3)
        busy.active = 10
        balancer = Random(rng=random.Random(7))
        shares = Counter(balancer.pick([busy, a, b], request()) for _ in range(3000))
        self.assertEqual(set(shares), {a, b})
        self.assertTrue(1300 <= shares[a] <= 1700, shares)

    def test_zeroWeights(self):
        a, b = servers(2)
        b.health = FakeHealth(0.0)
        balancer = Random(rng=random.Random(3))
        self.assertEqual({balancer.pick([a, b], request()) for _ in range(50)}, {a})
        a.health = FakeHealth(0.0)
        self.assertEqual({balancer.pick([a, b], request()) for _ in range(50)}, {a, b})

    def test_singleCandidate(self):
        only = server("a")
        self.assertIs(Random().pick([only], request()), only)


class CookieTests(SynchronousTestCase):
    def setCookies(self, balancer, server, req):
        """
        What the response of C{server} to C{req} sets, by the balancer's
        L{IAffinity}.
        """
        return [
            value
            for name, value in balancer.affinityHeaders(server, req)
            if name == b"Set-Cookie"
        ]

    def test_affinity(self):
        """
        The cookie balancer tells the exchange the cookie it keys on.
        """
        balancer = Cookie()
        self.assertTrue(IAffinity.providedBy(balancer))
        self.assertEqual(balancer.key, "cookie manualb_server")

    def test_serverID(self):
        """
        The id is the first 16 hex digits of the SHA-256 of the name
        (C{printf 10.0.0.1:80 | sha256sum}).
        """
        self.assertEqual(serverID(server("10.0.0.1")), b"e0f2af3b3dabfb17")

    def test_newClient(self):
        """
        A client without the cookie gets a server by weighted round robin
        and the cookie naming it.
        """
        a, b = server("10.0.0.1", 3), server("10.0.0.2")
        balancer = Cookie()
        chosen = []
        for _ in range(4):
            req = request()
            picked = balancer.pick([a, b], req)
            chosen.append(picked)
            self.assertEqual(
                self.setCookies(balancer, picked, req),
                [b"manualb_server=" + serverID(picked) + b"; Path=/; HttpOnly"],
            )
        self.assertEqual(chosen, [a, a, b, a])

    def test_returningClientSticks(self):
        candidates = servers(3)
        balancer = Cookie()
        for candidate in candidates:
            for _ in range(3):
                req = request(cookies={b"manualb_server": serverID(candidate)})
                self.assertIs(balancer.pick(candidates, req), candidate)
                self.assertEqual(self.setCookies(balancer, candidate, req), [])

    def test_cookieFromHeader(self):
        a, b = servers(2)
        req = request(headers={b"Cookie": b"x=1; manualb_server=" + serverID(b)})
        self.assertIs(Cookie().pick([a, b], req), b)

    def test_serverGone(self):
        """
        A cookie naming a server that is not among the candidates (down, or
        removed) gets another server and a new cookie.
        """
        a, b, c = servers(3)
        req = request(cookies={b"manualb_server": serverID(c)})
        balancer = Cookie()
        picked = balancer.pick([a, b], req)
        self.assertIn(picked, [a, b])
        self.assertEqual(
            self.setCookies(balancer, picked, req),
            [b"manualb_server=" + serverID(picked) + b"; Path=/; HttpOnly"],
        )

    def test_pickSetsNothing(self):
        """
        Picking does not touch the response: the cookie is for the server
        that answers, which the exchange knows only after any retry.
        """
        a, b = servers(2)
        balancer = Cookie()
        req = request()
        first = balancer.pick([a, b], req)
        second = balancer.pick([b if first is a else a], req)
        self.assertIsNot(second, first)
        self.assertEqual(
            self.setCookies(balancer, second, req),
            [b"manualb_server=" + serverID(second) + b"; Path=/; HttpOnly"],
        )

    def test_stickyRetryReplacesCookie(self):
        """
        A client whose server fails is sent to another and told so.
        """
        a, b = servers(2)
        req = request(cookies={b"manualb_server": serverID(a)})
        balancer = Cookie()
        self.assertIs(balancer.pick([a, b], req), a)
        self.assertEqual(self.setCookies(balancer, a, req), [])
        self.assertIs(balancer.pick([b], req), b)
        self.assertEqual(
            self.setCookies(balancer, b, req),
            [b"manualb_server=" + serverID(b) + b"; Path=/; HttpOnly"],
        )

    def test_oneAddressManyClients(self):
        """
        Clients behind one address, without cookies, are spread evenly.
        """
        candidates = servers(2)
        balancer = Cookie()
        shares = Counter(
            balancer.pick(candidates, request(client="203.0.113.1")) for _ in range(100)
        )
        self.assertEqual(sorted(shares.values()), [50, 50])

    def test_customName(self):
        a, b = servers(2)
        balancer = Cookie("route")
        req = request(cookies={b"manualb_server": serverID(b)})
        picked = balancer.pick([a, b], req)
        self.assertEqual(
            self.setCookies(balancer, picked, req),
            [b"route=" + serverID(picked) + b"; Path=/; HttpOnly"],
        )
        self.assertIs(balancer.pick([a, b], request(cookies={b"route": serverID(b)})), b)

    def test_badNames(self):
        for name in ["bad name;", "a=b", "caf\u00e9", "x,y"]:
            self.assertRaises(ValueError, Cookie, name)


class MakeBalancerTests(SynchronousTestCase):
    def test_builtIns(self):
        arguments = {"hash": "$request_uri"}
        self.assertEqual(
            set(BALANCERS), {"round_robin", "least_conn", "ip_hash", "hash", "random", "cookie"}
        )
        for name in BALANCERS:
            balancer = makeBalancer(name, arguments.get(name))
            self.assertTrue(IBalancer.providedBy(balancer))
            self.assertEqual(balancer.name, name)
            candidates = servers(2)
            self.assertIn(balancer.pick(candidates, request()), candidates)

    def test_arguments(self):
        self.assertEqual(makeBalancer("cookie", "sess").cookieName, "sess")
        self.assertEqual(makeBalancer("cookie", None).cookieName, "manualb_server")
        self.assertEqual(makeBalancer("hash", "$host$uri").key, "$host$uri")

    def test_badArguments(self):
        for method, argument in [
            ("round_robin", "foo"),
            ("least_conn", "1"),
            ("ip_hash", "24"),
            ("random", "2"),
            ("hash", None),
            ("hash", "$nonesuch"),
            ("cookie", "bad name;"),
        ]:
            self.assertRaises(ValueError, makeBalancer, method, argument)

    def test_unknownMethod(self):
        error = self.assertRaises(ValueError, makeBalancer, "fastest", None)
        self.assertIn("round_robin", str(error))
        self.assertRaises(ValueError, makeBalancer, "nonesuch_module.Balancer", None)

    def test_notABalancer(self):
        self.assertRaises(ValueError, makeBalancer, "tests.test_balancers.notABalancer", None)

    def test_dottedName(self):
        balancer = makeBalancer("tests.test_balancers.firstFactory", "x")
        self.assertIsInstance(balancer, RoundRobin)

    def test_example(self):
        """
        The example strategy of C{examples/custom_balancer.py} loads by its
        dotted name and prefers its zone.
        """
        self.addCleanup(sys.path.remove, EXAMPLES)
        self.addCleanup(sys.modules.pop, "custom_balancer", None)
        sys.path.insert(0, EXAMPLES)
        balancer = makeBalancer("custom_balancer.PreferZone", "eu-west")
        self.assertEqual(balancer.name, "prefer_zone")
        east = server("app1.us-east.internal")
        west1 = server("app1.eu-west.internal")
        west2 = server("app2.eu-west.internal")
        self.assertEqual(
            [balancer.pick([east, west1, west2], request()) for _ in range(4)],
            [west1, west2, west1, west2],
        )
        self.assertIs(balancer.pick([east], request()), east)
        self.assertRaises(ValueError, makeBalancer, "custom_balancer.PreferZone", None)


def firstFactory(argument):
    """
    A factory of a user's strategy, loaded by its dotted name.
    """
    return RoundRobin()


def notABalancer(argument):
    return object()


class SteadyPickTests(SynchronousTestCase):
    """
    Each built-in strategy's C{_pickSteady}, which a pool calls while its
    primaries are plainly up, with their weights known, picks as C{pick}
    does.
    """

    def test_samePicks(self):
        rng = random.Random(1)
        makers = [
            RoundRobin,
            LeastConn,
            IPHash,
            lambda: Hash("$cookie_sid"),
            Cookie,
            lambda: Random(rng=random.Random(7)),
        ]
        for weights in ([1, 1], [5, 1, 1], [3, 0, 2], [0, 0]):
            candidates = [
                server(f"10.0.0.{index + 1}", weight) for index, weight in enumerate(weights)
            ]
            known = [float(weight) for weight in weights]
            total = 0.0
            for weight in known:
                total += weight
            for make in makers:
                general, steady = make(), make()
                for index in range(60):
                    for each in candidates:
                        each.active = rng.randrange(3)
                    cookies = {b"sid": b"%d" % (index % 7,)}
                    if index % 3 == 0:
                        cookies[b"manualb_server"] = serverID(candidates[index % len(candidates)])
                    view = request(client=f"192.0.2.{index % 9 + 1}", cookies=cookies)
                    self.assertIs(
                        steady._pickSteady(candidates, known, total, view),
                        general.pick(candidates, view),
                        (weights, general, index),
                    )

    def test_mixed(self):
        """
        Picks among a pool's steady primaries and picks among other
        candidates (a server down for a while, a retry), in any order, go as
        they would all by C{pick}: the rotation's state is one.
        """
        candidates = [server("10.0.0.1", 5), server("10.0.0.2"), server("10.0.0.3", 2)]
        known = [5.0, 1.0, 2.0]
        rng = random.Random(3)
        for make in (RoundRobin, Cookie):
            mixed, general = make(), make()
            for index in range(300):
                view = request()
                draw = rng.random()
                if draw < 0.6:
                    got = mixed._pickSteady(candidates, known, 8.0, view)
                    expected = general.pick(candidates, view)
                else:
                    some = candidates[:2] if draw < 0.8 else candidates[1:]
                    got = mixed.pick(list(some), view)
                    expected = general.pick(list(some), view)
                self.assertIs(got, expected, (make, index))
