"""
The exchange apart from twisted.web: driven through L{IDownstream} by an
in-memory front end, its stage chain, its decision records and its states.
"""

from __future__ import annotations

from io import BytesIO
from itertools import product

from twisted.internet.address import IPv6Address
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from manualb.bodies import FileBody
from manualb.config import EXACT, PREFIX, PREFIX_NO_REGEX, REGEX
from manualb.configfile import parseConfig
from manualb.exchange import Exchange, State
from manualb.interfaces import IDownstream, IStage
from manualb.rules import SERVER_NAME
from manualb.stages import (
    Refusal,
    RefusedMethods,
    RequestId,
    ServerOptions,
    StandardChecks,
    StrictTransport,
    ValidPath,
    defaultStages,
    requestView,
)
from manualb.testing import MemoryBalancer, MemoryPeer, balancerConfig
from manualb.urlmap import RouteDecision, URLMap
from manualb.view import Answer, Passage, RequestView
from manualb.web import ProxyResource

from .test_proxy import GET, OK, headOf
from .test_urlmap import route


@implementer(IDownstream)
class MemoryDownstream:
    """
    A front end of the test's own, with no twisted.web under it: it records
    what the exchange does to the client.
    """

    version = b"HTTP/1.1"
    refusal = None
    hsts = None

    def __init__(self, target=b"/path", method=b"GET", headers=(), secure=False):
        self.view = requestView(
            "192.0.2.5", secure, method, target, [(b"Host", b"example.com"), *headers]
        )
        self.body = FileBody(BytesIO())
        self.events: list = []
        self.gone = None

    def mayUpgrade(self):
        return False

    def whenGone(self, callback):
        self.gone = callback

    def startResponse(self, code, reason, headers):
        self.events.append(("start", code, reason, list(headers)))

    def write(self, data):
        self.events.append(("write", data))

    def finish(self):
        self.events.append(("finish",))

    def breakOff(self):
        self.events.append(("breakOff",))

    def abort(self):
        self.events.append(("abort",))

    def closeAfterResponse(self):
        self.events.append(("close",))

    def registerProducer(self, producer):
        self.events.append(("producer",))

    def unregisterProducer(self):
        self.events.append(("noProducer",))

    def takeOver(self, protocol):
        raise RuntimeError("no upgrades here")

    def logTo(self, accessLog, status, upstreams, times, sent=None, passage=None):
        self.events.append(("log", status, list(upstreams)))


ROUTES = """\
[manualb]
listen = tcp:0
access_log = off

[upstream api]
servers = 10.0.0.1:8001

[upstream web]
servers = 10.0.0.2:8002

[route api]
path = /api/
strip_prefix = on
upstream = api

[route web]
path = /
upstream = web

[route admin]
host = admin.example
path = /
upstream = api
"""


