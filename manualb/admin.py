"""
The admin listener: a small JSON API over the running load balancer, served
on its own endpoint (C{[manualb] admin = tcp:9000:interface=127.0.0.1}).

  - C{GET /api/status}: every upstream and server: its state (C{up},
    C{down}, C{drain}, C{backup}), health phase with the latest reason and
    its recent changes, configured and current weight (and the effective
    one, less during a C{slow_start}), requests in flight, attempts and
    failures, and latency percentiles over its latest attempts.
  - C{POST /api/upstreams/POOL/servers/HOST:PORT} with C{{"state": "drain"}}
    (or C{"up"}, C{"down"}) or C{{"weight": N}}: changes the server live,
    until the process restarts (the file's values come back then).
  - C{GET /api/explain/REQUEST_ID}: why a recent request went where it
    went, from its decision records (see L{RecentRequests}).
  - C{GET /}: the live dashboard (L{manualb.dashboard}), served without
    the token: it holds no data, and asks for the token the API needs.

When C{admin_token_file} is set, every request must carry C{Authorization:
Bearer TOKEN}, with the token the file holds; a bind that is not on the
loopback interface requires one.
"""

from __future__ import annotations

import json
import marshal
from collections import deque
from hmac import compare_digest
from typing import Callable, Mapping
from urllib.parse import unquote

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from manualb.config import ConfigError
from manualb.dashboard import renderDashboard
from manualb.endpoints import endpointProblem
from manualb.health import HealthEvent
from manualb.selection import ADMIN_STATES, Pool, Server, traceRecord
from manualb.syntax import Section, readableFile
from manualb.termination import splitDescription
from manualb.view import Passage, RequestView

log = Logger()

#: How many finished requests L{RecentRequests} keeps.
RECENT_REQUESTS = 10000
#: How many of a server's latest health changes the status shows.
HISTORY_SHOWN = 10
#: The longest C{X-Manualb-Explain} header value; a longer record is cut
#: to what fits, and says so.
EXPLAIN_HEADER_LIMIT = 4096
_PERCENTILES = (50, 90, 99)
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


# The configuration keys.


def _interface(description: str) -> str | None:
    """
    The interface a C{tcp:} or C{tcp6:} endpoint string binds, or L{None}
    when it names none (every interface).
    """
    args, kwargs = splitDescription(description)
    if "interface" in kwargs:
        return kwargs["interface"]
    return args[2] if len(args) > 2 and args[0] == "tcp" else None


def isLoopback(description: str) -> bool:
    """
    Whether the endpoint string C{description} can only be reached from
    this machine: a UNIX socket, or TCP on a loopback address.
    """
    kind = splitDescription(description)[0][0].strip().lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6"):
        return False
    interface = _interface(description)
    return interface is not None and (interface.startswith("127.") or interface in _LOOPBACK)


def withLoopback(description: str) -> str:
    """
    C{description} bound to the loopback interface when it is C{tcp:} or
    C{tcp6:} without an interface: the admin API is local unless its line
    says otherwise.
    """
    args, kwargs = splitDescription(description)
    kind = args[0].strip().lower()
    if kind in ("tcp", "tcp6") and _interface(description) is None:
        return description + (":interface=127.0.0.1" if kind == "tcp" else r":interface=\:\:1")
    return description


def parseAdminKeys(section: Section, directory: str) -> tuple[str | None, str | None]:
    """
    The C{admin} endpoint (with L{withLoopback}) and the absolute path of
    C{admin_token_file} of C{[manualb]}.  An endpoint that others than this
    machine can reach needs a token file.

    @param directory: Where a relative C{admin_token_file} is.
    """
    description = section.single("admin")
    tokenFile = section.single("admin_token_file")
    if tokenFile is not None:
        try:
            tokenFile = readableFile(tokenFile, directory)
        except ValueError as e:
            raise section.error("admin_token_file", str(e)) from None
    if description is None:
        return None, tokenFile
    problem = endpointProblem(description)
    if problem is not None:
        raise section.error("admin", f"cannot parse endpoint {description!r} ({problem})")
    description = withLoopback(description)
    if tokenFile is None and not isLoopback(description):
        raise section.error(
            "admin",
            f"endpoint {description!r} is not on the loopback interface: set "
            f"admin_token_file to a file holding the token its clients must send",
        )
    return description, tokenFile


