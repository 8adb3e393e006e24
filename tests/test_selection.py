"""
Selection's accounting: leases and attempts, their decision records, health
as named states, the connect-with-timeout helper, and the order of the
layers of these modules.
"""

from __future__ import annotations

import errno
from collections import Counter

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectBindError, ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from manualb.config import HealthCheckConfig, ServerAddress, ServerConfig, UpstreamConfig
from manualb.handoff import (
    UpstreamConnectFailed,
    UpstreamLocalError,
    UpstreamTimeout,
    connectWithTimeout,
)
from manualb.health import DOWN, TRANSITIONS, UP, HealthLog, Phase, ServerHealth
from manualb.records import Outcome, SkipReason, StopReason
from manualb.balancers import RoundRobin
from manualb.interfaces import IBalancer
from manualb.selection import LeaseState, Pool, Server
from manualb.pools import buildPool as _buildPool
from manualb.testing import MemoryBalancer, balancerConfig
from manualb.view import RequestView

A = ServerAddress("10.0.0.1", 8001)
B = ServerAddress("10.0.0.2", 8002)
C = ServerAddress("10.0.0.3", 8003)
VIEW = RequestView("192.0.2.1")


def pool(*servers: ServerConfig | ServerAddress, **options):
    """
    A pool over C{servers} (addresses, or server configurations) on a
    memory clock, with C{options} set on the upstream.
    """
    reactor = MemoryReactorClock()
    configs = [s if isinstance(s, ServerConfig) else ServerConfig(s) for s in servers or (A, B)]
    return _buildPool(UpstreamConfig("u", configs, **options), reactor), reactor


class LeaseTests(SynchronousTestCase):
    def test_countsActiveUntilReleased(self):
        """
        A lease counts its server busy until it is released; it times the
        attempt.
        """
        p, reactor = pool()
        attempts = p.select(VIEW)
        lease = attempts.next()
        self.assertEqual((lease.server.active, lease.state), (1, LeaseState.HELD))
        reactor.advance(1.5)
        lease.succeeded()
        self.assertEqual(lease.server.active, 1)
        self.assertTrue(lease.release())
        self.assertEqual((lease.server.active, lease.state), (0, LeaseState.RELEASED))
        self.assertEqual(attempts.times(), [1.5])

    def test_releasedOnce(self):
        """
        A second release does nothing and says so: the server is not
        counted down twice.
        """
        p, _ = pool()
        lease = p.select(VIEW).next()
        other = p.select(VIEW).next()
        self.assertTrue(lease.release())
        self.assertFalse(lease.release())
        self.assertEqual([s.active for s in p.servers], [0, 1])
        other.release()

    def test_releaseWithoutVerdictAbandons(self):
        """
        A lease released without a verdict was abandoned: a server on trial
        may be tested again.
        """
        p, reactor = pool(A, B)
        a = p.servers[0]
        a.health.requestFailed("refused")
        reactor.advance(10)
        lease = p.select(VIEW).next()
        self.assertIs(lease.server, a)
        self.assertIs(a.health.phase, Phase.TRIAL)
        self.assertFalse(a.available())
        lease.release()
        self.assertEqual(lease.outcome, Outcome.ABANDONED)
        self.assertIs(a.health.phase, Phase.UNAVAILABLE)
        self.assertTrue(a.available())

    def test_verdictsReachHealth(self):
        p, _ = pool(ServerConfig(A, max_fails=2), ServerConfig(B, max_fails=2))
        lease = p.select(VIEW).next()
        lease.failed("status 502")
        lease.release()
        self.assertEqual(lease.server.health._fails, 1)
        self.assertIs(lease.server.health.phase, Phase.FAILING)
        self.assertEqual((lease.outcome, lease.cause), (Outcome.FAILED, "status 502"))

    def test_affinityHeaders(self):
        """
        A lease gives the headers that send the client back to its server
        when the strategy pins clients; none otherwise.
        """
        sticky, _ = pool(balance="cookie")
        lease = sticky.select(VIEW).next()
        [(name, value)] = lease.affinityHeaders()
        self.assertEqual(name, b"Set-Cookie")
        self.assertTrue(value.startswith(b"manualb_server="))
        plain, _ = pool()
        self.assertEqual(plain.select(VIEW).next().affinityHeaders(), ())


