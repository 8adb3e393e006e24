"""
The gatekeeper: IP rules, the rate limit and the WAF, per route, before any
backend is touched; the client's address behind trusted proxies; and the
gatekeeper's keys of the configuration file.
"""

from __future__ import annotations

import attrs
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from manualb import service
from manualb.config import (
    ConfigError,
    GatekeeperConfig,
    RateLimitConfig,
    RouteConfig,
    WAFConfig,
    WAFRule,
)
from manualb.configfile import parseConfig
from manualb.gatekeeper import (
    Gatekeeper,
    IPRules,
    TrustedProxies,
    parseNetworks,
)
from manualb.interfaces import IRateLimiter, IRequestInspector, IStage
from manualb.ratelimit import parseRate
from manualb.records import Finding, GatekeeperRecord, RateDecision
from manualb.stages import requestView
from manualb.testing import MemoryBalancer
from manualb.urlmap import Route, URLMap
from manualb.view import Passage
from manualb.waf import parseLevel, parseMode, parseRule

from .test_proxy import GET, OK, headOf


# Fakes of the engines.


@implementer(IRequestInspector)
class FakeWAF:
    """
    Finds C{finding} in requests whose target holds C{b"attack"}, and in
    bodies that hold it.
    """

    def __init__(self, config: WAFConfig, finding: Finding | None = None):
        self.config = config
        self.mode = config.mode
        self.bodyLimit = config.body_limit
        self.finding = finding or Finding("sqli-1", "sqli", "query", "block", "attack")
        self.inspected: list = []
        self.bodies: list[bytes] = []

    def inspect(self, request):
        self.inspected.append(request)
        if b"attack" in request.target:
            return self.finding
        return None

    def inspectBody(self, request, body):
        self.bodies.append(body)
        if b"attack" in body:
            return attrs.evolve(self.finding, field="body")
        return None


class WAFs:
    """
    Makes a L{FakeWAF} for each configuration it is asked for.
    """

    def __init__(self):
        self.made: dict[WAFConfig, FakeWAF] = {}

    def __call__(self, config: WAFConfig) -> FakeWAF:
        waf = self.made[config] = FakeWAF(config)
        return waf


@implementer(IRateLimiter)
class FakeLimiter:
    """
    Answers each check with the next of C{decisions} (the last one again
    once they run out), and remembers what it was asked.
    """

    def __init__(self, *decisions: RateDecision):
        self.decisions = list(decisions) or [RateDecision("$remote_addr=x", True)]
        self.checks: list = []

    def check(self, request, route):
        self.checks.append((request.clientAddress, route))
        if len(self.decisions) > 1:
            return self.decisions.pop(0)
        return self.decisions[0]


def routeConfig(name: str, path: str, **overrides) -> RouteConfig:
    return RouteConfig(name=name, path=path, upstream="pool", **overrides)


def urlMapOf(*routes: RouteConfig) -> URLMap:
    return URLMap(Route(config, object()) for config in routes)


def passage(
    client: str = "192.0.2.1",
    target: bytes = b"/",
    method: bytes = b"GET",
    headers=((b"host", b"example.com"),),
) -> Passage:
    return Passage(requestView(client, False, method, target, list(headers)))


# Networks.


class IPRulesTests(SynchronousTestCase):
    """
    L{IPRules}: the narrowest network holding the client decides.
    """

    def test_denyList(self):
        rules = IPRules([], ["192.0.2.0/24", "2001:db8::/32"])
        self.assertEqual(rules.check("192.0.2.7"), (False, "192.0.2.0/24"))
        self.assertEqual(rules.check("2001:db8:1::9"), (False, "2001:db8::/32"))
        self.assertEqual(rules.check("198.51.100.1"), (True, None))
        self.assertEqual(rules.check("2001:db9::1"), (True, None))

    def test_allowList(self):
        """
        With an C{allow} list, a client in none of its networks is refused.
        """
        rules = IPRules(["10.0.0.0/8", "fd00::/8"], [])
        self.assertEqual(rules.check("10.9.8.7"), (True, "10.0.0.0/8"))
        self.assertEqual(rules.check("fd12::1"), (True, "fd00::/8"))
        self.assertEqual(rules.check("11.0.0.1"), (False, None))
        self.assertEqual(rules.check("fe80::1"), (False, None))

    def test_narrowerWins(self):
        rules = IPRules(["10.0.0.0/8", "10.1.2.3/32"], ["10.1.0.0/16"])
        self.assertEqual(rules.check("10.2.0.1"), (True, "10.0.0.0/8"))
        self.assertEqual(rules.check("10.1.0.1"), (False, "10.1.0.0/16"))
        self.assertEqual(rules.check("10.1.2.3"), (True, "10.1.2.3/32"))
        rules = IPRules(["2001:db8:1::/48"], ["2001:db8::/32"])
        self.assertEqual(rules.check("2001:db8:1::5"), (True, "2001:db8:1::/48"))
        self.assertEqual(rules.check("2001:db8:2::5"), (False, "2001:db8::/32"))

    def test_bothLists(self):
        """
        A network in both lists denies.
        """
        rules = IPRules(["192.0.2.0/24"], ["192.0.2.0/24"])
        self.assertEqual(rules.check("192.0.2.1"), (False, "192.0.2.0/24"))

    def test_notAnAddress(self):
        """
        A client without an address (a UNIX socket) is in no network.
        """
        self.assertEqual(IPRules(["10.0.0.0/8"], []).check(""), (False, None))
        self.assertEqual(IPRules([], ["10.0.0.0/8"]).check(""), (True, None))

    def test_mappedAddress(self):
        """
        An IPv4-mapped IPv6 address is its IPv4 address.
        """
        rules = IPRules([], ["192.0.2.0/24"])
        self.assertEqual(rules.check("::ffff:192.0.2.1"), (False, "192.0.2.0/24"))


