"""
L{manualb.testing.MemoryBalancer} driven through its public interfaces: an
L{IAgent} for the clients, resources for the backends, one clock.
"""

from __future__ import annotations

import time

import attrs
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from manualb.configfile import parseConfig
from manualb.testing import MemoryBalancer, NamedBackend, balancerConfig, responseBody


class _Silent(Resource):
    """
    A backend that never answers.
    """

    isLeaf = True

    def render(self, request):
        return NOT_DONE_YET


class MemoryBalancerTests(SynchronousTestCase):
    def setUp(self):
        self.lb = MemoryBalancer(
            balancerConfig(["10.0.0.1:8001", "10.0.0.2:8001"])
        )
        self.one = self.lb.addBackend("10.0.0.1:8001", NamedBackend("one"))
        self.two = self.lb.addBackend("10.0.0.2:8001", NamedBackend("two"))

    def get(self, agent, url=b"http://example.com/"):
        response = self.successResultOf(agent.request(b"GET", url))
        return response, self.successResultOf(responseBody(response))

    def test_agent(self):
        """
        The agent is an L{IAgent}; requests go round robin to the resources
        added as backends, answered at once.
        """
        agent = self.lb.agent()
        self.assertTrue(IAgent.providedBy(agent))
        bodies = [self.get(agent)[1] for _ in range(3)]
        self.assertEqual(bodies, [b"one\n", b"two\n", b"one\n"])
        self.assertEqual(self.one.site.resource.requests[0][1], b"/")

    def test_keepAliveVisible(self):
        """
        The balancer keeps its connections to the backends alive: the
        backends count the connections made, not the requests.
        """
        agent = self.lb.agent()
        for _ in range(4):
            self.get(agent)
        self.assertEqual((self.one.connectionsMade, self.two.connectionsMade), (1, 1))
        self.assertEqual((self.one.openConnections, self.two.openConnections), (1, 1))
        self.assertEqual(self.lb.balancer.connections.open, 1)

    def test_oneClock(self):
        """
        The responses' Date and the access log both read the balancer's
        clock.
        """
        self.lb.advance(1_800_000_000)
        response, body = self.get(self.lb.agent(clientHost="10.9.8.7"))
        self.assertEqual(
            response.headers.getRawHeaders(b"date"), [datetimeToString(1_800_000_000)]
        )
        line = self.lb.accessLog.getvalue()
        stamp = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(1_800_000_000))
        self.assertTrue(line.startswith(b"10.9.8.7 - - " + stamp.encode("ascii")), line)
        self.assertIn(b'"GET / HTTP/1.1" 200 4 "-" "-" 10.0.0.1:8001 0.000', line)

    def test_timeoutsOnTheClock(self):
        """
        A backend that never answers gets a 504 once the clock passes
        read_timeout.
        """
        lb = MemoryBalancer(balancerConfig(["10.0.0.3:8001"], read_timeout="5s"))
        lb.addBackend("10.0.0.3:8001", _Silent())
        d = lb.agent().request(b"GET", b"http://example.com/")
        self.assertNoResult(d)
        lb.advance(4.9)
        self.assertNoResult(d)
        lb.advance(0.1)
        self.assertEqual(self.successResultOf(d).code, 504)

    def test_closeFires(self):
        """
        close() fires once the in-memory connections are closed too.
        """
        self.get(self.lb.agent())
        self.assertIsNone(self.successResultOf(self.lb.close()))
        self.assertEqual(self.one.openConnections, 0)
        self.assertEqual(self.lb.balancer.connections.open, 0)

    def test_rawBytesStillWork(self):
        """
        The raw bytes API is there too: a client, and a pending connection
        to an address without a backend, accepted by hand.
        """
        lb = MemoryBalancer(balancerConfig(["10.0.0.4:8001"]))
        client = lb.client()
        client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(lb.pendingConnections(), [("10.0.0.4", 8001)])
        backend = lb.acceptConnection()
        self.assertTrue(backend.received().startswith(b"GET / HTTP/1.1\r\n"))


LISTENERS = """
[manualb]
listen = tcp:8080
access_log = off

[listener inside]
listen = tcp:8081
routes = admin

[upstream web]
servers = 10.0.0.1:80

[upstream admin]
servers = 10.0.0.2:80

[route web]
path = /
upstream = web

[route admin]
path = /admin/
upstream = admin
"""


class ListenerTests(SynchronousTestCase):
    """
    A request through a listener reaches only that listener's routes.
    """

    def setUp(self):
        self.lb = MemoryBalancer(parseConfig(LISTENERS, "lb.ini"))
        self.lb.addBackend("10.0.0.1:80", NamedBackend("web"))
        self.lb.addBackend("10.0.0.2:80", NamedBackend("admin"))

    def status(self, agent, path):
        response = self.successResultOf(
            agent.request(b"GET", b"http://example.com" + path, Headers())
        )
        return response.code, self.successResultOf(responseBody(response))

    def test_eachListenerItsRoutes(self):
        inside = self.lb.agent("inside")
        self.assertEqual(self.status(inside, b"/admin/x"), (200, b"admin\n"))
        self.assertEqual(self.status(inside, b"/x")[0], 404)
        default = self.lb.agent()
        self.assertEqual(self.status(default, b"/admin/x"), (200, b"admin\n"))
        self.assertEqual(self.status(default, b"/x"), (200, b"web\n"))

    def test_noListeners(self):
        """
        A configuration without listeners (an embedder's) is served over
        every route.
        """
        config = attrs.evolve(parseConfig(LISTENERS, "lb.ini"), listeners=[])
        lb = MemoryBalancer(config)
        lb.addBackend("10.0.0.2:80", NamedBackend("admin"))
        self.assertEqual(self.status(lb.agent(), b"/admin/x"), (200, b"admin\n"))