class AttemptsTests(SynchronousTestCase):
    def test_excludesTried(self):
        p, _ = pool(A, B, C)
        attempts = p.select(VIEW)
        seen = []
        while True:
            lease = attempts.next()
            if lease is None:
                break
            seen.append(lease.server.name)
            lease.failed("refused")
            lease.release()
        self.assertEqual(sorted(seen), [A.name, B.name, C.name])
        self.assertEqual(attempts.stopped, StopReason.NO_SERVER)

    def test_tries(self):
        p, _ = pool(A, B, C, tries=2)
        attempts = p.select(VIEW)
        for _ in range(2):
            lease = attempts.next()
            lease.failed("refused")
            lease.release()
        self.assertFalse(attempts.mayRetry())
        self.assertIsNone(attempts.next())
        self.assertEqual(attempts.stopped, StopReason.TRIES)

    def test_retryTimeout(self):
        p, reactor = pool(A, B, C, retry_timeout=5.0)
        attempts = p.select(VIEW)
        attempts.next().release()
        reactor.advance(4)
        self.assertTrue(attempts.canRetry())
        attempts.next().release()
        reactor.advance(1)
        self.assertFalse(attempts.canRetry())
        self.assertIsNone(attempts.next())
        self.assertEqual(attempts.stopped, StopReason.RETRY_TIMEOUT)

    def test_maxConns(self):
        """
        A server with max_conns leases held is not offered; a released
        lease makes room again.
        """
        p, _ = pool(ServerConfig(A, max_conns=1))
        first = p.select(VIEW).next()
        second = p.select(VIEW)
        self.assertIsNone(second.next())
        record = second.record()
        self.assertEqual(
            [(s.server, s.reason) for s in record.refused.skipped],
            [(A.name, SkipReason.MAX_CONNS)],
        )
        first.release()
        self.assertIsNotNone(p.select(VIEW).next())


def picks(p, count: int) -> str:
    """
    The servers C{p} picks for C{count} requests one after the other, each
    answered well, as their last digit of address (C{10.0.0.1} is C{1}).
    """
    chosen = []
    for _ in range(count):
        lease = p.select(VIEW).next()
        chosen.append(lease.server.address.host[-1])
        lease.succeeded()
        lease.release()
    return "".join(chosen)


@implementer(IBalancer)
class LastOffered(RoundRobin):
    """
    A user's strategy made of a built-in one: the last server offered,
    and it takes the servers out of the list it is offered.
    """

    def pick(self, candidates, view):
        chosen = candidates[-1]
        del candidates[:]
        return chosen