def readToken(source: str, path: str) -> bytes:
    """
    The bearer token in the file at C{path}: its first line, stripped.

    @param source: The configuration file, for the error.
    @raise ConfigError: When the file cannot be read or holds no token.
    """
    try:
        with open(path, "rb") as tokenFile:
            token = tokenFile.read().strip().split(b"\n", 1)[0].strip()
    except OSError as e:
        raise ConfigError(
            source, "manualb", "admin_token_file", f"cannot read {path}: {e.strerror or e}"
        ) from None
    if not token:
        raise ConfigError(source, "manualb", "admin_token_file", f"{path} holds no token")
    return token


# What each request decided.


def _trusted(view: RequestView) -> bool:
    host = view.clientAddress
    return view.trustedPeer or host.startswith("127.") or host == "::1"


#: The largest request body the admin API reads (a change is a few bytes).
MAX_BODY = 64 * 1024
#: How long an idle admin connection stays open, and a request may take to
#: arrive.
ADMIN_TIMEOUT = 75.0


class _AdminRequest(Request):
    """
    A request to the admin API, held to L{MAX_BODY}: a larger body, declared
    or streamed, drops the connection before it is read (the API's bodies
    are a few bytes of JSON).
    """

    _received = 0

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self.channel.transport.abortConnection()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > MAX_BODY:
            self.channel.transport.abortConnection()
            return
        super().handleContentChunk(data)


def adminSite(resource: Resource, reactor: IReactorTime) -> Site:
    """
    The site of the admin listener: C{resource} behind requests held to
    L{MAX_BODY} and connections closed after L{ADMIN_TIMEOUT} idle.
    """
    site = Site(resource, timeout=ADMIN_TIMEOUT, reactor=reactor)
    site.requestFactory = _AdminRequest
    return site


class RecentRequests:
    """
    The decision records of the last L{RECENT_REQUESTS} finished requests,
    in a bounded ring, for C{GET /api/explain/ID}.

    The exchange hands over (L{keep}) each request it logs, of which the
    ring keeps only what L{explain} reads (L{flatten}): nothing rendered,
    the JSON is made only when someone asks, and neither the request nor
    its headers stay alive for it.  Records are serialised with L{marshal}
    by batches of L{BATCH}: kept as nested tuples, the 10,000 records of a
    busy ring stayed in the garbage collector's sight for several full
    collections each, which showed in the latency of every request; one
    record at a time, C{marshal} cost more than the rest of the record,
    and a batch writes the names and picks its records share once.  A
    batch is a string the collector never looks at, and so is the ring's
    entry for a record: its id, its batch's number and its place in it.

    @ivar entries: The ring, oldest first, of C{(requestId, batch,
        index)}: the record is the C{index}th of the batch numbered
        C{batch}.
    """

    #: How many records are serialised together.
    BATCH = 64

    def __init__(self, size: int = RECENT_REQUESTS):
        self.entries: deque[tuple] = deque(maxlen=size)
        self._append = self.entries.append
        # The batches serialised, by number, from the oldest an entry still
        # names; the records of the one being filled, and its number.
        self._batches: dict[int, bytes] = {}
        self._oldest = 0
        self._pending: list[tuple] = []
        self._batch = 0

    def keep(self, passage: Passage, status: int, finished: float, listener: str) -> None:
        """
        Keep the records of a finished request, C{passage}, answered with
        C{status} at C{finished} on C{listener}.
        """
        pending = self._pending
        self._append((passage.requestId, self._batch, len(pending)))
        pending.append(flatten(passage, status, finished, listener))
        if len(pending) >= self.BATCH:
            self._seal()

    def _seal(self) -> None:
        """
        Serialise the batch being filled, start the next one, and forget
        the batches no entry names any more.
        """
        self._batches[self._batch] = marshal.dumps(self._pending)
        self._pending = []
        self._batch += 1
        entries = self.entries
        first = entries[0][1] if entries else self._batch
        batches = self._batches
        while self._oldest < first:
            batches.pop(self._oldest, None)
            self._oldest += 1

    def resize(self, size: int) -> None:
        """
        Keep the last C{size} records from now on (the latest of those kept
        so far among them).
        """
        self.entries = deque(self.entries, maxlen=size)
        self._append = self.entries.append

    def find(self, requestId: bytes) -> dict | None:
        """
        The explanation of the latest request of id C{requestId}, or
        L{None} when none of those kept has it.
        """
        for kept, batch, index in reversed(self.entries):
            if kept == requestId:
                if batch == self._batch:
                    return explain(self._pending[index])
                return explain(marshal.loads(self._batches[batch])[index])
        return None

    def explainHeader(
        self, passage: Passage, status: int, listener: str, headers: list
    ) -> None:
        """
        Add C{X-Manualb-Explain} to C{headers}, the response's, when the
        request asks for it (C{X-Manualb-Explain: 1}) from a trusted
        address (a trusted proxy, or loopback): its explanation so far,
        compact JSON on one line, at most L{EXPLAIN_HEADER_LIMIT} bytes.
        """
        view = passage.view
        if not _trusted(view):
            return
        for name, value in view.headers:
            if len(name) == 17 and name.lower() == b"x-manualb-explain":
                if value.strip() == b"1":
                    break
        else:
            return
        record = explain(flatten(passage, status, None, listener))
        value = json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        if len(value) > EXPLAIN_HEADER_LIMIT:
            # Too long for a header: what identifies it, and where the whole
            # of it is.
            short = {
                "requestId": record["requestId"],
                "status": status,
                "truncated": "GET /api/explain/ID on the admin listener",
            }
            value = json.dumps(short, separators=(",", ":")).encode("ascii")
            value = value[:EXPLAIN_HEADER_LIMIT]
        # ensure_ascii escapes every control character: no CR or LF.
        headers.append((b"X-Manualb-Explain", value))


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace") if value is not None else None


