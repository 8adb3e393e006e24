"""
The demo's last experiment, the article's last lesson played: "Sticky
sessions are a patch; external state (Redis) is the solution".  Both demo
backends keep a shopping cart for each client (L{manualb.testing.CartBackend}),
once in their own memory and once in a Redis, behind a manualb that balances
them round robin with no stickiness; one client shops, Backend A is killed
in the middle, and the two runs are printed side by side.

The Redis is the demo's own redis-server (L{RedisProcess}), the OS package
(C{scripts/redis} installs it), started on a free loopback port in a
temporary directory, saving nothing; without one the experiment says it is
skipped, and why.

The experiment works on the demo's L{manualb.demo.Demo}, which it is given
(it starts backends, balancers and clients through it, so that stopping the
demo stops them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import textwrap
from typing import Any, Callable, Generator

import attrs
from twisted.internet.defer import Deferred, TimeoutError, gatherResults, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from manualb.testing import CART_COOKIE

Say = Callable[[str], None]
Steps = Generator[Deferred[Any], Any, Any]

#: How long, in seconds, redis-server may take to start.
REDIS_START_TIMEOUT = 10.0

#: What the client does, in order; L{KILL} is where Backend A is killed.
KILL = ("kill", "")
SESSION: tuple[tuple[str, str], ...] = (
    ("add", "apple"),
    ("add", "bread"),
    ("view", ""),
    ("add", "milk"),
    KILL,
    ("view", ""),
    ("add", "eggs"),
)


def findRedisServer() -> str | None:
    """
    The path of redis-server (where C{scripts/redis} installs it, or on the
    C{PATH}), or L{None} when it is not installed.
    """
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _freePort() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


#: Runs redis-server under a shell that stops it when its standard input
#: closes: when the demo goes, however it ends, its Redis goes too.  The
#: shell ends when redis-server does.
_WRAPPER = (
    'exec 3<&0; "$0" "$@" 3<&- & pid=$!; echo "pid $pid"; '
    "(cat <&3 >/dev/null; kill -CONT $pid; kill $pid) >/dev/null 2>&1 & wait $pid"
)


class RedisProcess(ProcessProtocol):
    """
    A redis-server of its own (the demo's, and the tests'): on a port of
    127.0.0.1 (a free one unless given), which it keeps if started again,
    in a directory (a temporary one that L{stop} removes unless given),
    saving nothing (C{--save '' --appendonly no}).

    @ivar executable: The path of redis-server.
    @ivar port: Its port, once L{start} is called.
    @ivar pid: The process id of redis-server itself, once it runs.
    """

    def __init__(
        self, reactor, executable: str, directory: str | None = None, port: int | None = None
    ):
        self.reactor = reactor
        self.executable = executable
        self.port = port
        self.pid: int | None = None
        self.directory = directory
        self._ownDirectory = directory is None
        self._output = b""
        self._ready: Deferred[None] | None = None
        self._running = False
        self._stops: list[Deferred[None]] = []

    @property
    def url(self) -> str:
        """
        C{redis://127.0.0.1:PORT/0}, as C{python -m manualb backend --cart}
        takes it.
        """
        return "redis://127.0.0.1:%d/0" % (self.port,)

    def start(self) -> Deferred[None]:
        """
        Start it; fires once it accepts connections, or fails with what it
        said (within L{REDIS_START_TIMEOUT}).
        """
        if self.port is None:
            self.port = _freePort()
        if self._ownDirectory:
            self.directory = tempfile.mkdtemp(prefix="manualb-demo-redis-")
        self._output = b""
        self._ready = Deferred()
        self._running = True
        args = [
            "/bin/sh", "-c", _WRAPPER, self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", self.directory,
            "--logfile", "",
        ]
        self.reactor.spawnProcess(
            self, args[0], args, env={"PATH": os.environ.get("PATH", "")}
        )
        ready = self._ready
        ready.addTimeout(REDIS_START_TIMEOUT, self.reactor)
        ready.addErrback(self._failed)
        return ready

    def _failed(self, reason):
        self._ready = None
        if reason.check(TimeoutError):
            reason = Failure(RuntimeError("not ready within %gs" % (REDIS_START_TIMEOUT,)))
        return self.stop().addCallback(lambda ignored: reason)

    def stop(self) -> Deferred[None]:
        """
        Stop it, if it runs, and remove its directory; fires once it has
        exited.  Safe to call more than once.
        """
        stopped: Deferred[None] = Deferred()
        if not self._running:
            self._removeDirectory()
            stopped.callback(None)
            return stopped
        self._stops.append(stopped)
        if self.transport is not None:
            self.transport.closeStdin()
        return stopped

    def pause(self) -> None:
        """
        Freeze it (C{SIGSTOP}): it keeps its connections and answers
        nothing, as a Redis that hangs.
        """
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """
        Let it go on after L{pause}.
        """
        os.kill(self.pid, signal.SIGCONT)

    def _removeDirectory(self) -> None:
        if self._ownDirectory and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def outReceived(self, data: bytes) -> None:
        self._output = (self._output + data)[-4000:]
        if self.pid is None and self._output.startswith(b"pid ") and b"\n" in self._output:
            self.pid = int(self._output.split(b"\n", 1)[0].split()[1])
        if self._ready is not None and b"Ready to accept connections" in self._output:
            ready, self._ready = self._ready, None
            ready.callback(None)

    errReceived = outReceived

    def processExited(self, reason) -> None:
        # The shell's watch on its standard input ends with it.
        self.transport.closeStdin()

    def processEnded(self, reason) -> None:
        self.transport = None
        self.pid = None
        if self._ready is not None:
            ready, self._ready = self._ready, None
            lines = [
                line
                for line in self._output.decode("utf-8", "replace").strip().splitlines()
                if not line.startswith("pid ")
            ]
            status = getattr(reason.value, "exitCode", None)
            ready.errback(RuntimeError(lines[-1] if lines else "exit status %s" % (status,)))
        self._running = False
        self._removeDirectory()
        stops, self._stops = self._stops, []
        for stopped in stops:
            stopped.callback(None)


# -- the experiment -------------------------------------------------------------


@attrs.frozen
class CartStep:
    """
    One request of the client's session and its answer.

    @ivar action: C{add} or C{view}.
    @ivar item: What was added (C{""} for a view).
    @ivar backend: The backend that answered, or L{None} if none did.
    @ivar cart: The cart that backend answered with.
    @ivar problem: Why the request failed, or L{None}.
    """

    action: str
    item: str
    backend: str | None
    cart: list[str]
    problem: str | None = None


@attrs.frozen
class CartRun:
    """
    One run of the session: where the carts were kept (C{memory} or the
    Redis's URL), the cookie the client got, and each step, those after the
    kill in C{afterKill}.
    """

    store: str
    cookie: str
    beforeKill: list[CartStep]
    afterKill: list[CartStep]

    @property
    def added(self) -> list[str]:
        """
        What the client added, in order.
        """
        return [step.item for step in self.beforeKill + self.afterKill if step.action == "add"]

    @property
    def final(self) -> list[str]:
        """
        The cart as the last answer showed it.
        """
        steps = [step for step in self.beforeKill + self.afterKill if step.problem is None]
        return steps[-1].cart if steps else []

    @property
    def split(self) -> bool:
        """
        Whether an answer before the kill showed less than the client had
        added by then: the cart was split between the backends.
        """
        added: list[str] = []
        for step in self.beforeKill:
            if step.action == "add":
                added.append(step.item)
            if step.problem is None and step.cart != added:
                return True
        return False


@attrs.frozen
class CartResult:
    """
    What the cart experiment saw: the run with carts in memory, and the
    run with carts in Redis.
    """

    memory: CartRun
    redis: CartRun


@inlineCallbacks
def _cartRequest(client, method: bytes, url: str, cookie: bytes | None) -> Steps:
    """
    C{method url} with the cart cookie; fires with the status code, the
    parsed JSON answer and the cart's C{Set-Cookie}, if any.
    """
    headers = Headers()
    if cookie is not None:
        headers.addRawHeader(b"Cookie", cookie)
    response = yield client.agent.request(method, url.encode("ascii"), headers)
    body = yield readBody(response)
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    setCookies = [
        value for value in response.headers.getRawHeaders(b"Set-Cookie", [])
        if value.startswith(CART_COOKIE + b"=")
    ]
    return response.code, answer, setCookies[0] if setCookies else None


@inlineCallbacks
def _step(client, url: str, action: str, item: str, cookie: bytes | None) -> Steps:
    """
    One step of the session: fires with the L{CartStep} and the
    C{Set-Cookie} of its answer.
    """
    if action == "add":
        method, target = b"POST", url + "cart/add?item=" + item
    else:
        method, target = b"GET", url + "cart"
    try:
        code, answer, setCookie = yield _cartRequest(client, method, target, cookie)
    except Exception as e:
        return CartStep(action, item, None, [], "%s: %s" % (type(e).__name__, e)), None
    backend = answer.get("backend") if isinstance(answer, dict) else None
    cart = answer.get("cart") if isinstance(answer, dict) else None
    if code != 200 or not isinstance(cart, list):
        return CartStep(action, item, backend, [], "status %d" % (code,)), setCookie
    return CartStep(action, item, backend, [str(each) for each in cart]), setCookie


@inlineCallbacks
def _run(demo, store: str) -> Steps:
    """
    Play L{SESSION} with two fresh backend processes, A and B, keeping their
    carts in C{store}, behind a fresh manualb, round robin; fires with the
    L{CartRun}.
    """
    backendA = demo.backend(demo.backendA.name, store)
    backendB = demo.backend(demo.backendB.name, store)
    addresses = yield gatherResults([backendA.start(), backendB.start()], consumeErrors=True)
    balancer, url = yield demo.startBalancer(addresses)
    client = demo.client()
    cookie: bytes | None = None
    setCookie = b""
    before: list[CartStep] = []
    after: list[CartStep] = []
    steps = before
    for action, item in SESSION:
        if (action, item) == KILL:
            yield backendA.kill()
            steps = after
            continue
        step, answered = yield _step(client, url, action, item, cookie)
        steps.append(step)
        if answered is not None and cookie is None:
            setCookie = answered
            cookie = answered.split(b";", 1)[0]
    yield backendB.kill()
    return CartRun(store, setCookie.decode("ascii", "replace"), before, after)


def _letter(backend: str | None) -> str:
    parts = (backend or "").split()
    return parts[1] if len(parts) > 1 and parts[0] == "Backend" else backend or "?"


def _cell(step: CartStep) -> str:
    """
    C{A: apple, bread}: who answered a step, and with what cart.
    """
    if step.problem is not None:
        return "%s: failed (%s)" % (_letter(step.backend), step.problem)
    return "%s: %s" % (_letter(step.backend), ", ".join(step.cart) or "(empty)")


def _label(step: CartStep) -> str:
    return "add " + step.item if step.action == "add" else "view cart"


def _table(result: CartResult, say: Say) -> None:
    """
    Print the two runs side by side, a step a line.
    """
    memory, redis = result.memory, result.redis
    pairs = list(zip(memory.beforeKill, redis.beforeKill))
    after = list(zip(memory.afterKill, redis.afterKill))
    width = max(len(_cell(step)) for step, _ in pairs + after) + 3
    width = max(width, len("carts in memory") + 3)
    say("   Happened: %-14s%-*s%s" % ("", width, "carts in memory", "carts in Redis"))
    for left, right in pairs:
        say("             %-10s -> %-*s%s" % (_label(left), width, _cell(left), _cell(right)))
    say("             Backend A killed (SIGKILL)")
    for left, right in after:
        say("             %-10s -> %-*s%s" % (_label(left), width, _cell(left), _cell(right)))


def _kept(run: CartRun) -> str:
    """
    C{3 of 4 items kept (lost: apple)}.
    """
    added, final = run.added, run.final
    lost = [item for item in added if item not in final]
    text = "%d of %d items kept" % (len(added) - len(lost), len(added))
    return text + (" (lost: %s)" % (", ".join(lost),) if lost else "")


@inlineCallbacks
def shoppingCarts(demo, say: Say, number: int = 5) -> Steps:
    """
    Experiment C{number}, the article's last lesson: the client's session
    (L{SESSION}) played with carts in memory, then in the demo's Redis
    (C{demo.redis}, a started L{RedisProcess}).  Fires with a
    L{CartResult}, or L{None} when the demo has no Redis
    (C{demo.redisProblem} says why), after saying it is skipped.
    """
    say("%d. Sticky sessions are a patch; external state (Redis) is the solution" % (number,))
    redis = demo.redis
    if redis is None:
        say("   Skipped:  %s." % (demo.redisProblem,))
        return None
    _paragraph(
        say,
        "Done:",
        "Backends A and B keep a shopping cart for each client, under a session "
        "cookie they set.  Played twice, each time with two fresh backend "
        "processes behind a manualb, round robin, no stickiness: first with the "
        "carts in each backend's own memory (--cart memory), then in the demo's "
        "Redis (--cart %s).  One client %s." % (redis.url, _story()),
    )
    memory = yield _run(demo, "memory")
    stored = yield _run(demo, redis.url)
    result = CartResult(memory, stored)
    _table(result, say)
    say("   Meaning:  in memory each backend keeps its own part of the cart: it is split")
    say("             from the second request on, and what A held died with A.  Sticky")
    say("             sessions (3.) would hide the split, but not the loss.  In Redis")
    say("             every backend serves the same cart, so the balancer may send a")
    say("             client anywhere and a backend may die: the state is outside both.")
    _paragraph(
        say,
        "So:",
        "with Redis, %s through the kill; in memory, %s%s."
        % (_kept(stored), "the cart split before the kill, and " if memory.split else "",
           _kept(memory)),
    )
    return result


def _paragraph(say: Say, heading: str, text: str) -> None:
    """
    Print C{text} under C{heading}, wrapped as the demo's other lines are.
    """
    lines = textwrap.wrap(text, 80 - 13, break_on_hyphens=False, break_long_words=False)
    for index, line in enumerate(lines):
        say("   %-10s%s" % (heading if index == 0 else "", line))


def _story() -> str:
    """
    What the client of L{SESSION} does, in words.
    """
    parts: list[list[str]] = [[]]
    for action, item in SESSION:
        if (action, item) == KILL:
            parts.append([])
        else:
            parts[-1].append("adds " + item if action == "add" else "looks at its cart")
    return "; Backend A is killed (SIGKILL); the client ".join(map(", ".join, parts))