class SteadyPickTests(SynchronousTestCase):
    """
    While every primary is plainly up, a pool keeps what it found of its
    servers; any change of a server between two requests is seen by the
    next one's pick.
    """

    def test_downAndUp(self):
        """
        A server an operator sets down or draining is not offered to the
        next request, and is offered again once it is up.
        """
        p, _ = pool(A, B)
        self.assertEqual(picks(p, 4), "1212")
        for state in ("down", "drain"):
            p.servers[1].setState(state)
            self.assertEqual(picks(p, 3), "111")
            p.servers[1].setState("up")
            self.assertEqual(sorted(picks(p, 4)), ["1", "1", "2", "2"])

    def test_weight(self):
        """
        A weight an operator sets counts from the next request on.
        """
        p, _ = pool(A, B)
        self.assertEqual(picks(p, 4), "1212")
        p.servers[1].setWeight(3)
        self.assertEqual(Counter(picks(p, 8)), {"1": 2, "2": 6})
        p.servers[1].setWeight(1)
        self.assertEqual(Counter(picks(p, 8)), {"1": 4, "2": 4})

    def test_reloadedWeight(self):
        """
        A reload that changes a server's weight gives the pool that
        replaces the old one the new weight, its servers' state carried
        over.
        """
        p, reactor = pool(A, B)
        self.assertEqual(picks(p, 4), "1212")
        config = UpstreamConfig("u", [ServerConfig(A), ServerConfig(B, weight=3)])
        reloaded = _buildPool(config, reactor, p)
        self.assertEqual(reloaded.servers, p.servers)
        self.assertEqual(Counter(picks(reloaded, 8)), {"1": 2, "2": 6})

    def test_passiveMarks(self):
        """
        A server that failed C{max_fails} times is not offered to the next
        request; once C{fail_timeout} passed it is tried again, and back in
        the rotation when that succeeds.
        """
        p, reactor = pool(ServerConfig(A, fail_timeout=5.0), ServerConfig(B, fail_timeout=5.0))
        self.assertEqual(picks(p, 2), "12")
        lease = p.select(VIEW).next()
        self.assertEqual(lease.server, p.servers[0])
        lease.failed("refused")
        lease.release()
        self.assertEqual(picks(p, 3), "222")
        reactor.advance(5)
        self.assertEqual(sorted(picks(p, 4)), ["1", "1", "2", "2"])

    def test_failingStaysOffered(self):
        """
        A server with failures below C{max_fails} is still offered, and the
        record of the pick shows it failing.
        """
        p, _ = pool(ServerConfig(A, max_fails=2), ServerConfig(B, max_fails=2))
        self.assertEqual(picks(p, 2), "12")
        lease = p.select(VIEW).next()
        lease.failed("refused")
        lease.release()
        attempts = p.select(VIEW)
        attempts.next().release()
        [attempt] = attempts.record().attempts
        self.assertEqual(
            [c.health for c in attempt.selection.candidates], ["failing", "up"]
        )

    def test_probes(self):
        """
        A server taken down by its probes is not offered to the next
        request, and is again once they pass.
        """
        p, _ = pool(A, B, health_check=HealthCheckConfig(rise=1, fall=1))
        self.assertEqual(picks(p, 2), "12")
        p.servers[0].health.probeFailed("refused")
        self.assertEqual(picks(p, 3), "222")
        p.servers[0].health.probePassed()
        self.assertEqual(sorted(picks(p, 4)), ["1", "1", "2", "2"])

    def test_slowStart(self):
        """
        A server back from being unavailable gets less than its share over
        its C{slow_start}, and its whole share after.
        """
        p, reactor = pool(
            ServerConfig(A, fail_timeout=1.0, slow_start=100.0),
            ServerConfig(B, fail_timeout=1.0, slow_start=100.0),
        )
        self.assertEqual(picks(p, 4), "1212")
        lease = p.select(VIEW).next()
        lease.failed("refused")
        lease.release()
        reactor.advance(1)
        picks(p, 2)
        self.assertIs(p.servers[0].health.phase, Phase.SLOW_START)
        self.assertLess(picks(p, 20).count("1"), 5)
        reactor.advance(100)
        self.assertEqual(Counter(picks(p, 20)), {"1": 10, "2": 10})

    def test_backups(self):
        """
        A backup is offered only while no primary is, and no longer once
        one is back.
        """
        p, reactor = pool(ServerConfig(A, fail_timeout=5.0), ServerConfig(B, backup=True))
        self.assertEqual(picks(p, 2), "11")
        lease = p.select(VIEW).next()
        lease.failed("refused")
        lease.release()
        self.assertEqual(picks(p, 2), "22")
        reactor.advance(5)
        self.assertEqual(picks(p, 2), "11")

    def test_ownStrategy(self):
        """
        A strategy of the user's (here a subclass of a built-in one with a
        pick of its own) picks every time, and has a list of its own.
        """
        p, reactor = pool(A, B, C)
        own = Pool(p.config, LastOffered(), p.servers, p.monitor, reactor)
        self.assertEqual(picks(own, 3), "333")
        own.servers[2].setState("down")
        self.assertEqual(picks(own, 2), "22")

    def test_retryOffersOthers(self):
        """
        A retry is offered the servers not yet tried.
        """
        p, _ = pool(A, B, C)
        attempts = p.select(VIEW)
        first = attempts.next()
        first.failed("refused")
        first.release()
        second = attempts.next()
        self.assertNotEqual(second.server, first.server)


