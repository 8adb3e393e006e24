"""
The built-in demo: the experiments of the article manualb grew from ("The
Manual Load Balancer"), replayed for real.  Two backends in two zones, each
its own process, behind manualb; then round robin, the kill test, sticky
sessions (C{ip_hash}, then a cookie), a weighted canary, and the article's
last lesson, shopping carts in memory and in Redis (L{manualb.cartdemo}),
each printed as what is done, what happened and what it means.  Then
manualb keeps running, round robin over both backends, for you to try with
curl.

Each experiment is a function that makes its requests through manualb,
prints through a C{say} callable and returns what happened, so that the
tests (C{tests/test_demo.py}) check the very runs the demo shows.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any, Callable, Generator, Sequence, TypeVar

import attrs
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from manualb.accesslog import AccessLog
from manualb.cartdemo import CartResult, RedisProcess, findRedisServer, shoppingCarts
from manualb.health import HealthEvent
from manualb.service import LoadBalancer
from manualb.testing import BackendProcess, balancerConfig

#: Prints one line of the demo's story.
Say = Callable[[str], None]

_T = TypeVar("_T")
#: An L{inlineCallbacks} generator whose L{Deferred} fires with a C{_T}.
Steps = Generator[Deferred[Any], Any, _T]

NAME_A = "Backend A (zone A)"
NAME_B = "Backend B (zone B)"
UPSTREAM = "my_backend_pool"
#: Short, so that the demo sees a killed server come back within seconds
#: (nginx's default is 10s).
FAIL_TIMEOUT = "2s"
KILL_REQUESTS = 200
KILL_CLIENTS = 20
#: Bounds on the wait for the restarted Backend A to be used again.
RETURN_MAX_REQUESTS = 20000
RETURN_MAX_SECONDS = 10.0


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _letter(backend: str) -> str:
    """
    C{A} for C{Backend A (zone A)}: the short name of a backend in a list.
    """
    parts = backend.split()
    return parts[1] if len(parts) > 1 and parts[0] == "Backend" else backend


def _count(picks: Sequence[str]) -> str:
    """
    C{A 3, B 1}: how many of C{picks} each backend served, A first.
    """
    counts = Counter(picks)
    return ", ".join("%s %d" % (_letter(name), counts[name]) for name in sorted(counts))


# -- the pieces: clients, backends, balancers --------------------------------


@attrs.frozen
class Answer:
    """
    A response through manualb: its status, the backend that answered (the
    body, which is the backend's name) and its C{Set-Cookie} values.
    """

    code: int
    backend: str
    setCookies: list[bytes]


class Client:
    """
    HTTP clients on kept-alive connections: an L{Agent} over a persistent
    pool of up to C{connections} connections per host.
    """

    def __init__(self, reactor, connections: int = 1):
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = connections
        self.agent = Agent(reactor, pool=self.pool)

    @inlineCallbacks
    def get(self, url: str, cookie: bytes | None = None) -> Steps[Answer]:
        """
        C{GET url}, with C{Cookie: cookie} when given; fires with an
        L{Answer}.
        """
        headers = Headers()
        if cookie is not None:
            headers.addRawHeader(b"Cookie", cookie)
        response = yield self.agent.request(b"GET", url.encode("ascii"), headers)
        body = yield readBody(response)
        return Answer(
            response.code,
            body.decode("utf-8", "replace").strip(),
            response.headers.getRawHeaders(b"Set-Cookie", []),
        )

    def close(self) -> Deferred[None]:
        """
        Close the kept-alive connections.
        """
        return self.pool.closeCachedConnections()


class Demo:
    """
    What the demo runs: the two backend processes, the balancers in front of
    them, the clients, and a redis-server; L{stop} ends them all (on Ctrl-C
    too).

    @ivar backendA: Backend A (zone A), a L{BackendProcess}.
    @ivar backendB: Backend B (zone B), a L{BackendProcess}.
    @ivar redis: The demo's redis-server (a L{RedisProcess}) once
        L{startRedis} has started it; L{None} when it could not.
    @ivar redisProblem: Why there is no C{redis}.
    """

    def __init__(self, reactor, redisServer: str | None = ""):
        """
        @param redisServer: The path of redis-server; C{""} to look for it
            (L{findRedisServer}), L{None} for none.
        """
        self.reactor = reactor
        self.backendA = BackendProcess(reactor, NAME_A)
        self.backendB = BackendProcess(reactor, NAME_B)
        self.redisServer = findRedisServer() if redisServer == "" else redisServer
        self.redis: RedisProcess | None = None
        self.redisProblem = "redis-server has not been started"
        self._backends: list[BackendProcess] = []
        self._balancers: list[LoadBalancer] = []
        self._ports: list[IListeningPort] = []
        self._clients: list[Client] = []

    def startBackends(self) -> Deferred[list[str]]:
        """
        Start both backend processes; fires with their addresses, A's first.
        """
        return gatherResults(
            [self.backendA.start(), self.backendB.start()], consumeErrors=True
        )

    def backend(self, name: str, cart: str) -> BackendProcess:
        """
        One more backend process, not started, keeping its shopping carts in
        C{cart} (C{memory} or C{redis://...}); L{stop} kills it.
        """
        backend = BackendProcess(self.reactor, name, cart=cart)
        self._backends.append(backend)
        return backend

    @inlineCallbacks
    def startRedis(self) -> Steps[RedisProcess | None]:
        """
        Start the demo's redis-server on a free loopback port; fires with
        it as C{redis}, or with L{None}, C{redisProblem} saying why, when
        it is not installed or does not start.
        """
        if self.redisServer is None:
            self.redisProblem = (
                "redis-server is not installed (scripts/redis installs it from "
                "the OS packages; ./scripts/demo runs it, as root or with sudo)"
            )
            return None
        for _ in range(3):
            redis = RedisProcess(self.reactor, self.redisServer)
            self.redis = redis
            try:
                yield redis.start()
            except Exception as e:
                self.redis = None
                self.redisProblem = "redis-server (%s) did not start: %s" % (
                    self.redisServer, e or type(e).__name__)
                # Another program may have taken the free port first.
                if "in use" not in str(e):
                    return None
            else:
                return redis
        return None

    @inlineCallbacks
    def startBalancer(
        self,
        servers: Sequence[str],
        port: int = 0,
        accessLog: AccessLog | None = None,
        **options: str,
    ) -> Steps[tuple[LoadBalancer, str]]:
        """
        Start a balancer with one pool of C{servers} (C{servers} lines, with
        their options) on 127.0.0.1:C{port}, 0 for a free port; C{options}
        are more keys of its C{[upstream]} section.  Fires with the
        L{LoadBalancer} and its URL.
        """
        config = balancerConfig(servers, upstream=UPSTREAM, **options)
        balancer = LoadBalancer(config, self.reactor, accessLog)
        self._balancers.append(balancer)
        balancer.start()
        endpoint = TCP4ServerEndpoint(self.reactor, port, interface="127.0.0.1")
        listening = yield endpoint.listen(balancer.site)
        self._ports.append(listening)
        return balancer, "http://127.0.0.1:%d/" % (listening.getHost().port,)

    def client(self, connections: int = 1) -> Client:
        """
        A new L{Client}, closed by L{stop}.
        """
        client = Client(self.reactor, connections)
        self._clients.append(client)
        return client

    @inlineCallbacks
    def stop(self) -> Steps[None]:
        """
        Stop listening, close every connection, kill every backend and stop
        the redis-server; fires once they are gone.  Safe to call more than
        once.
        """
        ports, self._ports = self._ports, []
        clients, self._clients = self._clients, []
        balancers, self._balancers = self._balancers, []
        backends, self._backends = self._backends, []
        redis, self.redis = self.redis, None
        yield gatherResults([port.stopListening() for port in ports], consumeErrors=True)
        for balancer in balancers:
            balancer.close()
        yield gatherResults([client.close() for client in clients], consumeErrors=True)
        ends = [backend.kill() for backend in (self.backendA, self.backendB, *backends)]
        yield gatherResults([end for end in ends if end is not None], consumeErrors=True)
        if redis is not None:
            yield redis.stop()


# -- the experiments ---------------------------------------------------------


@inlineCallbacks
def roundRobin(client: Client, url: str, say: Say) -> Steps[list[str]]:
    """
    Experiment 1: four requests, one after another, through the round-robin
    balancer at C{url}.  Fires with the backends that answered, in order.
    """
    say("1. Round robin")
    say("   Done:     4 requests through manualb, one after another.")
    picks = yield _picks(client, url, 4)
    for i, backend in enumerate(picks):
        say("   Happened: request %d -> %s" % (i + 1, backend))
    say("   Meaning:  with equal weights manualb takes the servers in turn, as nginx")
    say("             does by default: %s." % (" ".join(map(_letter, picks)),))
    return picks


@attrs.frozen
class KillResult:
    """
    What the kill test saw.

    @ivar requests: Requests sent in the burst.
    @ivar failed: Requests that failed (an error or a status other than
        200), in the burst and while waiting for Backend A to come back.
    @ivar beforeKill: Answers of the burst per backend until Backend A's
        process was gone (the answers on their way count).
    @ivar afterKill: Answers of the burst per backend after that.
    @ivar events: manualb's changes of Backend A's state from the kill on.
    @ivar returnedAfter: Seconds from Backend A listening again to its first
        answer through manualb; L{None} if it did not answer within the
        bounds.
    @ivar requestsUntilBack: Requests sent after the restart until then.
    @ivar afterReturn: The next ten answers per backend.
    """

    requests: int
    failed: int
    beforeKill: dict[str, int]
    afterKill: dict[str, int]
    events: list[HealthEvent]
    returnedAfter: float | None
    requestsUntilBack: int
    afterReturn: dict[str, int]


class _Burst:
    """
    C{total} GETs from C{concurrency} clients at once, each sending its next
    request as soon as its last is answered; C{onAnswer} is called after
    each one, answered or failed.
    """

    def __init__(self, client: Client, url: str, total: int, concurrency: int, onAnswer):
        self.client = client
        self.url = url
        self.total = total
        self.concurrency = concurrency
        self.onAnswer = onAnswer
        self.sent = 0
        self.answers: list[str] = []
        self.failures: list = []

    def run(self) -> Deferred:
        """
        Send them all; fires once every request is answered or failed.
        """
        return gatherResults([self._loop() for _ in range(self.concurrency)])

    @inlineCallbacks
    def _loop(self):
        while self.sent < self.total:
            self.sent += 1
            try:
                answer = yield self.client.get(self.url)
            except Exception as e:
                self.failures.append(repr(e))
            else:
                if answer.code == 200:
                    self.answers.append(answer.backend)
                else:
                    self.failures.append("status %d" % (answer.code,))
            self.onAnswer(len(self.answers) + len(self.failures))


def _stateChanges(
    balancer: LoadBalancer, server: str, since: float, what: str, say: Say
) -> list[HealthEvent]:
    """
    Print manualb's changes of C{server}'s state since the time C{since}
    (that of C{what}), and return them.
    """
    events = [
        event
        for event in balancer.pools[UPSTREAM].monitor.history
        if event.server == server and event.time >= since
    ]
    for event in events:
        say("             manualb's log, %.3f s after %s: %s is %s:"
            % (event.time - since, what, event.server, event.state))
        say("               %s" % (event.reason,))
    return events


@inlineCallbacks
def _picks(client: Client, url: str, count: int) -> Steps[list[str]]:
    """
    C{count} requests to C{url}, one after another: fires with the backends
    that answered, in order.
    """
    picks = []
    for _ in range(count):
        answer = yield client.get(url)
        picks.append(answer.backend)
    return picks


@inlineCallbacks
def _get(client: Client, url: str) -> Steps[str | None]:
    """
    C{GET url}: fires with the name of the backend that answered, or
    L{None} when the request failed (an error or a status other than 200).
    """
    try:
        answer = yield client.get(url)
    except Exception:
        return None
    return answer.backend if answer.code == 200 else None


@inlineCallbacks
def _burstWithKill(demo: Demo, client: Client, url: str):
    """
    The burst of the kill test, Backend A killed halfway; fires, once A is
    gone, with the burst, the time of the kill and how many answers came
    before A was gone.
    """
    kill: dict = {}

    def killHalfway(done: int) -> None:
        if done >= KILL_REQUESTS // 2 and not kill:
            kill["at"] = demo.reactor.seconds()
            kill["gone"] = demo.backendA.kill()
            kill["gone"].addCallback(lambda _: kill.setdefault("answered", len(burst.answers)))

    burst = _Burst(client, url, KILL_REQUESTS, KILL_CLIENTS, killHalfway)
    yield burst.run()
    yield kill["gone"]
    return burst, kill["at"], kill["answered"]


@inlineCallbacks
def _untilBack(reactor, client: Client, url: str):
    """
    Send requests back to back until Backend A answers one, within
    L{RETURN_MAX_REQUESTS} and L{RETURN_MAX_SECONDS}.  Fires with the
    seconds it took (L{None}: not within the bounds), the requests sent and
    the failed ones.
    """
    start = reactor.seconds()
    sent = failed = 0
    while sent < RETURN_MAX_REQUESTS and reactor.seconds() - start < RETURN_MAX_SECONDS:
        sent += 1
        backend = yield _get(client, url)
        if backend is None:
            failed += 1
        elif backend == NAME_A:
            return reactor.seconds() - start, sent, failed
    return None, sent, failed


@inlineCallbacks
def killTest(demo: Demo, balancer: LoadBalancer, url: str, say: Say) -> Steps[KillResult]:
    """
    Experiment 2, the article's kill test: a burst of L{KILL_REQUESTS}
    requests from L{KILL_CLIENTS} concurrent clients through the balancer at
    C{url}, Backend A killed with SIGKILL halfway through; then A started
    again, and requests sent until it answers.  Fires with a L{KillResult}.
    """
    addressA = demo.backendA.address
    say("2. The kill test")
    say("   Done:     a burst of %d requests from %d concurrent keep-alive clients;"
        % (KILL_REQUESTS, KILL_CLIENTS))
    say("             once %d are answered, Backend A's process is killed with SIGKILL"
        % (KILL_REQUESTS // 2,))
    say("             (pid %d), as a zone going dark would." % (demo.backendA.transport.pid,))
    client = demo.client(KILL_CLIENTS)
    burst, killedAt, answered = yield _burstWithKill(demo, client, url)
    # Answers that were on their way when the signal went count as before.
    before, after = burst.answers[:answered], burst.answers[answered:]
    failed = len(burst.failures)
    say("   Happened: %d failed requests out of %d." % (failed, KILL_REQUESTS))
    say("             Until A's process was gone: %s.  After: %s."
        % (_count(before), _count(after) or "none"))
    events = _stateChanges(balancer, addressA, killedAt, "the kill", say)
    say("   Meaning:  the requests that were on their way to A failed there and were")
    say("             sent again to B (a GET may be sent twice), and A was taken out")
    say("             of rotation (passive health check): no client saw an error.")

    say("   Done:     Backend A started again on the same port; requests sent back")
    say("             to back until A answers one.")
    yield demo.backendA.start()
    returnedAt = demo.reactor.seconds()
    returnedAfter, sent, failedWaiting = yield _untilBack(demo.reactor, client, url)
    failed += failedWaiting
    afterReturn = []
    for _ in range(10):
        backend = yield _get(client, url)
        if backend is None:
            failed += 1
        else:
            afterReturn.append(backend)
    if returnedAfter is None:
        say("   Happened: Backend A did not answer within %d requests or %g s."
            % (RETURN_MAX_REQUESTS, RETURN_MAX_SECONDS))
    else:
        say("   Happened: A answered again %.2f s after it was back (%d requests later);"
            % (returnedAfter, sent))
        say("             the next 10 requests: %s." % (_count(afterReturn),))
    events += _stateChanges(balancer, addressA, returnedAt, "the restart", say)
    say("   Meaning:  manualb tries a failed server again once its fail_timeout (%s"
        % (FAIL_TIMEOUT,))
    say("             here) has passed; one good answer puts it back in rotation.")
    say("             %d failed requests in the whole test." % (failed,))
    return KillResult(
        requests=KILL_REQUESTS,
        failed=failed,
        beforeKill=dict(Counter(before)),
        afterKill=dict(Counter(after)),
        events=events,
        returnedAfter=returnedAfter,
        requestsUntilBack=sent,
        afterReturn=dict(Counter(afterReturn)),
    )


@inlineCallbacks
def ipHash(demo: Demo, servers: Sequence[str], say: Say) -> Steps[list[str]]:
    """
    Experiment 3a: ten requests from this host through a balancer with
    C{balance = ip_hash}.  Fires with the backends that answered.
    """
    say("3. Sticky sessions")
    balancer, url = yield demo.startBalancer(servers, balance="ip_hash")
    client = demo.client()
    say("   Done:     a second manualb, with balance = ip_hash, at %s;" % (url,))
    say("             10 requests to it from 127.0.0.1.")
    picks = yield _picks(client, url, 10)
    if len(set(picks)) == 1:
        say("   Happened: all 10 went to %s." % (picks[0],))
    else:
        say("   Happened: %s." % (_count(picks),))
    say("   Meaning:  a hash of the client's address picks the server, so this host")
    say("             is glued to %s.  A whole office behind one address" % (picks[0],))
    say("             lands on that one server too: its load is not spread.")
    return picks


@attrs.frozen
class CookieResult:
    """
    What the cookie experiment saw.

    @ivar cookie: The C{Set-Cookie} the first client got.
    @ivar first: The backend of that first request.
    @ivar sticky: The backends of that client's next requests, with its
        cookie.
    @ivar others: The backend of each other, cookieless, client.
    """

    cookie: str
    first: str
    sticky: list[str]
    others: list[str]


@inlineCallbacks
def cookieSessions(demo: Demo, servers: Sequence[str], say: Say) -> Steps[CookieResult]:
    """
    Experiment 3b: through a balancer with C{balance = cookie}, one client
    takes the cookie of its first response and sends it back, while new
    clients without a cookie come in between.  Fires with a
    L{CookieResult}.
    """
    balancer, url = yield demo.startBalancer(servers, balance="cookie")
    client = demo.client()
    say("   Done:     a third manualb, with balance = cookie, at %s:" % (url,))
    say("             one client sends a request, then 5 more with the cookie it got;")
    say("             5 new clients without a cookie, from the same address, come in")
    say("             between.")
    first = yield client.get(url)
    cookie = first.setCookies[0].decode("ascii") if first.setCookies else ""
    sent = cookie.split(";", 1)[0].encode("ascii")
    sticky, others = [], []
    for _ in range(5):
        other = yield client.get(url)
        others.append(other.backend)
        answer = yield client.get(url, cookie=sent)
        sticky.append(answer.backend)
    say("   Happened: the first response (from %s) set the cookie" % (_letter(first.backend),))
    say("             %s" % (cookie,))
    say("             with it, the client went to: %s" % (" ".join(map(_letter, sticky)),))
    say("             the new clients went to:     %s" % (" ".join(map(_letter, others)),))
    say("   Meaning:  a cookie glues each client (a browser) to its server, and")
    say("             clients sharing an address still spread.  Better still, as the")
    say("             article says: keep no state in the servers (a cart in Redis, 5.).")
    return CookieResult(cookie, first.backend, sticky, others)


@attrs.frozen
class CanaryResult:
    """
    What the canary experiment saw: the answers per backend, and the
    backends of the first eight requests.
    """

    counts: dict[str, int]
    firstPicks: list[str]


@inlineCallbacks
def canary(demo: Demo, addresses: Sequence[str], say: Say) -> Steps[CanaryResult]:
    """
    Experiment 4: 100 requests through a balancer with C{weight=3} on
    Backend A, C{weight=1} on B.  Fires with a L{CanaryResult}.
    """
    addressA, addressB = addresses
    balancer, url = yield demo.startBalancer([addressA + " weight=3", addressB + " weight=1"])
    client = demo.client()
    say("4. Weighted canary")
    say("   Done:     a fourth manualb, weight=3 on A and weight=1 on B, at %s;" % (url,))
    say("             100 requests.")
    picks = yield _picks(client, url, 100)
    counts = Counter(picks)
    say("   Happened: %s; the first 8: %s."
        % (_count(picks), " ".join(map(_letter, picks[:8]))))
    say("   Meaning:  A takes %d%% of the traffic, spread evenly (not 3 in a row, then"
        % (counts[NAME_A],))
    say("             1): how a canary deployment shifts traffic, a weight at a time.")
    return CanaryResult(dict(counts), picks[:8])


@attrs.frozen
class Results:
    """
    What the experiments saw, and the URL of the main, round-robin,
    balancer.
    """

    url: str
    roundRobin: list[str]
    kill: KillResult
    ipHash: list[str]
    cookie: CookieResult
    canary: CanaryResult
    carts: CartResult | None


@inlineCallbacks
def runExperiments(
    demo: Demo, port: int, say: Say, accessLog: AccessLog | None = None
) -> Steps[Results]:
    """
    Start both backends, the demo's redis-server and the main balancer on
    127.0.0.1:C{port} (0: a free port), round robin over them, with
    C{accessLog}; then run every experiment.  Fires with the L{Results};
    the main balancer and the backends stay up (until C{demo.stop()}).
    """
    addresses, redis = yield gatherResults(
        [demo.startBackends(), demo.startRedis()], consumeErrors=True
    )
    for backend in (demo.backendA, demo.backendB):
        say("%s: its own process (pid %d), listening on %s"
            % (backend.name, backend.transport.pid, backend.address))
    if redis is None:
        say("redis-server: none, so experiment 5 is skipped: %s" % (demo.redisProblem,))
    else:
        say("redis-server: its own process (pid %d), on 127.0.0.1:%d, saving nothing"
            % (redis.pid, redis.port))
    main = [address + " fail_timeout=" + FAIL_TIMEOUT for address in addresses]
    balancer, url = yield demo.startBalancer(main, port, accessLog)
    say("manualb listens on %s, round robin over both, with fail_timeout=%s:"
        % (url, FAIL_TIMEOUT))
    say("a failing server is out for %s (nginx's default is 10s), short so that the"
        % (FAIL_TIMEOUT,))
    say("demo need not wait long for a killed backend to be tried again.\n")
    client = demo.client()
    picks = yield roundRobin(client, url, say)
    say("")
    kill = yield killTest(demo, balancer, url, say)
    say("")
    sticky = yield ipHash(demo, addresses, say)
    cookie = yield cookieSessions(demo, addresses, say)
    say("")
    weighted = yield canary(demo, addresses, say)
    say("")
    carts = yield shoppingCarts(demo, say)
    say("")
    return Results(url, picks, kill, sticky, cookie, weighted, carts)


# -- running it ----------------------------------------------------------------


class _Gate:
    """
    A binary output that drops what is written until opened: the main
    balancer's access log stays quiet during the experiments.
    """

    def __init__(self, output):
        self.output = output
        self.opened = False

    def write(self, data: bytes) -> None:
        if self.opened:
            self.output.write(data)
            self.output.flush()

    def close(self) -> None:
        pass


def runDemo(port: int) -> int:
    """
    Run the experiments, then keep the main balancer on 127.0.0.1:C{port}
    serving until interrupted.  1 when the demo could not run.
    """
    from twisted.internet import reactor

    failures = []
    demo = Demo(reactor)
    gate = _Gate(sys.stdout.buffer)
    reactor.addSystemEventTrigger("before", "shutdown", demo.stop)

    def ready(results: Results) -> None:
        gate.opened = True
        _say("Try it yourself:  curl %s   (Ctrl-C stops the demo)" % (results.url,))
        _say("Kill Backend A (kill -9 %d) and curl again: B answers every request."
             % (demo.backendA.transport.pid,))

    def failed(reason) -> None:
        failures.append(reason)
        _say("demo failed: %s" % (reason.getErrorMessage(),))
        reactor.stop()

    def start() -> None:
        started = runExperiments(demo, port, _say, AccessLog(gate, clock=reactor.seconds))
        started.addCallbacks(ready, failed)

    reactor.callWhenRunning(start)
    reactor.run()
    return 1 if failures else 0