class DownstreamTests(SynchronousTestCase):
    """
    A front end other than twisted.web's drives the same exchange.
    """

    def setUp(self):
        self.lb = MemoryBalancer(parseConfig(ROUTES, "<test>"))
        self.resource = self.lb.balancer.resource

    def exchange(self, downstream):
        exchange = Exchange(downstream, self.resource.stages, self.lb.reactor, self.lb.balancer.accessLog)
        exchange.start()
        return exchange

    def test_interface(self):
        verifyObject(IDownstream, MemoryDownstream())

    def test_proxied(self):
        """
        The request goes to the route's backend and the response comes back
        through the downstream, which logs it; the exchange passes from
        state to state.
        """
        downstream = MemoryDownstream(b"/api/users?x=1")
        exchange = self.exchange(downstream)
        self.assertIs(exchange.state, State.CONNECTING)
        backend = self.lb.acceptConnection()
        self.assertIs(exchange.state, State.AWAITING)
        line, headers = headOf(backend.received())
        self.assertEqual(line, b"GET /users?x=1 HTTP/1.1")
        self.assertEqual(headers[b"x-forwarded-for"], [b"192.0.2.5"])
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        self.assertIs(exchange.state, State.STREAMING)
        backend.send(b"world")
        self.assertIs(exchange.state, State.DONE)
        start, producer, *writes, noProducer, finish, log = downstream.events
        self.assertEqual(start[:3], ("start", 200, b"OK"))
        self.assertIn((b"Server", SERVER_NAME), start[3])
        self.assertEqual(b"".join(data for _, data in writes), b"helloworld")
        self.assertEqual(finish, ("finish",))
        self.assertEqual(log, ("log", 200, ["10.0.0.1:8001"]))

    def test_decisionKept(self):
        """
        The exchange keeps the URL map's decision (the route, the rule that
        chose it, its host group and the path sent on) and the pool's (the
        server chosen among the candidates).
        """
        exchange = self.exchange(MemoryDownstream(b"/api/users"))
        decision = exchange.passage.route
        self.assertIsInstance(decision, RouteDecision)
        self.assertEqual(decision.route.name, "api")
        self.assertEqual(decision.rule, PREFIX)
        self.assertIsNone(decision.group)
        self.assertEqual(decision.path, b"/users")
        selection = exchange.passage.selection.record()
        self.assertEqual(selection.pool, "api")
        self.assertEqual(
            [attempt.selection.chosen for attempt in selection.attempts], ["10.0.0.1:8001"]
        )

    def test_answeredLocally(self):
        """
        A request a stage answers gets its page through the downstream, and
        no backend is asked.
        """
        downstream = MemoryDownstream(b"/../x")
        exchange = self.exchange(downstream)
        self.assertIs(exchange.state, State.DONE)
        self.assertEqual(self.lb.pendingConnections(), [])
        self.assertIsNone(exchange.passage.route)
        start, write, finish, log = downstream.events
        self.assertEqual(start[:3], ("start", 400, b"Bad Request"))
        self.assertIn(b"The request path is not valid.", write[1])
        self.assertEqual(log, ("log", 400, []))

    def test_clientGone(self):
        """
        A client that leaves while its request is connecting ends the
        exchange (499), and its connection attempt.
        """
        downstream = MemoryDownstream(b"/")
        exchange = self.exchange(downstream)
        downstream.gone(Failure(ConnectionError("gone")))
        self.assertIs(exchange.state, State.DONE)
        self.assertEqual(downstream.events, [("log", 499, ["10.0.0.2:8002"])])
        self.assertEqual(self.lb.pendingConnections(), [])

    def test_backendFailsMidResponse(self):
        """
        A response that breaks off mid-body is broken off to the client.
        """
        downstream = MemoryDownstream(b"/")
        exchange = self.exchange(downstream)
        backend = self.lb.acceptConnection()
        backend.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel")
        backend.reset()
        self.assertIs(exchange.state, State.DONE)
        self.assertEqual(
            [event[0] for event in downstream.events],
            ["start", "producer", "write", "noProducer", "log", "breakOff"],
        )


@implementer(IStage)
class Forbid:
    """
    A stage that refuses one client address, as a gatekeeper would.
    """

    def __init__(self, address):
        self.address = address
        self.seen = []

    def handle(self, passage: Passage):
        self.seen.append(passage.route)
        if passage.view.clientAddress == self.address:
            return Answer(403, b"Forbidden", b"Not you.", [(b"X-Why", b"test")])
        return None