class RecordTests(SynchronousTestCase):
    def test_selection(self):
        """
        A pick's record has the candidates with their weights and health,
        the servers left out and why, the strategy and its key, and the
        server chosen.
        """
        p, reactor = pool(
            ServerConfig(A, weight=2),
            ServerConfig(B, down=True),
            ServerConfig(C, backup=True),
            ServerConfig(ServerAddress("10.0.0.4", 8004)),
            balance="hash",
            balance_argument="$remote_addr",
        )
        p.servers[3].health.requestFailed("refused")
        attempts = p.select(VIEW)
        lease = attempts.next()
        reactor.advance(0.25)
        lease.succeeded()
        lease.release()
        [attempt] = attempts.record().attempts
        selection = attempt.selection
        self.assertEqual((selection.pool, selection.strategy, selection.key), ("u", "hash", "$remote_addr"))
        self.assertEqual(
            [(c.server, c.weight, c.effectiveWeight, c.health) for c in selection.candidates],
            [(A.name, 2, 2.0, "up")],
        )
        self.assertEqual(
            [(s.server, s.reason) for s in selection.skipped],
            [
                (B.name, SkipReason.DOWN),
                ("10.0.0.4:8004", SkipReason.UNHEALTHY),
                (C.name, SkipReason.BACKUP_NOT_NEEDED),
            ],
        )
        self.assertEqual(selection.chosen, A.name)
        self.assertEqual(
            (attempt.server, attempt.outcome, attempt.duration), (A.name, Outcome.SUCCEEDED, 0.25)
        )

    def test_retryCause(self):
        """
        Each attempt records its outcome; a failed one its cause, and the
        next attempt leaves the server tried out.
        """
        p, _ = pool(A, B)
        attempts = p.select(VIEW)
        first = attempts.next()
        first.failed("connect to backend failed: connection refused")
        first.release()
        second = attempts.next()
        second.succeeded()
        second.release()
        record = attempts.record()
        self.assertEqual(
            [(a.server, a.outcome, a.cause) for a in record.attempts],
            [
                (first.server.name, Outcome.FAILED, "connect to backend failed: connection refused"),
                (second.server.name, Outcome.SUCCEEDED, None),
            ],
        )
        self.assertIn(
            (first.server.name, SkipReason.TRIED),
            [(s.server, s.reason) for s in record.attempts[1].selection.skipped],
        )
        self.assertIsNone(record.stopped)

    def test_steadyRecordFollowsChanges(self):
        """
        The record of a pick among the steady primaries says what the
        servers are when it is made: a weight set after the pick, or
        before the next, shows in it.
        """
        p, _ = pool(A, B, ServerConfig(C, backup=True))
        attempts = p.select(VIEW)
        lease = attempts.next()
        lease.succeeded()
        lease.release()
        first = attempts.trace()
        self.assertIs(p.select(VIEW).next()._pick[1], lease._pick[1])
        p.servers[0].setWeight(5)
        second = attempts.trace()
        [(pick, outcome, cause, duration)] = second[3]
        candidates, skipped, chosen = pick
        self.assertEqual(candidates, ((A.name, 5, 5.0, "up"), (B.name, 1, 1.0, "up")))
        self.assertEqual(skipped, ((C.name, SkipReason.BACKUP_NOT_NEEDED.value),))
        self.assertEqual((chosen, outcome, cause), (lease.server.name, "succeeded", None))
        self.assertNotEqual(first[3][0][0], pick)
        self.assertEqual(second[:3], ("u", "round_robin", None))
        self.assertEqual(
            [c.weight for c in attempts.record().attempts[0].selection.candidates], [5, 1]
        )

    def test_serverNamesAndTimes(self):
        """
        C{serverNames} lists each server tried, C{times} each released
        attempt's time, in order.
        """
        p, reactor = pool(A, B)
        attempts = p.select(VIEW)
        first = attempts.next()
        reactor.advance(0.5)
        first.failed("status 502")
        first.release()
        second = attempts.next()
        self.assertEqual(attempts.serverNames(), [first.server.name, second.server.name])
        self.assertEqual(attempts.times(), [0.5])
        reactor.advance(0.25)
        second.release()
        self.assertEqual(attempts.times(), [0.5, 0.25])

    def test_frozen(self):
        p, _ = pool()
        attempts = p.select(VIEW)
        attempts.next().release()
        record = attempts.record()
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, record, "pool", "x")


