"""
The demo's experiments, run for real (backend processes, manualb on free
ports, requests over loopback) without its interactive part: each does what
the demo prints.  The shopping carts' experiment runs against the demo's own
redis-server (skipped when redis-server is not installed; C{scripts/redis}
installs it).
"""

import os

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from manualb.cartdemo import shoppingCarts
from manualb.demo import NAME_A, NAME_B, Demo, runExperiments

from .redisserver import requireRedis


class ExperimentsTests(TestCase):
    """
    One run of every experiment (about 4 seconds: two backend processes
    started, one killed and started again), checked piece by piece; the
    one that needs a redis-server is given none, and says it is skipped
    (L{CartExperimentTests} runs it).
    """

    timeout = 60

    @inlineCallbacks
    def test_experiments(self):
        """
        Every experiment shows what the demo says it shows.
        """
        lines: list[str] = []
        demo = Demo(reactor, redisServer=None)
        self.addCleanup(demo.stop)
        results = yield runExperiments(demo, 0, lines.append)
        self.checkRoundRobin(results, lines)
        self.checkKill(results.kill, lines)
        self.checkIPHash(results.ipHash)
        self.checkCookie(results.cookie)
        self.checkCanary(results.canary)
        self.checkNoRedis(results, lines)

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

    def checkNoRedis(self, results, lines):
        """
        Without redis-server the demo says, at the start and in place of
        the experiment, that the carts' experiment is skipped, and why.
        """
        reason = (
            "redis-server is not installed (scripts/redis installs it from the OS "
            "packages; ./scripts/demo runs it, as root or with sudo)"
        )
        self.assertIsNone(results.carts)
        self.assertIn("redis-server: none, so experiment 5 is skipped: " + reason, lines)
        index = lines.index(
            "5. Sticky sessions are a patch; external state (Redis) is the solution"
        )
        self.assertEqual(lines[index + 1], "   Skipped:  " + reason + ".")


class CartExperimentTests(TestCase):
    """
    The article's last lesson: both backends keep a shopping cart, in
    memory and then in the demo's Redis, behind round robin; Backend A is
    killed mid-session (about 3 seconds: four backend processes).
    """

    timeout = 60

    @inlineCallbacks
    def test_carts(self):
        """
        With carts in memory the client's cart is split between the
        backends from its second request on, and A's part is lost with A;
        with carts in Redis every answer shows the whole cart, before and
        after the kill.  Stopping the demo stops its redis-server and
        removes its directory.
        """
        requireRedis()
        lines: list[str] = []
        demo = Demo(reactor)
        self.addCleanup(demo.stop)
        redis = yield demo.startRedis()
        self.assertIsNotNone(redis, demo.redisProblem)
        self.assertTrue(os.path.isdir(redis.directory))
        result = yield shoppingCarts(demo, lines.append)

        A, B = NAME_A, NAME_B
        memory, stored = result.memory, result.redis
        self.assertEqual(memory.store, "memory")
        self.assertEqual(stored.store, redis.url)
        for run in (memory, stored):
            self.assertRegex(run.cookie, r"^cart=[0-9a-f]{32}; Path=/; HttpOnly$")
            steps = run.beforeKill + run.afterKill
            self.assertEqual([step.problem for step in steps], [None] * 6)
            self.assertEqual([step.backend for step in steps], [A, B, A, B, B, B])
            self.assertEqual(run.added, ["apple", "bread", "milk", "eggs"])
        self.assertEqual(
            [step.cart for step in memory.beforeKill + memory.afterKill],
            [
                ["apple"],
                ["bread"],
                ["apple"],
                ["bread", "milk"],
                ["bread", "milk"],
                ["bread", "milk", "eggs"],
            ],
        )
        self.assertTrue(memory.split)
        self.assertEqual(
            [step.cart for step in stored.beforeKill + stored.afterKill],
            [
                ["apple"],
                ["apple", "bread"],
                ["apple", "bread"],
                ["apple", "bread", "milk"],
                ["apple", "bread", "milk"],
                ["apple", "bread", "milk", "eggs"],
            ],
        )
        self.assertFalse(stored.split)

        self.assertIn("             Backend A killed (SIGKILL)", lines)
        self.assertIn(
            "             add eggs   -> B: bread, milk, eggs   B: apple, bread, milk, eggs",
            lines,
        )
        conclusion = " ".join(line[13:] for line in lines[lines.index(
            [line for line in lines if line.startswith("   So:")][0]):])
        self.assertEqual(
            conclusion,
            "with Redis, 4 of 4 items kept through the kill; in memory, the cart "
            "split before the kill, and 3 of 4 items kept (lost: apple).",
        )

        directory = redis.directory
        yield demo.stop()
        self.assertIsNone(redis.transport)
        self.assertFalse(os.path.exists(directory))

    @inlineCallbacks
    def test_redisDoesNotStart(self):
        """
        A redis-server that does not start leaves the demo without Redis:
        the experiment says it is skipped, and why.
        """
        lines: list[str] = []
        demo = Demo(reactor, redisServer="/bin/false")
        self.addCleanup(demo.stop)
        self.assertIsNone((yield demo.startRedis()))
        self.assertIsNone((yield shoppingCarts(demo, lines.append)))
        self.assertEqual(
            lines,
            [
                "5. Sticky sessions are a patch; external state (Redis) is the solution",
                "   Skipped:  redis-server (/bin/false) did not start: exit status 1.",
            ],
        )