class StageChainTests(SynchronousTestCase):
    """
    A stage added to the chain sees each request before the URL map, and
    may answer it.
    """

    def setUp(self):
        self.lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        resource = self.lb.balancer.resource
        self.stage = Forbid("192.0.2.66")
        resource.stages.insert(resource.stages.index(resource.urlMap), self.stage)

    def test_defaultChain(self):
        """
        The standard chain ends with the URL map; every stage provides
        L{IStage}.
        """
        urlMap = URLMap([])
        stages = defaultStages(urlMap)
        self.assertIs(stages[-1], urlMap)
        for stage in stages:
            verifyObject(IStage, stage)

    def test_standardChecks(self):
        """
        L{StandardChecks}, the first stage of the standard chain, answers
        every request as the six stages it stands for do, run in order, and
        leaves the passage as they do.
        """
        views = [
            RequestView(
                "192.0.2.1",
                secure=secure,
                method=method,
                target=target,
                path=path,
                headers=headers,
                trustedPeer=trusted,
            )
            for secure, method, target, path, headers, trusted in product(
                (False, True),
                (b"GET", b"OPTIONS", b"TRACE", b"CONNECT"),
                (b"/a", b"*", b"http://h/a"),
                (b"/a", b""),
                ([], [(b"X-Request-Id", b"given")], [(b"x-request-id", b"a b")]),
                (False, True),
            )
        ]
        for view, hsts, refusal in product(
            views, (None, b"max-age=1"), (None, (400, b"Bad Request", b"No."))
        ):
            passages = []
            answers = []
            for chain in (
                [StandardChecks(lambda: b"new")],
                [
                    RequestId(lambda: b"new"),
                    StrictTransport(),
                    Refusal(),
                    ServerOptions(),
                    RefusedMethods(),
                    ValidPath(),
                ],
            ):
                passage = Passage(view, refusal, hsts)
                answer = None
                for stage in chain:
                    answer = stage.handle(passage)
                    if answer is not None:
                        break
                passages.append((passage.requestId, passage.headers))
                answers.append(answer)
            self.assertEqual(answers[0], answers[1], (view, hsts, refusal))
            self.assertEqual(passages[0], passages[1], (view, hsts, refusal))

    def test_answers(self):
        """
        A stage's answer goes to the client, with its headers and the
        proxy's own, is logged, and no backend is asked.
        """
        client = self.lb.client(host="192.0.2.66")
        client.send(GET)
        line, headers = headOf(client.received())
        self.assertEqual(line, b"HTTP/1.1 403 Forbidden")
        self.assertEqual(headers[b"x-why"], [b"test"])
        self.assertEqual(len(headers[b"server"]), 1)
        self.assertEqual(self.lb.pendingConnections(), [])
        self.assertIn(b'"GET /path?q=1 HTTP/1.1" 403 ', self.lb.accessLog.getvalue())
        self.assertEqual(self.stage.seen, [None])

    def test_passes(self):
        """
        A stage that passes the request on leaves it to the next ones.
        """
        client = self.lb.client(host="192.0.2.1")
        client.send(GET)
        backend = self.lb.acceptConnection()
        backend.send(OK)
        self.assertTrue(client.received().endswith(b"hello"))

    def test_ownStages(self):
        """
        A L{ProxyResource} runs the chain it is given.
        """
        urlMap = URLMap([])
        resource = ProxyResource(urlMap, self.lb.reactor, stages=[self.stage])
        self.assertEqual(resource.stages, [self.stage])
        self.assertEqual(len(ProxyResource(urlMap, self.lb.reactor).stages), 2)