class HealthPhaseTests(SynchronousTestCase):
    """
    The named states of a server's health and their transitions.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        self.changes = []

    def health(self, probes=None, **options) -> ServerHealth:
        options.setdefault("max_fails", 2)
        return ServerHealth(
            ServerConfig(A, **options),
            self.clock,
            probes=probes,
            onChange=lambda state, reason: self.changes.append(state),
        )

    def test_failingThenBack(self):
        health = self.health()
        health.requestFailed("x")
        self.assertIs(health.phase, Phase.FAILING)
        self.assertEqual(health.state, UP)
        health.requestSucceeded()
        self.assertIs(health.phase, Phase.UP)

    def test_failingWindowPasses(self):
        health = self.health()
        health.requestFailed("x")
        self.clock.advance(10)
        self.assertIs(health.phase, Phase.UP)

    def test_unavailableTrialUp(self):
        health = self.health()
        health.requestFailed("x")
        health.requestFailed("x")
        self.assertIs(health.phase, Phase.UNAVAILABLE)
        self.assertFalse(health.available())
        self.clock.advance(10)
        self.assertTrue(health.available())
        health.requestStarted()
        self.assertIs(health.phase, Phase.TRIAL)
        self.assertFalse(health.available())
        health.requestAbandoned()
        self.assertIs(health.phase, Phase.UNAVAILABLE)
        health.requestStarted()
        health.requestSucceeded()
        self.assertIs(health.phase, Phase.UP)
        self.assertEqual(self.changes, [DOWN, UP])

    def test_slowStart(self):
        health = self.health(slow_start=20.0)
        health.requestFailed("x")
        health.requestFailed("x")
        self.clock.advance(10)
        health.requestStarted()
        health.requestSucceeded()
        self.assertIs(health.phase, Phase.SLOW_START)
        self.assertEqual(health.weightFactor(), 0.01)
        self.clock.advance(20)
        self.assertIs(health.phase, Phase.UP)
        self.assertEqual(health.weightFactor(), 1.0)

    def test_probeDown(self):
        probes = HealthCheckConfig(rise=2, fall=1)
        health = self.health(probes=probes)
        health.requestFailed("x")
        health.requestFailed("x")
        self.assertIs(health.phase, Phase.PROBE_DOWN)
        health.probePassed()
        self.assertIs(health.phase, Phase.PROBE_DOWN)
        health.probePassed()
        self.assertIs(health.phase, Phase.UP)
        health.probeFailed("status 500")
        self.assertIs(health.phase, Phase.PROBE_DOWN)
        self.assertEqual(self.changes, [DOWN, UP, DOWN])

    def test_onlyDocumentedTransitions(self):
        """
        A transition outside the table is refused.
        """
        health = self.health()
        self.assertNotIn((Phase.UP, Phase.TRIAL), TRANSITIONS)
        self.assertRaises(RuntimeError, health._enter, Phase.TRIAL)
        self.assertIs(health.phase, Phase.UP)

    def test_healthLog(self):
        log = HealthLog("u", self.clock)
        health = ServerHealth(ServerConfig(A, max_fails=1), self.clock, onChange=log.recorder(A.name))
        health.requestFailed("refused")
        [event] = log.events
        self.assertEqual((event.pool, event.server, event.state), ("u", A.name, DOWN))


class ConnectWithTimeoutTests(SynchronousTestCase):
    """
    The one helper every connect to a server goes through.
    """

    class Endpoint:
        def __init__(self):
            self.attempts = []

        def connect(self, factory):
            d = Deferred()
            self.attempts.append(d)
            return d

    def connect(self, timeout=5.0, what="connect to backend"):
        self.reactor = MemoryReactorClock()
        self.endpoint = self.Endpoint()
        results = []
        d = connectWithTimeout(self.reactor, self.endpoint, Factory(), timeout, what)
        d.addBoth(results.append)
        return d, results

    def test_connected(self):
        d, results = self.connect()
        self.endpoint.attempts[0].callback("protocol")
        self.assertEqual(results, ["protocol"])

    def test_timeout(self):
        d, results = self.connect()
        self.reactor.advance(5)
        self.assertIsInstance(results[0].value, UpstreamTimeout)
        self.assertEqual(str(results[0].value), "connect to backend timed out after 5s")

    def test_refused(self):
        d, results = self.connect(what="connect")
        self.endpoint.attempts[0].errback(ConnectionRefusedError())
        self.assertIsInstance(results[0].value, UpstreamConnectFailed)
        self.assertEqual(str(results[0].value), "connect failed: connection refused")

    def test_localShortage(self):
        d, results = self.connect()
        self.endpoint.attempts[0].errback(ConnectBindError(errno.EMFILE, "Too many open files"))
        self.assertIsInstance(results[0].value, UpstreamLocalError)
        self.assertTrue(str(results[0].value).startswith("cannot connect to backend: "))

    def test_cancelled(self):
        d, results = self.connect()
        d.cancel()
        self.assertIsInstance(results[0].value, CancelledError)

    def test_noTimeout(self):
        d, results = self.connect(timeout=0)
        self.reactor.advance(3600)
        self.assertEqual(results, [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class CookieRetryTests(SynchronousTestCase):
    """
    The cookie of a sticky pool names the server that answered, after a
    retry too.
    """

    GET = b"GET /x HTTP/1.1\r\nHost: example.com\r\n%s\r\n"
    OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def setUp(self):
        config = balancerConfig(["10.0.0.1:8001", "10.0.0.2:8002"])
        upstream = attrs.evolve(config.upstreams["backends"], balance="cookie")
        self.lb = MemoryBalancer(attrs.evolve(config, upstreams={"backends": upstream}))
        self.a, self.b = self.lb.balancer.pools["backends"].servers

    def cookies(self, response: bytes) -> list[bytes]:
        head = response.split(b"\r\n\r\n", 1)[0]
        return [
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"set-cookie:")
        ]

    def cookieFor(self, server: Server) -> bytes:
        from manualb.balancers import serverID

        return b"manualb_server=" + serverID(server) + b"; Path=/; HttpOnly"

    def test_retryNamesTheServerThatAnswered(self):
        """
        A client pinned to A, whose A refuses, is served by B and told to
        come back to B.
        """
        from manualb.balancers import serverID

        client = self.lb.client()
        client.send(self.GET % (b"Cookie: manualb_server=" + serverID(self.a) + b"\r\n",))
        self.assertEqual(self.lb.pendingConnections(), [("10.0.0.1", 8001)])
        self.lb.refuseConnection()
        self.lb.acceptConnection().send(self.OK)
        self.assertEqual(self.cookies(client.received()), [self.cookieFor(self.b)])
        self.flushLoggedErrors()

    def test_stickyClientGetsNoCookie(self):
        from manualb.balancers import serverID

        client = self.lb.client()
        client.send(self.GET % (b"Cookie: manualb_server=" + serverID(self.b) + b"\r\n",))
        self.assertEqual(self.lb.pendingConnections(), [("10.0.0.2", 8002)])
        self.lb.acceptConnection().send(self.OK)
        self.assertEqual(self.cookies(client.received()), [])

    def test_backendCookiesKept(self):
        """
        The backend's own cookies go on beside the balancer's.
        """
        client = self.lb.client()
        client.send(self.GET % (b"",))
        server = self.a if self.lb.pendingConnections() == [("10.0.0.1", 8001)] else self.b
        self.lb.acceptConnection().send(
            b"HTTP/1.1 200 OK\r\nSet-Cookie: theme=dark\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertEqual(
            self.cookies(client.received()), [self.cookieFor(server), b"theme=dark"]
        )