class TrustedProxiesTests(SynchronousTestCase):
    """
    L{TrustedProxies} reads the client's address from the forwarding
    headers of the proxies it trusts, and only of them.
    """

    def setUp(self):
        self.proxies = TrustedProxies(["10.0.0.0/8", "fd00::/8"])

    def client(self, peer, *headers):
        return self.proxies.clientAddress(peer, list(headers))

    def test_untrustedPeer(self):
        """
        A peer that is not trusted is the client, whatever it sends.
        """
        self.assertEqual(
            self.client(
                "192.0.2.66",
                (b"X-Forwarded-For", b"10.0.0.1"),
                (b"Forwarded", b"for=10.0.0.1"),
            ),
            "192.0.2.66",
        )

    def test_noHeader(self):
        self.assertEqual(self.client("10.0.0.1"), "10.0.0.1")

    def test_forwardedFor(self):
        self.assertEqual(
            self.client("10.0.0.1", (b"X-Forwarded-For", b"203.0.113.9")), "203.0.113.9"
        )

    def test_severalHops(self):
        """
        Trusted hops are skipped right to left; the first untrusted address
        is the client, and what it claimed before is ignored.
        """
        self.assertEqual(
            self.client(
                "10.0.0.1",
                (b"X-Forwarded-For", b"6.6.6.6, 203.0.113.9, 10.0.0.5"),
                (b"x-forwarded-for", b"fd00::7"),
            ),
            "203.0.113.9",
        )

    def test_allTrusted(self):
        """
        When every hop is trusted, the leftmost is the client.
        """
        self.assertEqual(
            self.client("10.0.0.1", (b"X-Forwarded-For", b"10.0.0.3, 10.0.0.2")),
            "10.0.0.3",
        )

    def test_portsAndIPv6(self):
        for value, client in [
            (b"192.0.2.1:8080", "192.0.2.1"),
            (b"2001:db8::1", "2001:db8::1"),
            (b"[2001:db8::1]:443", "2001:db8::1"),
            (b"[2001:DB8:0::1]", "2001:db8::1"),
            (b"::ffff:192.0.2.1", "192.0.2.1"),
        ]:
            self.assertEqual(
                self.client("10.0.0.1", (b"X-Forwarded-For", value)), client, value
            )

    def test_garbage(self):
        """
        Reading stops at a value that is not an address: the hop to its
        right (which wrote it) is the client.
        """
        for value, client in [
            (b"203.0.113.9, nonsense", "10.0.0.1"),
            (b"203.0.113.9, unknown, 10.0.0.4", "10.0.0.4"),
            (b"", "10.0.0.1"),
            (b",,,", "10.0.0.1"),
            (b"[192.0.2.1]", "10.0.0.1"),
            (b"[2001:db8::1", "10.0.0.1"),
            (b"\xff\xfe", "10.0.0.1"),
            (b"1.2.3.4.5", "10.0.0.1"),
        ]:
            self.assertEqual(
                self.client("10.0.0.1", (b"X-Forwarded-For", value)), client, value
            )

    def test_forwarded(self):
        """
        RFC 7239 C{Forwarded}: the C{for=} of each element, quoted IPv6
        with brackets and ports.
        """
        for value, client in [
            (b"for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            (b'For="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
            (b'for="192.0.2.43:80"', "192.0.2.43"),
            (b"for=192.0.2.43, for=10.0.0.9", "192.0.2.43"),
            (b'for=192.0.2.43, for="[fd00::1]"', "192.0.2.43"),
            (b"for=192.0.2.43, for=_gazonk", "10.0.0.1"),
            (b"for=unknown", "10.0.0.1"),
            (b"proto=https", "10.0.0.1"),
            (b'for="a,b", for=192.0.2.1', "192.0.2.1"),
            (b'for="oops', "10.0.0.1"),
        ]:
            self.assertEqual(
                self.client("10.0.0.1", (b"Forwarded", value)), client, value
            )

    def test_forwardedForFirst(self):
        """
        A request with both headers is read from C{X-Forwarded-For}.
        """
        self.assertEqual(
            self.client(
                "10.0.0.1",
                (b"Forwarded", b"for=6.6.6.6"),
                (b"X-Forwarded-For", b"203.0.113.9"),
            ),
            "203.0.113.9",
        )

    def test_longChain(self):
        """
        A chain of trusted hops longer than any real one is read only so
        far from the right.
        """
        value = b", ".join([b"192.0.2.1"] + [b"10.0.0.2"] * 1000)
        self.assertEqual(
            self.client("10.0.0.1", (b"X-Forwarded-For", value)), "10.0.0.2"
        )


# The stage.


class GatekeeperStageTests(SynchronousTestCase):
    """
    L{Gatekeeper} as a stage, with fake engines.
    """

    def setUp(self):
        self.ids = iter(b"%016x" % (n,) for n in range(1, 100))
        self.newId = lambda: next(self.ids)

    def gatekeeper(self, routes=(), **config) -> Gatekeeper:
        self.wafs = WAFs()
        waf = config.pop("waf", WAFConfig())
        limiter = config.pop("limiter", None)
        self.limiters: list = []

        def makeLimiter(rate, route):
            self.limiters.append((rate, route))
            return limiter

        return Gatekeeper(
            GatekeeperConfig(waf=waf, **config),
            urlMapOf(*routes) if routes else None,
            self.wafs,
            None if limiter is None else makeLimiter,
            self.newId,
        )

    def test_interface(self):
        verifyObject(IStage, Gatekeeper())

    def test_nothingConfigured(self):
        """
        With nothing configured, the stage lets every request through and
        leaves the passage alone.
        """
        gatekeeper = self.gatekeeper([routeConfig("a", "/")])
        self.assertFalse(gatekeeper.active)
        request = passage(target=b"/attack")
        self.assertIsNone(gatekeeper.handle(request))
        self.assertEqual((request.decisions, request.route, request.requestId), ([], None, b""))

    def test_denied(self):
        """
        A denied client gets 403 with a request id, in the header and the
        page, and a log line with the id, client, request and rule.
        """
        gatekeeper = self.gatekeeper(deny=("192.0.2.0/24",))
        request = passage(target=b"/a?b")
        with capturedLogs() as events:
            answer = gatekeeper.handle(request)
        self.assertEqual((answer.code, answer.reason), (403, b"Forbidden"))
        self.assertEqual(request.requestId, b"0000000000000001")
        self.assertIn((b"X-Request-Id", b"0000000000000001"), answer.headers)
        self.assertIn(b"0000000000000001", answer.detail)
        self.assertNotIn(b"192.0.2", answer.detail)
        self.assertEqual(
            request.decisions, [GatekeeperRecord("deny", "block", "192.0.2.0/24", 403)]
        )
        [event] = events
        line = event["log_format"].format(**event)
        for part in ("0000000000000001", "192.0.2.1", '"GET /a?b"', "deny", "192.0.2.0/24"):
            self.assertIn(part, line)

    def test_randomIds(self):
        gatekeeper = Gatekeeper(GatekeeperConfig(deny=("0.0.0.0/0",)))
        first, second = passage(), passage()
        with capturedLogs():
            gatekeeper.handle(first)
            gatekeeper.handle(second)
        self.assertRegex(first.requestId, b"^[0-9a-f]{16}$")
        self.assertNotEqual(first.requestId, second.requestId)

    def test_allowList(self):
        gatekeeper = self.gatekeeper(allow=("10.0.0.0/8",))
        request = passage("10.1.1.1")
        self.assertIsNone(gatekeeper.handle(request))
        self.assertEqual(request.decisions, [GatekeeperRecord("allow", "pass", "10.0.0.0/8")])
        request = passage("192.0.2.1")
        with capturedLogs():
            self.assertEqual(gatekeeper.handle(request).code, 403)
        self.assertEqual(
            request.decisions,
            [GatekeeperRecord("allow", "block", "in no allowed network", 403)],
        )

    def test_routeLists(self):
        """
        A route's lists replace the gatekeeper's, each on its own; the
        gatekeeper routes the request itself, and the URL map keeps its
        decision.
        """
        routes = [
            routeConfig("admin", "/admin", allow=("10.0.0.0/8",)),
            routeConfig("open", "/open", deny=()),
            routeConfig("rest", "/"),
        ]
        gatekeeper = self.gatekeeper(routes, deny=("192.0.2.0/24",))
        urlMap = gatekeeper._urlMap

        def code(client, target):
            request = passage(client, target)
            with capturedLogs():
                answer = gatekeeper.handle(request)
            if answer is None:
                self.assertIsNone(urlMap.handle(request))
                return request.route.route.name
            return answer.code

        self.assertEqual(code("10.0.0.1", b"/admin/x"), "admin")
        self.assertEqual(code("198.51.100.1", b"/admin/x"), 403)
        # The route keeps the gatekeeper's deny list.
        self.assertEqual(code("192.0.2.1", b"/open"), "open")
        self.assertEqual(code("192.0.2.1", b"/x"), 403)
        self.assertEqual(code("198.51.100.1", b"/x"), "rest")

    def test_routeListsKeepDeny(self):
        """
        A route with its own C{allow} list keeps the gatekeeper's C{deny}.
        """
        routes = [routeConfig("admin", "/admin", allow=("10.0.0.0/8",))]
        gatekeeper = self.gatekeeper(routes, deny=("10.9.0.0/16",))
        with capturedLogs():
            self.assertEqual(gatekeeper.handle(passage("10.9.0.1", b"/admin")).code, 403)
        self.assertIsNone(gatekeeper.handle(passage("10.8.0.1", b"/admin")))

    def test_unrouted(self):
        """
        A denied client gets 403 for a path no route serves, too.
        """
        routes = [routeConfig("admin", "/admin", allow=("10.0.0.0/8",))]
        gatekeeper = self.gatekeeper(routes, deny=("192.0.2.0/24",))
        with capturedLogs():
            self.assertEqual(gatekeeper.handle(passage("192.0.2.1", b"/nothing")).code, 403)
        request = passage("198.51.100.1", b"/nothing")
        self.assertIsNone(gatekeeper.handle(request))
        self.assertEqual(gatekeeper._urlMap.handle(request).code, 404)

    def test_rateRefused(self):
        """
        A request over its bucket's burst gets 429 with C{Retry-After} in
        whole seconds, at least 1.
        """
        for retryAfter, header in [(0.2, b"1"), (2.5, b"3"), (0.0, b"1"), (7.0, b"7")]:
            limiter = FakeLimiter(RateDecision("$remote_addr=192.0.2.1", False, 0, retryAfter))
            gatekeeper = self.gatekeeper(rate=RateLimitConfig(1.0), limiter=limiter)
            request = passage()
            with capturedLogs() as events:
                answer = gatekeeper.handle(request)
            self.assertEqual((answer.code, answer.reason), (429, b"Too Many Requests"))
            self.assertIn((b"Retry-After", header), answer.headers)
            self.assertIn((b"X-Request-Id", request.requestId), answer.headers)
            self.assertEqual(
                request.decisions,
                [GatekeeperRecord("rate", "block", "$remote_addr=192.0.2.1", 429)],
            )
            self.assertEqual(len(events), 1)

    def test_rateDelayed(self):
        limiter = FakeLimiter(RateDecision("$remote_addr=192.0.2.1", True, 0.25))
        gatekeeper = self.gatekeeper(rate=RateLimitConfig(1.0, 5), limiter=limiter)
        request = passage()
        self.assertIsNone(gatekeeper.handle(request))
        self.assertEqual(request.delay, 0.25)
        self.assertEqual(
            request.decisions,
            [GatekeeperRecord("rate", "delay", "$remote_addr=192.0.2.1 0.250s")],
        )

    def test_ratePassed(self):
        limiter = FakeLimiter(RateDecision("b", True))
        gatekeeper = self.gatekeeper(rate=RateLimitConfig(1.0), limiter=limiter)
        request = passage()
        self.assertIsNone(gatekeeper.handle(request))
        self.assertEqual(request.delay, 0.0)
        self.assertEqual(request.decisions, [GatekeeperRecord("rate", "pass", "b")])

    def test_ratePerRoute(self):
        """
        The limiter is asked with the route's name, for the routes that have
        a rate (their own or the gatekeeper's), and not for the others.
        """
        routes = [
            routeConfig("login", "/login", rate=RateLimitConfig(0.1)),
            routeConfig("free", "/free", rate=RateLimitConfig(0.0)),
            routeConfig("rest", "/"),
        ]
        limiter = FakeLimiter()
        gatekeeper = self.gatekeeper(routes, rate=RateLimitConfig(10.0), limiter=limiter)
        for target in (b"/login", b"/free", b"/x"):
            self.assertIsNone(gatekeeper.handle(passage(target=target)))
        self.assertEqual(limiter.checks, [("192.0.2.1", "login"), ("192.0.2.1", "rest")])
        # A limiter for the gatekeeper's rate, and one for the route's own.
        self.assertEqual(
            self.limiters, [(RateLimitConfig(10.0), None), (RateLimitConfig(0.1), "login")]
        )
        # Only a route's own rate, without a global one.
        limiter = FakeLimiter()
        gatekeeper = self.gatekeeper(routes, limiter=limiter)
        for target in (b"/login", b"/free", b"/x"):
            gatekeeper.handle(passage(target=target))
        self.assertEqual(limiter.checks, [("192.0.2.1", "login")])

    def test_noLimiter(self):
        """
        Without a limiter (none built), a rate limits nothing.
        """
        gatekeeper = self.gatekeeper(rate=RateLimitConfig(1.0))
        self.assertFalse(gatekeeper.active)

    def test_ipRulesFirst(self):
        """
        A denied client is not counted by the rate limit, nor inspected.
        """
        limiter = FakeLimiter()
        gatekeeper = self.gatekeeper(
            deny=("192.0.2.0/24",),
            rate=RateLimitConfig(1.0),
            limiter=limiter,
            waf=WAFConfig("block"),
        )
        with capturedLogs():
            gatekeeper.handle(passage(target=b"/attack"))
        self.assertEqual(limiter.checks, [])
        [waf] = self.wafs.made.values()
        self.assertEqual(waf.inspected, [])

    def test_wafBlocks(self):
        gatekeeper = self.gatekeeper(waf=WAFConfig("block"))
        request = passage(target=b"/?q=attack")
        with capturedLogs() as events:
            answer = gatekeeper.handle(request)
        self.assertEqual(answer.code, 403)
        self.assertEqual(
            request.decisions,
            [GatekeeperRecord("waf", "block", "sqli-1 (sqli) in query: attack", 403)],
        )
        [event] = events
        line = event["log_format"].format(**event)
        self.assertIn(request.requestId.decode("ascii"), line)
        self.assertIn("sqli-1", line)
        self.assertIsNone(gatekeeper.handle(passage(target=b"/?q=fine")))

    def test_wafDetects(self):
        """
        In detect mode, a finding is logged and recorded, and the request
        goes on.
        """
        gatekeeper = self.gatekeeper(waf=WAFConfig("detect"))
        request = passage(target=b"/?q=attack")
        with capturedLogs() as events:
            self.assertIsNone(gatekeeper.handle(request))
        self.assertEqual(
            request.decisions, [GatekeeperRecord("waf", "log", "sqli-1 (sqli) in query: attack")]
        )
        self.assertEqual(len(events), 1)
        self.assertEqual(request.requestId, b"")

    def test_wafLogRule(self):
        """
        A finding whose action is C{log} (a custom rule that logs) does not
        block.
        """
        gatekeeper = self.gatekeeper(waf=WAFConfig("block"))
        [waf] = self.wafs.made.values()
        waf.finding = Finding("mine", "custom", "path", "log")
        request = passage(target=b"/attack")
        with capturedLogs():
            self.assertIsNone(gatekeeper.handle(request))
        self.assertEqual(request.decisions, [GatekeeperRecord("waf", "log", "mine (custom) in path")])

    def test_wafPerRoute(self):
        """
        A route may turn the WAF off, to detect only, or change its level:
        a WAF is made for each configuration, once.
        """
        routes = [
            routeConfig("upload", "/upload", waf="off"),
            routeConfig("watch", "/watch", waf="detect"),
            routeConfig("strict", "/strict", waf_level=4),
            routeConfig("strict2", "/strict2", waf_level=4),
            routeConfig("rest", "/"),
        ]
        gatekeeper = self.gatekeeper(routes, waf=WAFConfig("block"))
        self.assertEqual(
            set(self.wafs.made),
            {WAFConfig("block"), WAFConfig("detect"), WAFConfig("block", 4)},
        )
        with capturedLogs():
            self.assertIsNone(gatekeeper.handle(passage(target=b"/upload/attack")))
            self.assertIsNone(gatekeeper.handle(passage(target=b"/watch/attack")))
            self.assertEqual(gatekeeper.handle(passage(target=b"/strict/attack")).code, 403)
            self.assertEqual(gatekeeper.handle(passage(target=b"/x/attack")).code, 403)
        self.assertEqual(len(self.wafs.made[WAFConfig("block", 4)].inspected), 1)
        # And a route may turn it on.
        routes = [routeConfig("api", "/api", waf="block"), routeConfig("rest", "/")]
        gatekeeper = self.gatekeeper(routes)
        with capturedLogs():
            self.assertEqual(gatekeeper.handle(passage(target=b"/api/attack")).code, 403)
            self.assertIsNone(gatekeeper.handle(passage(target=b"/x/attack")))

    def test_bodyCheck(self):
        """
        A request with a body gets a body check of the WAF's body limit,
        which refuses a body in which an attack is found.
        """
        gatekeeper = self.gatekeeper(waf=WAFConfig("block", body_limit=100))
        request = passage(
            method=b"POST", headers=[(b"content-length", b"10"), (b"host", b"a")]
        )
        self.assertIsNone(gatekeeper.handle(request))
        self.assertEqual(request.bodyCheckSize, 100)
        self.assertIsNone(request.bodyCheck(b"q=fine"))
        with capturedLogs():
            answer = request.bodyCheck(b"q=attack")
        self.assertEqual(answer.code, 403)
        self.assertIn((b"X-Request-Id", request.requestId), answer.headers)
        self.assertEqual(request.decisions[-1].detail, "sqli-1 (sqli) in body: attack")

    def test_bodyCheckDetects(self):
        gatekeeper = self.gatekeeper(waf=WAFConfig("detect", body_limit=100))
        request = passage(method=b"PUT", headers=[(b"transfer-encoding", b"chunked")])
        gatekeeper.handle(request)
        with capturedLogs():
            self.assertIsNone(request.bodyCheck(b"attack"))
        self.assertEqual(request.decisions[-1].action, "log")

    def test_noBodyCheck(self):
        """
        No body check for a request without a body, or when the WAF reads
        no body.
        """
        gatekeeper = self.gatekeeper(waf=WAFConfig("block", body_limit=100))
        for method, headers in [
            (b"GET", []),
            (b"POST", [(b"content-length", b"0")]),
        ]:
            request = passage(method=method, headers=headers)
            gatekeeper.handle(request)
            self.assertIsNone(request.bodyCheck)
        request = passage(method=b"POST")
        gatekeeper.handle(request)
        self.assertIsNotNone(request.bodyCheck)
        gatekeeper = self.gatekeeper(waf=WAFConfig("block", body_limit=0))
        request = passage(method=b"POST", headers=[(b"content-length", b"10")])
        gatekeeper.handle(request)
        self.assertIsNone(request.bodyCheck)

    def test_bodyLimit(self):
        """
        A route's C{client_max_body_size} is the passage's body limit; when
        one is larger than the gatekeeper's (which the front end then does
        not hold requests to), the other routes get the gatekeeper's.
        """
        routes = [
            routeConfig("upload", "/upload", client_max_body_size=100 * 1024 * 1024),
            routeConfig("rest", "/"),
        ]
        gatekeeper = self.gatekeeper(routes)
        request = passage(target=b"/upload/x")
        self.assertIsNone(gatekeeper.handle(request))
        self.assertEqual(request.bodyLimit, 100 * 1024 * 1024)
        request = passage(target=b"/x")
        self.assertIsNone(gatekeeper.handle(request))
        self.assertEqual(request.bodyLimit, 1024 * 1024)
        gatekeeper = self.gatekeeper(
            [routeConfig("small", "/small", client_max_body_size=10), routeConfig("rest", "/")]
        )
        request = passage(target=b"/x")
        self.assertIsNone(gatekeeper.handle(request))
        self.assertIsNone(request.bodyLimit)


# End to end.


def config(gatekeeper: str = "", routes: str = "", main: str = "") -> str:
    return (
        "[manualb]\nlisten = tcp:0\naccess_log = off\n" + main
        + "[gatekeeper]\n" + gatekeeper
        + "[upstream u]\nservers = 10.0.0.1:8001\n"
        + (routes or "[route default]\npath = /\nupstream = u\n")
    )


class EndToEndTests(SynchronousTestCase):
    """
    The gatekeeper in a running balancer: refused clients never reach a
    backend.
    """

    def balancer(self, text: str, waf=None, limiter=None) -> MemoryBalancer:
        self.patch(service, "gatekeeperEngines", lambda config, reactor: (waf, limiter))
        return MemoryBalancer(parseConfig(text))

    def request(self, lb, host="127.0.0.1", request=GET, listener=None):
        client = lb.client(host=host, listener=listener)
        with capturedLogs() as events:
            client.send(request)
            lb.flush()
        self.events = events
        return client

    def test_denied(self):
        lb = self.balancer(config("deny = 192.0.2.0/24\n"))
        client = self.request(lb, "192.0.2.66")
        received = client.received()
        line, headers = headOf(received)
        self.assertEqual(line, b"HTTP/1.1 403 Forbidden")
        [requestId] = headers[b"x-request-id"]
        self.assertIn(requestId, received.split(b"\r\n\r\n", 1)[1])
        self.assertEqual(lb.pendingConnections(), [])
        self.assertEqual(
            [event["requestId"] for event in self.events if "requestId" in event],
            [requestId.decode("ascii")],
        )
        # Another client goes on.
        self.request(lb, "198.51.100.1")
        self.assertEqual(len(lb.pendingConnections()), 1)

    def test_deniedUnrouted(self):
        """
        A denied client gets 403 on a path no route serves; another gets
        404.
        """
        lb = self.balancer(
            config(
                "deny = 192.0.2.0/24\n",
                "[route app]\npath = /app\nupstream = u\nallow = 10.0.0.0/8\n",
            )
        )
        request = b"GET /other HTTP/1.1\r\nHost: a\r\n\r\n"
        client = self.request(lb, "192.0.2.66", request)
        self.assertEqual(headOf(client.received())[0], b"HTTP/1.1 403 Forbidden")
        client = self.request(lb, "198.51.100.1", request)
        self.assertEqual(headOf(client.received())[0], b"HTTP/1.1 404 Not Found")
        client = self.request(lb, "198.51.100.1", b"GET /app HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(headOf(client.received())[0], b"HTTP/1.1 403 Forbidden")
        self.assertEqual(lb.pendingConnections(), [])
        self.request(lb, "10.1.1.1", b"GET /app HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(lb.pendingConnections()), 1)

    def test_redirectListener(self):
        """
        A denied client does not even get the redirect to https.
        """
        lb = self.balancer(config("deny = 192.0.2.0/24\n", main="redirect_https = on\n"))
        client = self.request(lb, "192.0.2.66")
        self.assertEqual(headOf(client.received())[0], b"HTTP/1.1 403 Forbidden")
        client = self.request(lb, "198.51.100.1")
        self.assertEqual(headOf(client.received())[0], b"HTTP/1.1 301 Moved Permanently")

    def test_spoofing(self):
        """
        A client that is not a trusted proxy keeps its own address, for the
        IP rules, the access log and the X-Forwarded-For sent on.
        """
        lb = self.balancer(
            config("deny = 192.0.2.0/24\ntrusted_proxies = 127.0.0.0/8\n")
        )
        spoof = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1\r\n\r\n"
        client = self.request(lb, "192.0.2.66", spoof)
        self.assertEqual(headOf(client.received())[0], b"HTTP/1.1 403 Forbidden")
        self.assertEqual(lb.pendingConnections(), [])
        self.assertIn(b"192.0.2.66", lb.accessLog.getvalue())

    def test_trustedProxy(self):
        """
        Behind a trusted proxy, the client of its X-Forwarded-For is the
        one the rules, the access log and the backend see.
        """
        lb = self.balancer(
            config("deny = 192.0.2.0/24\ntrusted_proxies = 127.0.0.0/8\n")
        )
        forwarded = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: %s\r\n\r\n"
        client = self.request(lb, "127.0.0.1", forwarded % (b"192.0.2.66",))
        self.assertEqual(headOf(client.received())[0], b"HTTP/1.1 403 Forbidden")
        self.assertEqual(lb.pendingConnections(), [])
        self.assertIn(b"192.0.2.66 - - ", lb.accessLog.getvalue())
        client = self.request(lb, "127.0.0.1", forwarded % (b"198.51.100.7",))
        backend = lb.acceptConnection()
        lb.flush()
        sent = backend.received()
        self.assertIn(b"X-Forwarded-For: 198.51.100.7, 198.51.100.7\r\n", sent)
        backend.send(OK)
        self.assertTrue(client.received().endswith(b"hello"))
        self.assertIn(b"198.51.100.7 - - ", lb.accessLog.getvalue())

    def test_rateLimited(self):
        limiter = FakeLimiter(
            RateDecision("k", True), RateDecision("k", False, 0, 1.5)
        )
        lb = self.balancer(config("rate = 1r/s\n"), limiter=lambda rate, route: limiter)
        self.request(lb)
        self.assertEqual(len(lb.pendingConnections()), 1)
        client = self.request(lb)
        line, headers = headOf(client.received())
        self.assertEqual(line, b"HTTP/1.1 429 Too Many Requests")
        self.assertEqual(headers[b"retry-after"], [b"2"])
        self.assertEqual(len(headers[b"x-request-id"]), 1)
        self.assertEqual(len(lb.pendingConnections()), 1)
        self.assertEqual(limiter.checks, [("127.0.0.1", "default")] * 2)

    def test_wafBlocks(self):
        lb = self.balancer(config("waf = block\n"), waf=lambda config: FakeWAF(config))
        client = self.request(lb, request=b"GET /?q=attack HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(headOf(client.received())[0], b"HTTP/1.1 403 Forbidden")
        self.assertEqual(lb.pendingConnections(), [])

    def test_http2(self):
        """
        An HTTP/2 stream's client is read behind a trusted proxy too.
        """
        from .test_http2 import REQUEST, MemoryClient

        lb = self.balancer(config("deny = 192.0.2.0/24\ntrusted_proxies = 192.168.1.1\n"))
        h2client = MemoryClient(lb.balancer.config.gatekeeper)
        h2client.server.site = lb.balancer.site
        with capturedLogs():
            stream = h2client.request(REQUEST + [(b"x-forwarded-for", b"192.0.2.9")])
        self.assertEqual(h2client.status(stream), 403)
        stream = h2client.request(REQUEST + [(b"x-forwarded-for", b"198.51.100.9")])
        self.assertIsNone(h2client.status(stream))
        self.assertEqual(len(lb.pendingConnections()), 1)


class RealEnginesTests(SynchronousTestCase):
    """
    The gatekeeper with the real WAF and rate limiter, as the service builds
    them from the configuration.
    """

    def balancer(self, text: str) -> MemoryBalancer:
        return MemoryBalancer(parseConfig(text))

    def send(self, lb, request, host="127.0.0.1"):
        client = lb.client(host=host)
        with capturedLogs() as events:
            client.send(request)
            lb.flush()
        self.events = events
        return client

    def test_wafBlocksQuery(self):
        """
        An SQL injection in the query gets 403 with its request id, logged
        with the rule that fired, and no backend is asked; an ordinary
        search with SQL words goes on.
        """
        lb = self.balancer(config("waf = block\n"))
        attack = b"GET /search?id=1%27%20OR%20%271%27=%271 HTTP/1.1\r\nHost: a\r\n\r\n"
        client = self.send(lb, attack)
        received = client.received()
        line, headers = headOf(received)
        self.assertEqual(line, b"HTTP/1.1 403 Forbidden")
        [requestId] = headers[b"x-request-id"]
        self.assertIn(requestId, received)
        self.assertEqual(lb.pendingConnections(), [])
        [logged] = [event for event in self.events if event.get("requestId")]
        self.assertEqual(logged["requestId"], requestId.decode("ascii"))
        self.assertIn("sqli", str(logged))
        ordinary = b"GET /search?q=select%20a%20union%20rep HTTP/1.1\r\nHost: a\r\n\r\n"
        self.send(lb, ordinary)
        self.assertEqual(len(lb.pendingConnections()), 1)

    def test_wafBlocksBody(self):
        """
        An attack in a form body is found before any of the body goes to a
        backend; an ordinary body goes on whole.
        """
        lb = self.balancer(config("waf = block\n"))
        form = (
            b"POST /comment HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s"
        )
        attack = b"text=%3Cscript%3Ealert(1)%3C/script%3E"
        client = self.send(lb, form % (len(attack), attack))
        self.assertEqual(headOf(client.received())[0], b"HTTP/1.1 403 Forbidden")
        self.assertEqual(lb.pendingConnections(), [])
        ordinary = b"text=I+selected+O%27Brien%27s+union+card"
        self.send(lb, form % (len(ordinary), ordinary))
        backend = lb.acceptConnection()
        lb.flush()
        self.assertTrue(backend.received().endswith(b"\r\n\r\n" + ordinary))

    def test_wafDetectAndRouteOff(self):
        """
        In detect mode an attack is logged and goes on; a route can turn
        the WAF off.
        """
        attack = b"GET %s?f=..%%2F..%%2Fetc%%2Fpasswd HTTP/1.1\r\nHost: a\r\n\r\n"
        lb = self.balancer(config("waf = detect\n"))
        self.send(lb, attack % (b"/",))
        self.assertEqual(len(lb.pendingConnections()), 1)
        lb = self.balancer(
            config(
                "waf = block\n",
                "[route files]\npath = /files/\nupstream = u\nwaf = off\n"
                "[route default]\npath = /\nupstream = u\n",
            )
        )
        client = self.send(lb, attack % (b"/",))
        self.assertEqual(headOf(client.received())[0], b"HTTP/1.1 403 Forbidden")
        self.send(lb, attack % (b"/files/x",))
        self.assertEqual(len(lb.pendingConnections()), 1)

    def test_rateLimit(self):
        """
        Beyond the rate and its burst a client gets 429 with Retry-After;
        once the bucket drains it goes on again; another client has its own
        bucket.
        """
        lb = self.balancer(config("rate = 1r/s burst=1 nodelay\n"))
        for _ in range(2):
            self.send(lb, GET)
        self.assertEqual(len(lb.pendingConnections()), 2)
        client = self.send(lb, GET)
        line, headers = headOf(client.received())
        self.assertEqual(line, b"HTTP/1.1 429 Too Many Requests")
        self.assertEqual(headers[b"retry-after"], [b"1"])
        self.assertEqual(len(lb.pendingConnections()), 2)
        self.send(lb, GET, host="198.51.100.1")
        self.assertEqual(len(lb.pendingConnections()), 3)
        lb.reactor.advance(1)
        self.send(lb, GET)
        self.assertEqual(len(lb.pendingConnections()), 4)


# The configuration file.


class ConfigTests(SynchronousTestCase):
    """
    The gatekeeper's keys of C{[gatekeeper]} and C{[route NAME]}.
    """

    def parse(self, gatekeeper: str = "", route: str = ""):
        return parseConfig(
            config(gatekeeper, "[route r]\npath = /\nupstream = u\n" + route), "lb.ini"
        )

    def assertError(self, gatekeeper: str, route: str, message: str) -> None:
        error = self.assertRaises(ConfigError, self.parse, gatekeeper, route)
        self.assertEqual(str(error), message)

    def test_defaults(self):
        parsed = self.parse()
        self.assertEqual(parsed.gatekeeper, GatekeeperConfig())
        route = parsed.routes[0]
        self.assertEqual(
            (route.allow, route.deny, route.waf, route.waf_level, route.rate, route.client_max_body_size),
            (None,) * 6,
        )

    def test_networks(self):
        gatekeeper = self.parse(
            "allow = 10.0.0.0/8, 2001:db8::/32\n    192.0.2.1 fd00::1\n"
            "deny = 10.1.0.0/16\ntrusted_proxies = 127.0.0.1\n"
        ).gatekeeper
        self.assertEqual(
            gatekeeper.allow, ("10.0.0.0/8", "2001:db8::/32", "192.0.2.1/32", "fd00::1/128")
        )
        self.assertEqual(gatekeeper.deny, ("10.1.0.0/16",))
        self.assertEqual(gatekeeper.trusted_proxies, ("127.0.0.1/32",))
        self.assertEqual(parseNetworks(["all"]), ("0.0.0.0/0", "::/0"))
        self.assertEqual(parseNetworks(["None"]), ())

    def test_badNetworks(self):
        for key in ("allow", "deny", "trusted_proxies"):
            self.assertError(
                f"{key} = 10.0.0.0/8 10.0.0.300/8\n",
                "",
                f"lb.ini: [gatekeeper] {key}: bad network '10.0.0.300/8' (expected an "
                "address or a CIDR such as 192.0.2.0/24 or 2001:db8::/32, or all)",
            )
        self.assertError(
            "deny = 10.0.0.1/8\n",
            "",
            "lb.ini: [gatekeeper] deny: bad network '10.0.0.1/8': bits set beyond "
            "the prefix (did you mean 10.0.0.0/8?)",
        )
        self.assertError(
            "",
            "allow = 2001:db8::/129\n",
            "lb.ini: [route r] allow: bad network '2001:db8::/129' (expected an "
            "address or a CIDR such as 192.0.2.0/24 or 2001:db8::/32, or all)",
        )
        self.assertError(
            "allow =\n", "", "lb.ini: [gatekeeper] allow: empty value (write none for no network)"
        )
        self.assertError(
            "allow = none 10.0.0.0/8\n",
            "",
            "lb.ini: [gatekeeper] allow: none stands alone, for no network at all",
        )

    def test_waf(self):
        gatekeeper = self.parse(
            "waf = Block\nwaf_level = 3\nwaf_body_limit = 16k\nwaf_rule =\n"
            "    scanners header:User-Agent in sqlmap, nikto block\n"
            "    admin path ~ ^/admin/ (x|y) log\n"
            "    uploads path ~ ^/upload/ allow sqli,xss\n"
            "    health path ~ ^/health$ allow\n"
        ).gatekeeper
        self.assertEqual(
            gatekeeper.waf,
            WAFConfig(
                "block",
                3,
                16 * 1024,
                (
                    WAFRule("scanners", "header:User-Agent", None, ("sqlmap", "nikto"), "block"),
                    WAFRule("admin", "path", "^/admin/ (x|y)", (), "log"),
                    WAFRule("uploads", "path", "^/upload/", (), "allow", ("sqli", "xss")),
                    WAFRule("health", "path", "^/health$", (), "allow"),
                ),
            ),
        )
        self.assertEqual(self.parse("waf_body_limit = 0\n").gatekeeper.waf.body_limit, 0)

    def test_badWAF(self):
        """
        A bad WAF key is a configuration error naming it, with the message
        of the WAF's own reader (L{manualb.waf}).
        """

        def message(parse, text):
            try:
                parse(text)
            except ValueError as e:
                return str(e)
            self.fail(f"{text!r} was read")

        self.assertError(
            "waf = on\n", "", "lb.ini: [gatekeeper] waf: " + message(parseMode, "on")
        )
        self.assertError("", "waf = yes\n", "lb.ini: [route r] waf: " + message(parseMode, "yes"))
        self.assertError(
            "waf_level = 5\n", "", "lb.ini: [gatekeeper] waf_level: " + message(parseLevel, "5")
        )
        self.assertError(
            "", "waf_level = 0\n", "lb.ini: [route r] waf_level: " + message(parseLevel, "0")
        )
        self.assertError(
            "waf_body_limit = lots\n",
            "",
            "lb.ini: [gatekeeper] waf_body_limit: bad size 'lots': expected a whole "
            "number of bytes with an optional unit (k, m, g), like 512, 64k, 1m",
        )
        for rule in [
            "a path",
            "a path ~ x",
            "a path ~ ( block",
            "a body = x block",
            "a nowhere ~ x block",
            "a header: ~ x block",
        ]:
            self.assertError(
                f"waf_rule = {rule}\n",
                "",
                "lb.ini: [gatekeeper] waf_rule: " + message(parseRule, rule),
            )
        self.assertError(
            "waf_rule =\n    a path ~ x block\n    a path ~ y block\n",
            "",
            "lb.ini: [gatekeeper] waf_rule: rule 'a' given twice",
        )

    def test_rate(self):
        gatekeeper = self.parse("rate = 10r/s burst=20 nodelay\n").gatekeeper
        self.assertEqual(gatekeeper.rate, RateLimitConfig(10.0, 20, True, "$remote_addr"))
        gatekeeper = self.parse("rate = 600r/m\nrate_key = $http_x_api_key\n").gatekeeper
        self.assertEqual(gatekeeper.rate, RateLimitConfig(10.0, 0, False, "$http_x_api_key"))
        self.assertIsNone(self.parse("rate = off\n").gatekeeper.rate)
        self.assertEqual(
            self.parse("rate = 1r/s\nrate_key = $route\n").gatekeeper.rate.key, "$route"
        )
        self.assertEqual(parseRate("0.5r/s").rate, 0.5)

    def test_routeRate(self):
        """
        A route's rate keeps the gatekeeper's key unless it gives its own;
        C{off} is a rate of 0.
        """
        route = self.parse("rate = 1r/s\nrate_key = $cookie_id\n", "rate = 5r/m burst=2\n").routes[0]
        self.assertEqual(route.rate, RateLimitConfig(5 / 60, 2, False, "$cookie_id"))
        route = self.parse("", "rate = 5r/s\nrate_key = $host$uri\n").routes[0]
        self.assertEqual(route.rate, RateLimitConfig(5.0, 0, False, "$host$uri"))
        route = self.parse("rate = 1r/s\n", "rate = off\n").routes[0]
        self.assertEqual(route.rate, RateLimitConfig(0.0))

    def test_badRate(self):
        syntax = "write 10r/s or 600r/m, optionally followed by burst=N and nodelay, or off"
        for text, message in [
            ("10r/h", f"rate '10r/h' is not valid; {syntax}"),
            ("10", f"rate '10' is not valid; {syntax}"),
            ("0r/s", "rate '0r/s' is not above 0 (write off for no limit)"),
            ("1r/s burst=-1", f"'burst=-1' in rate '1r/s burst=-1' is not valid; {syntax}"),
            ("1r/s burst=x", f"'burst=x' in rate '1r/s burst=x' is not valid; {syntax}"),
            ("1r/s burst", f"'burst' in rate '1r/s burst' is not valid; {syntax}"),
            ("1r/s delay=3", f"'delay=3' in rate '1r/s delay=3' is not valid; {syntax}"),
            ("1r/s nodelay nodelay", "nodelay is given twice in rate '1r/s nodelay nodelay'"),
        ]:
            self.assertError(f"rate = {text}\n", "", f"lb.ini: [gatekeeper] rate: {message}")
        self.assertError(
            "rate = 1r/s\nrate_key = $nothing\n",
            "",
            "lb.ini: [gatekeeper] rate_key: unknown variable $nothing in key "
            "(known: $request_uri, $uri, $args, $query_string, $host, $remote_addr, "
            "$route, $http_NAME, $cookie_NAME, $arg_NAME)",
        )
        self.assertError(
            "rate_key = $host\n", "", "lb.ini: [gatekeeper] rate_key: has no use without rate here"
        )
        self.assertError(
            "", "rate = off\nrate_key = $host\n",
            "lb.ini: [route r] rate_key: has no use with rate = off",
        )

    def test_limitConn(self):
        self.assertEqual(self.parse("limit_conn = 20\n").gatekeeper.limit_conn, 20)
        self.assertError(
            "limit_conn = -1\n", "", "lb.ini: [gatekeeper] limit_conn: must be at least 0, got -1"
        )

    def test_routeKeys(self):
        route = self.parse(
            "",
            "allow = 10.0.0.0/8\ndeny = none\nwaf = detect\nwaf_level = 1\n"
            "client_max_body_size = 10m\n",
        ).routes[0]
        self.assertEqual(
            (route.allow, route.deny, route.waf, route.waf_level, route.client_max_body_size),
            (("10.0.0.0/8",), (), "detect", 1, 10 * 1024 * 1024),
        )
        self.assertError(
            "",
            "client_max_body_size = big\n",
            "lb.ini: [route r] client_max_body_size: bad size 'big': expected a whole "
            "number of bytes with an optional unit (k, m, g), like 512, 64k, 1m",
        )

    def test_ruleParser(self):
        """
        The WAF's rule reader (L{parseRule}) reads a regex with spaces, tabs
        between words, and values with spaces around commas.
        """
        self.assertEqual(
            parseRule("n\tcookie:sid\tin a , b\tlog"),
            WAFRule("n", "cookie:sid", None, ("a", "b"), "log"),
        )
        self.assertEqual(
            parseRule("n query ~ a  b allow"), WAFRule("n", "query", "a  b", (), "allow")
        )


class RouteBodyLimitTests(SynchronousTestCase):
    """
    A route's C{client_max_body_size} may be larger or smaller than the
    gatekeeper's; every other route keeps the gatekeeper's.
    """

    def post(self, lb, path: bytes, size: int):
        client = lb.client()
        client.send(
            b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
            % (path, size, b"x" * size)
        )
        lb.flush()
        return client

    def test_raisedAndLowered(self):
        lb = MemoryBalancer(
            parseConfig(
                config(
                    "client_max_body_size = 10\n",
                    "[route upload]\npath = /upload\nupstream = u\nclient_max_body_size = 100\n"
                    "[route small]\npath = /small\nupstream = u\nclient_max_body_size = 5\n"
                    "[route default]\npath = /\nupstream = u\n",
                )
            )
        )
        self.post(lb, b"/upload", 50)
        self.assertEqual(len(lb.pendingConnections()), 1)
        client = self.post(lb, b"/upload", 101)
        self.assertEqual(headOf(client.received())[0], b"HTTP/1.1 413 Content Too Large")
        client = self.post(lb, b"/other", 50)
        self.assertEqual(headOf(client.received())[0], b"HTTP/1.1 413 Content Too Large")
        client = self.post(lb, b"/small", 8)
        self.assertEqual(headOf(client.received())[0], b"HTTP/1.1 413 Content Too Large")
        self.post(lb, b"/other", 10)
        self.assertEqual(len(lb.pendingConnections()), 2)