class RequestViewTests(SynchronousTestCase):
    """
    L{requestView}, which every front end builds its requests' views with.
    """

    def test_path(self):
        view = requestView("", False, b"GET", b"/a/./b/../c%41?q", [])
        self.assertEqual(view.path, b"/a/cA")
        self.assertEqual(view.query, b"q")

    def test_invalidPath(self):
        """
        A path that climbs above the root has none: the chain refuses it.
        """
        self.assertEqual(requestView("", False, b"GET", b"/../x", []).path, b"")
        self.assertEqual(requestView("", False, b"OPTIONS", b"*", []).path, b"")

    def test_host(self):
        """
        The host is the first C{Host}'s, normalised; an absolute-form
        target's authority wins over it.
        """
        headers = [(b"Host", b"Example.COM:8080"), (b"Host", b"other")]
        self.assertEqual(requestView("", False, b"GET", b"/", headers).host, b"example.com")
        self.assertEqual(
            requestView("", False, b"GET", b"http://u@API.example:81/x?y", headers).host,
            b"api.example",
        )
        self.assertIsNone(requestView("", False, b"GET", b"/", []).host)

    def test_absoluteFormRouted(self):
        """
        A request in absolute form is routed by the host it names, as nginx
        routes it, whatever its C{Host} says.
        """
        lb = MemoryBalancer(parseConfig(ROUTES, "<test>"))
        client = lb.client()
        client.send(b"GET http://admin.example/x HTTP/1.1\r\nHost: www.example\r\n\r\n")
        self.assertEqual(lb.pendingConnections(), [("10.0.0.1", 8001)])

    def test_mappedClientAddress(self):
        """
        A client on a dual-stack listener, whose address is IPv4-mapped IPv6,
        is forwarded as its IPv4 address.
        """
        lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        address = IPv6Address("TCP", "::ffff:192.0.2.9", 50000)
        protocol = lb.balancer.site.buildProtocol(address)
        transport = StringTransportWithDisconnection(peerAddress=address)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        MemoryPeer(protocol, transport).send(GET)
        backend = lb.acceptConnection()
        line, headers = headOf(backend.received())
        self.assertEqual(headers[b"x-forwarded-for"], [b"192.0.2.9"])


class RouteDecisionTests(SynchronousTestCase):
    """
    The URL map says which rule chose the route, and in which host group.
    """

    def test_rules(self):
        urlMap = URLMap(
            [
                route("exact", "/x", EXACT),
                route("stop", "/static/", PREFIX_NO_REGEX),
                route("php", r"\.php$", REGEX),
                route("root", "/"),
                route("host", "/", host="*.example.com"),
            ]
        )
        self.assertEqual(urlMap.match(None, b"/x").rule, EXACT)
        self.assertEqual(urlMap.match(None, b"/static/a.php").rule, PREFIX_NO_REGEX)
        self.assertEqual(urlMap.match(None, b"/a.php").rule, REGEX)
        self.assertEqual(urlMap.match(None, b"/a").rule, PREFIX)
        decision = urlMap.match(b"www.Example.com", b"/a")
        self.assertEqual(decision, RouteDecision(decision.route, b"/a", PREFIX, b"*.example.com"))
        self.assertIsNone(urlMap.match(None, b"/a").group)

    def test_stage(self):
        """
        As a stage, the map adds its decision to the passage, or answers 404.
        """
        urlMap = URLMap([route("a", "/a", host="example.com")])
        passage = Passage(requestView("", False, b"GET", b"/a/b", [(b"host", b"EXAMPLE.com.")]))
        self.assertIsNone(urlMap.handle(passage))
        self.assertEqual(passage.route.route.name, "a")
        self.assertEqual(passage.route.group, b"example.com")
        passage = Passage(requestView("", False, b"GET", b"/b", [(b"host", b"example.com")]))
        self.assertEqual(urlMap.handle(passage).code, 404)
        self.assertIsNone(passage.route)


class RequestDownstreamTests(SynchronousTestCase):
    """
    twisted.web's front end offers its requests to the exchange as an
    L{IDownstream}.
    """

    def test_interface(self):
        from twisted.web.server import Request
        from twisted.web.test.requesthelper import DummyChannel

        from manualb.web.site import _RequestDownstream

        request = Request(DummyChannel())
        request.method, request.uri, request.clientproto = b"GET", b"/a?b", b"HTTP/1.1"
        request.content = BytesIO(b"xy")
        request.requestHeaders.addRawHeader(b"Host", b"Example.com")
        downstream = _RequestDownstream(request)
        verifyObject(IDownstream, downstream)
        self.assertEqual(downstream.view.path, b"/a")
        self.assertEqual(downstream.view.host, b"example.com")
        self.assertIsNone(downstream.refusal)
        self.assertEqual(downstream.body.length, 2)