def _selection(selection) -> dict:
    return {
        "strategy": selection.strategy,
        "key": selection.key,
        "candidates": [
            {
                "server": c.server,
                "weight": c.weight,
                "effectiveWeight": c.effectiveWeight,
                "health": c.health,
            }
            for c in selection.candidates
        ],
        "skipped": [{"server": s.server, "reason": s.reason.value} for s in selection.skipped],
        "chosen": selection.chosen,
    }


def flatten(passage: Passage, status: int, finished: float | None, listener: str) -> tuple:
    """
    What L{explain} needs of a request, C{passage}, answered with
    C{status} at C{finished} (or L{None} while it is answered) on
    C{listener}: plain values in tuples, with the pool's choices as the
    pool's L{manualb.selection.Attempts.trace}.
    """
    view = passage.view
    route = passage.route
    if route is not None:
        config = route.route.config
        route = (config.name, config.path, route.rule, route.group, route.path)
    decisions = passage.decisions
    selection = passage.selection
    return (
        passage.requestId,
        listener,
        view.clientAddress,
        view.method,
        view.target,
        view.host,
        view.started,
        status,
        finished,
        route,
        tuple([(d.rule, d.action, d.detail, d.status) for d in decisions]) if decisions else (),
        None if selection is None else selection.trace(),
    )


def explain(entry: tuple) -> dict:
    """
    The explanation of one request, from its L{flatten}ed records, as
    JSON-ready data: the listener and route (and the rule that chose it),
    the gatekeeper's decisions, and each attempt with the pick that chose
    its server (the candidates and their weights and health, the servers
    skipped and why, the key of the strategy), its outcome, cause and
    duration.
    """
    (
        requestId,
        listener,
        client,
        method,
        target,
        host,
        started,
        status,
        finished,
        route,
        decisions,
        trace,
    ) = entry
    record = {
        "requestId": _text(requestId),
        "listener": listener,
        "client": client,
        "method": _text(method),
        "target": _text(target),
        "host": _text(host),
        "status": status,
        "started": started or None,
        "finished": finished,
        "route": None,
        "gatekeeper": [
            {"rule": rule, "action": action, "detail": detail, "status": code}
            for rule, action, detail, code in decisions
        ],
        "upstream": None,
        "attempts": [],
        "stopped": None,
    }
    if route is not None:
        name, path, rule, group, backendPath = route
        record["route"] = {
            "name": name,
            "path": path,
            "rule": rule,
            "hostGroup": _text(group),
            "backendPath": _text(backendPath),
        }
    if trace is not None:
        selection = traceRecord(trace)
        record["upstream"] = selection.pool
        record["attempts"] = [
            {
                "server": attempt.server,
                "outcome": attempt.outcome.value if attempt.outcome is not None else None,
                "cause": attempt.cause,
                "duration": attempt.duration,
                "pick": _selection(attempt.selection),
            }
            for attempt in selection.attempts
        ]
        if selection.stopped is not None:
            record["stopped"] = {
                "reason": selection.stopped.value,
                "pick": _selection(selection.refused) if selection.refused else None,
            }
    return record


