"""
The lean HTTP/1.1 front end (L{manualb.front.http1}) where it does what
twisted.web's does not do the same way: pipelining, C{Expect:
100-continue}, and the choice of front end.
"""

from __future__ import annotations

import gc

import attrs
from twisted.trial.unittest import SynchronousTestCase

from manualb.front import HTTP1Connection, LeanFactory, serving, siteOf
from manualb.testing import MemoryBalancer, balancerConfig
from manualb.web import ProxySite

OK = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"


def lean(config):
    return attrs.evolve(config, front_end="lean")


class PipeliningTests(SynchronousTestCase):
    def setUp(self):
        self.lb = MemoryBalancer(lean(balancerConfig(["10.0.0.1:80"])))

    def test_answeredInOrder(self):
        """
        Requests pipelined in one write are answered one after the other,
        in order, each sent to the backend once the one before is answered.
        """
        client = self.lb.client()
        self.assertIsInstance(client.protocol, HTTP1Connection)
        client.send(
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        backend = self.lb.acceptConnection()
        self.assertTrue(backend.received().startswith(b"GET /1 "))
        backend.send(OK % (3, b"one"))
        second = backend.received()
        self.assertTrue(second.startswith(b"POST /2 "))
        self.assertTrue(second.endswith(b"\r\n\r\nabc"))
        backend.send(OK % (3, b"two"))
        self.assertTrue(backend.received().startswith(b"GET /3 "))
        backend.send(OK % (5, b"three"))
        answer = client.received()
        self.assertEqual(answer.count(b"HTTP/1.1 200 OK\r\n"), 3)
        self.assertLess(answer.index(b"one"), answer.index(b"two"))
        self.assertLess(answer.index(b"two"), answer.index(b"three"))
        self.assertTrue(client.connected)


class GarbageTests(SynchronousTestCase):
    def test_noCycleLeft(self):
        """
        An answered request and its exchange are freed as soon as they are
        done, by reference counting: none of them waits for the cycle
        collector (which would otherwise walk every request's objects).
        """
        lb = MemoryBalancer(lean(balancerConfig(["10.0.0.1:80"])))
        client = lb.client()
        backend = None
        gc.collect()
        self.addCleanup(gc.enable)
        self.addCleanup(gc.set_debug, 0)
        gc.disable()
        for _ in range(3):
            client.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            backend = backend or lb.acceptConnection()
            backend.received()
            backend.send(OK % (2, b"ok"))
            self.assertTrue(client.received().endswith(b"ok"))
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = {type(garbage).__name__ for garbage in gc.garbage}
        del gc.garbage[:]
        self.assertEqual(kinds & {"LeanRequest", "Exchange", "Passage", "RequestView"}, set())


class ExpectContinueTests(SynchronousTestCase):
    def test_continueThenResponse(self):
        """
        C{Expect: 100-continue} gets C{100 Continue} at once, then the body
        goes to the backend and the response comes back.
        """
        lb = MemoryBalancer(lean(balancerConfig(["10.0.0.1:80"])))
        client = lb.client()
        client.send(
            b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        self.assertEqual(client.received(), b"HTTP/1.1 100 Continue\r\n\r\n")
        backend = lb.acceptConnection()
        client.send(b"hello")
        self.assertTrue(backend.received().endswith(b"hello"))
        backend.send(OK % (2, b"ok"))
        self.assertTrue(client.received().endswith(b"\r\n\r\nok"))


class ChoiceTests(SynchronousTestCase):
    def test_choice(self):
        """
        C{lean} serves a site's parts through a L{LeanFactory}; C{twisted}
        serves with the L{ProxySite} itself.
        """
        lb = MemoryBalancer(balancerConfig(["10.0.0.1:80"]))
        site = lb.balancer.site
        self.assertIsInstance(serving(site, "lean"), LeanFactory)
        self.assertIs(siteOf(serving(site, "lean")), site)
        self.assertIs(serving(site, "twisted"), site)
        self.assertIsInstance(site, ProxySite)
