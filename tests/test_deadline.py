"""
L{manualb.transports.Deadline}: a timeout that moves on every request asks
the reactor for a call once a period, and still expires on time.
"""

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from manualb.testing import MemoryBalancer, NamedBackend, balancerConfig, responseBody
from manualb.transports import Deadline


class DeadlineTests(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        self.expired = []
        self.deadline = Deadline(self.clock, lambda: self.expired.append(self.clock.seconds()))

    def test_expires(self):
        """
        A deadline set and left alone expires after its time, once.
        """
        self.deadline.set(10)
        self.clock.advance(9.9)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.1)
        self.assertEqual(self.expired, [10])
        self.assertFalse(self.deadline.pending)
        self.clock.advance(100)
        self.assertEqual(self.expired, [10])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_movedLaterWithoutNewCalls(self):
        """
        Set and cleared again and again (a request each time), the deadline
        keeps one reactor call, and expires the full period after it was
        last set.
        """
        for _ in range(100):
            self.deadline.set(10)
            self.clock.advance(0.5)
            self.deadline.clear()
        self.deadline.set(10)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        lastSet = self.clock.seconds()
        self.clock.advance(9.5)
        self.assertEqual(self.expired, [])
        self.clock.advance(0.5)
        self.assertEqual(self.expired, [lastSet + 10])

    def test_cleared(self):
        """
        A cleared deadline does not expire; its reactor call comes and does
        nothing.
        """
        self.deadline.set(10)
        self.deadline.clear()
        self.clock.advance(20)
        self.assertEqual(self.expired, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_movedSooner(self):
        """
        A deadline set sooner than its pending call expires at the sooner
        time.
        """
        self.deadline.set(60)
        self.deadline.set(5)
        self.clock.advance(5)
        self.assertEqual(self.expired, [5])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop(self):
        """
        A stopped deadline leaves no reactor call behind.
        """
        self.deadline.set(10)
        self.deadline.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(20)
        self.assertEqual(self.expired, [])


class KeptAliveTests(SynchronousTestCase):
    def test_fewReactorCalls(self):
        """
        Requests on kept-alive connections (the client's and the backend's)
        do not each ask the reactor for timeout calls: a hundred requests
        make a few, not the three or more each that timers made and
        cancelled would.  (The test's own client and backends, Twisted's,
        make theirs.)
        """
        lb = MemoryBalancer(balancerConfig(["10.0.0.1:8001"]))
        lb.addBackend("10.0.0.1:8001", NamedBackend("one"))
        agent = lb.agent()
        made = []
        callLater = lb.reactor.callLater

        def counting(*args, **kwargs):
            if getattr(args[1], "__module__", "").startswith("manualb."):
                made.append(args[1])
            return callLater(*args, **kwargs)

        self.patch(lb.reactor, "callLater", counting)
        for _ in range(100):
            response = self.successResultOf(agent.request(b"GET", b"http://example.com/"))
            self.assertEqual(self.successResultOf(responseBody(response)), b"one\n")
        self.assertLess(len(made), 10)
        self.successResultOf(lb.close())
