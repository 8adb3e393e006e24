"""
The demo's experiments, run for real (backend processes, manualb on free
ports, requests over loopback) without its interactive part: each does what
the demo prints.
"""

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from manualb.demo import NAME_A, NAME_B, Demo, runExperiments


class ExperimentsTests(TestCase):
    """
    One run of every experiment (about 4 seconds: two backend processes
    started, one killed and started again), checked piece by piece.
    """

    timeout = 60

    @inlineCallbacks
    def test_experiments(self):
        """
        Every experiment shows what the demo says it shows.
        """
        lines: list[str] = []
        demo = Demo(reactor)
        self.addCleanup(demo.stop)
        results = yield runExperiments(demo, 0, lines.append)
        self.checkRoundRobin(results, lines)
        self.checkKill(results.kill, lines)
        self.checkIPHash(results.ipHash)
        self.checkCookie(results.cookie)
        self.checkCanary(results.canary)

    def checkRoundRobin(self, results, lines):
        """
        Four requests alternate between the two backends, A first.
        """
        self.assertEqual(results.roundRobin, [NAME_A, NAME_B, NAME_A, NAME_B])
        self.assertIn("   Happened: request 1 -> " + NAME_A, lines)

    def checkKill(self, kill, lines):
        """
        Killing Backend A in the middle of the burst fails no request: B
        answers what A no longer can, A being taken out by the passive
        health check.  Started again, A answers again once its
        fail_timeout (2s) has passed, and then takes its share.
        """
        self.assertEqual(kill.failed, 0)
        self.assertIn("   Happened: 0 failed requests out of 200.", lines)
        before, after = kill.beforeKill, kill.afterKill
        self.assertEqual(sum(before.values()) + sum(after.values()), kill.requests)
        self.assertGreater(before.get(NAME_A, 0), 0)
        # Only answers A wrote before it died may still come in after.
        self.assertLessEqual(after.get(NAME_A, 0), 20)
        self.assertGreater(after[NAME_B], 50)
        states = [event.state for event in kill.events]
        self.assertEqual((states[0], states[-1]), ("down", "up"))

        self.assertIsNotNone(kill.returnedAfter)
        self.assertLess(kill.returnedAfter, 2.0 + 1.0)
        self.assertEqual(kill.afterReturn, {NAME_A: 5, NAME_B: 5})

    def checkIPHash(self, picks):
        """
        With ip_hash every request from 127.0.0.1 lands on the same backend.
        """
        self.assertEqual(len(picks), 10)
        self.assertEqual(set(picks), {picks[0]})
        self.assertIn(picks[0], (NAME_A, NAME_B))

    def checkCookie(self, cookie):
        """
        With balance = cookie the first response sets a cookie; the client
        that sends it back stays on its backend, while the clients without
        one spread over both.
        """
        self.assertRegex(cookie.cookie, r"^manualb_server=[0-9a-f]{16}; Path=/; HttpOnly$")
        self.assertEqual(cookie.sticky, [cookie.first] * 5)
        self.assertEqual(set(cookie.others), {NAME_A, NAME_B})

    def checkCanary(self, canary):
        """
        weight=3 on A, weight=1 on B: exactly 75 and 25 of 100 requests,
        interleaved.
        """
        self.assertEqual(canary.counts, {NAME_A: 75, NAME_B: 25})
        self.assertEqual(canary.firstPicks, [NAME_A, NAME_A, NAME_B, NAME_A] * 2)