# What each server is doing.


def percentiles(samples) -> dict:
    """
    The 50th, 90th and 99th percentiles and the largest of C{samples}, in
    seconds (nearest rank), with their count.
    """
    ordered = sorted(samples)
    result: dict = {"samples": len(ordered)}
    for p in _PERCENTILES:
        result["p%d" % (p,)] = (
            ordered[max(0, -(-p * len(ordered) // 100) - 1)] if ordered else None
        )
    result["max"] = ordered[-1] if ordered else None
    return result


def _event(event: HealthEvent) -> dict:
    return {
        "time": event.time,
        "state": event.state,
        "reason": event.reason,
        "source": event.source,
    }


def serverStatus(server: Server, history: list[HealthEvent]) -> dict:
    """
    The status of C{server}; C{history} are its changes of state (its
    health's, and an operator's), oldest first.
    """
    return {
        "server": server.name,
        "state": server.state,
        "setBy": "admin" if server.adminState is not None else "file",
        "backup": server.config.backup,
        "health": {
            "phase": server.health.phase.value,
            "reason": next(
                (event.reason for event in reversed(history) if event.source == "health"), None
            ),
            "history": [_event(event) for event in history[-HISTORY_SHOWN:]],
        },
        "weight": {
            "configured": server.configured.weight,
            "current": server.config.weight,
            "effective": server.weight,
        },
        "active": server.active,
        "requests": server.requests,
        "failures": server.failures,
        "latency": percentiles(server.latencies),
    }


def poolStatus(pool: Pool) -> dict:
    """
    The status of C{pool} and each of its servers.
    """
    history: dict[str, list[HealthEvent]] = {}
    for event in pool.monitor.history:
        history.setdefault(event.server, []).append(event)
    return {
        "strategy": str(getattr(pool.balancer, "name", type(pool.balancer).__name__)),
        "probing": pool.monitor.probing,
        "servers": [serverStatus(server, history.get(server.name, [])) for server in pool.servers],
    }


# The API.


class AdminResource(Resource):
    """
    The admin API, as a leaf resource: see the module's description.

    @ivar pools: The upstream pools by name.
    @ivar recent: The decision records of recent requests.
    @ivar token: The bearer token every request must carry, or L{None}.
    @ivar metrics: Serves C{/metrics} (Prometheus), or L{None}.
    @ivar reload: Reads the configuration file again and applies it, for
        C{POST /api/reload}: returns whether it did, and its log line; or
        L{None} when nothing reloads.
    @ivar shared: The state shared with other instances
        (L{manualb.state.SharedState}): it publishes the changes made here,
        and the status shows it; or L{None}.
    """

    isLeaf = True

    def __init__(
        self,
        pools: Mapping[str, Pool],
        recent: RecentRequests,
        reactor: IReactorTime,
        token: bytes | None = None,
        metrics: Resource | None = None,
    ):
        super().__init__()
        self.pools = pools
        self.recent = recent
        self.reactor = reactor
        self.token = token
        self.metrics = metrics
        self.reload: Callable[[], tuple[bool, str]] | None = None
        self.shared = None

    def render(self, request: Request) -> bytes:
        segments, answer = admitted(request, self.token)
        if answer is not None:
            return answer
        method = request.method
        if segments == ["metrics"] and self.metrics is not None:
            return self.metrics.render(request)
        if segments == ["api", "status"]:
            if method not in (b"GET", b"HEAD"):
                return notAllowed(request, b"GET, HEAD")
            return jsonAnswer(request, 200, self.status())
        if len(segments) == 3 and segments[:2] == ["api", "explain"]:
            if method not in (b"GET", b"HEAD"):
                return notAllowed(request, b"GET, HEAD")
            found = self.recent.find(segments[2].encode("utf-8"))
            if found is None:
                return jsonAnswer(request, 404, {"error": "no recent request has this id"})
            return jsonAnswer(request, 200, found)
        if segments == ["api", "reload"] and self.reload is not None:
            if method != b"POST":
                return notAllowed(request, b"POST")
            applied, message = self.reload()
            return jsonAnswer(request, 200 if applied else 400, {"reloaded": applied, "message": message})
        if len(segments) == 5 and segments[:2] == ["api", "upstreams"] and segments[3] == "servers":
            if method != b"POST":
                return notAllowed(request, b"POST")
            return self._change(request, segments[2], segments[4])
        return jsonAnswer(request, 404, {"error": "no such resource"})

    def status(self) -> dict:
        """
        The status of every pool, by name.
        """
        status = {
            "time": self.reactor.seconds(),
            "upstreams": {name: poolStatus(pool) for name, pool in self.pools.items()},
        }
        if self.shared is not None:
            self.shared.addStatus(status)
        if getattr(self, "acme", None) is not None:
            status["acme"] = self.acme.statusOf()
        return status

    def _change(self, request: Request, poolName: str, serverName: str) -> bytes:
        pool = self.pools.get(poolName)
        if pool is None:
            return jsonAnswer(request, 404, {"error": "no upstream %r" % (poolName,)})
        server = pool.server(serverName)
        if server is None:
            return jsonAnswer(
                request, 404, {"error": "upstream %r has no server %r" % (poolName, serverName)}
            )
        try:
            change = json.loads(request.content.read(65536).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return jsonAnswer(request, 400, {"error": "the body must be a JSON object"})
        problem = _changeProblem(change)
        if problem is not None:
            return jsonAnswer(request, 400, {"error": problem})
        if "state" in change:
            server.setState(change["state"])
        if "weight" in change:
            server.setWeight(change["weight"])
        pool.serversChanged()
        if self.shared is not None:
            self.shared.serverChanged(poolName, server.name, change)
        client = request.getClientAddress()
        pool.monitor.log.note(
            server.name,
            server.state,
            "admin API (%s): %s" % (getattr(client, "host", "-"), _described(change)),
        )
        log.info(
            "admin: upstream {pool} server {server} changed by {client}: {change}; "
            "now {state}, weight {weight} (until the process restarts)",
            pool=poolName,
            server=serverName,
            client=request.getClientAddress().host if request.getClientAddress() else "-",
            change=json.dumps(change, sort_keys=True),
            state=server.state,
            weight=server.config.weight,
        )
        history = [event for event in pool.monitor.history if event.server == server.name]
        return jsonAnswer(request, 200, serverStatus(server, history))


def _described(change: dict) -> str:
    """
    A change of the admin API, in words.
    """
    return ", ".join("%s %s" % (key, change[key]) for key in sorted(change))


def admitted(request: Request, token: bytes | None) -> tuple[list[str], bytes | None]:
    """
    The path of a request to an admin API, in segments, and what it is
    answered at once: the dashboard at C{/} (which holds no data, and asks
    for the token itself), a 405 for another method there, or a 401 when
    C{token} is set and the request does not carry it as a bearer token;
    or L{None} when the API goes on.
    """
    segments = [unquote(part.decode("utf-8", "replace")) for part in request.postpath]
    if segments and segments[-1] == "":
        segments.pop()
    if not segments:
        if request.method not in (b"GET", b"HEAD"):
            return segments, notAllowed(request, b"GET, HEAD")
        return segments, renderDashboard(request)
    if token is not None:
        scheme, _, given = (request.getHeader(b"authorization") or b"").partition(b" ")
        if not (compare_digest(given.strip(), token) and scheme.lower() == b"bearer"):
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="manualb"')
            return segments, jsonAnswer(request, 401, {"error": "a valid bearer token is required"})
    return segments, None


def _changeProblem(change: object) -> str | None:
    """
    What is wrong with the body of a change, or L{None}.
    """
    if not isinstance(change, dict) or not change:
        return 'expected a JSON object such as {"state": "drain"} or {"weight": 5}'
    unknown = sorted(set(change) - {"state", "weight"})
    if unknown:
        return "unknown field %s: only state and weight can be changed" % (unknown[0],)
    if "state" in change and change["state"] not in ADMIN_STATES:
        return "state must be one of %s" % (", ".join(ADMIN_STATES),)
    if "weight" in change:
        weight = change["weight"]
        if type(weight) is not int or not 1 <= weight <= 1000000:
            return "weight must be a whole number from 1 to 1000000"
    return None


def notAllowed(request: Request, allowed: bytes) -> bytes:
    """
    A 405 that says which methods are C{allowed}.
    """
    request.setHeader(b"Allow", allowed)
    return jsonAnswer(request, 405, {"error": "method not allowed"})


def jsonAnswer(request: Request, code: int, data: object) -> bytes:
    """
    The answer C{code} with C{data} as its JSON body, never cached.
    """
    body = json.dumps(data, indent=1, sort_keys=True).encode("utf-8") + b"\n"
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Cache-Control", b"no-store")
    return body
