"""
The admin API of a supervisor (C{workers = N}): the same resources as a
single process's (L{manualb.admin}), answered for the whole by asking each
worker's own admin API, which it serves on a private UNIX socket.

  - C{GET /api/status}: the workers' statuses merged
    (L{manualb.merging.mergeStatus}), with each worker's under C{workers};
  - C{GET /metrics}: their metrics merged (L{manualb.merging.mergeMetrics});
  - C{GET /api/explain/ID}: asked of each worker, answered by the one that
    served the request;
  - C{POST /api/upstreams/POOL/servers/HOST:PORT}: applied by every worker,
    and by every worker started later (a restarted one, or one of a
    reload), which the supervisor gives the changes made so far;
  - C{POST /api/reload}: the supervisor's reload;
  - C{GET /}: the dashboard, over the merged status.
"""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any, Callable

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from manualb.admin import admitted, jsonAnswer, notAllowed
from manualb.merging import mergeMetrics, mergeStatus

log = Logger()

#: How long the supervisor waits for a worker's admin API.
ASK_TIMEOUT = 5.0

#: The states of a worker whose admin API is asked.
_ASKED = ("running", "stopping")


@implementer(IAgentEndpointFactory)
class _UNIXEndpoints:
    def __init__(self, reactor, path: str) -> None:
        self.reactor = reactor
        self.path = path

    def endpointForURI(self, uri):
        return UNIXClientEndpoint(self.reactor, self.path)


def askWorker(
    reactor, path: str, method: bytes, target: bytes, body: bytes | None = None
) -> Deferred[tuple[int, bytes]]:
    """
    Ask the admin API on the UNIX socket C{path}.

    @return: Fires with the response's status and body; fails when there
        is no answer within L{ASK_TIMEOUT} seconds.
    """
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent = Agent.usingEndpointFactory(reactor, _UNIXEndpoints(reactor, path), pool)
    producer = None if body is None else FileBodyProducer(BytesIO(body))
    headers = Headers({b"Content-Type": [b"application/json"]}) if body is not None else None
    d = agent.request(method, b"http://worker" + target, headers, producer)

    def answered(response):
        return readBody(response).addCallback(lambda data: (response.code, data))

    d.addCallback(answered)
    d.addTimeout(ASK_TIMEOUT, reactor)
    return d


class FleetAdmin(Resource):
    """
    The supervisor's admin API, as a leaf resource: see the module's
    description.

    @ivar supervisor: The L{manualb.supervisor.Supervisor}: its workers,
        its reload, its admin token and the changes it replays.
    @ivar ask: Asks one worker's admin API: C{(path, method, target,
        body)} to a L{Deferred} of C{(status, body)}.
    """

    isLeaf = True

    def __init__(self, supervisor, reactor, ask: Callable[..., Deferred] | None = None) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.reactor = reactor
        self.ask = ask if ask is not None else (lambda *args: askWorker(reactor, *args))
        supervisor.readyHooks.append(self.replay)

    def _asked(self) -> list:
        return [
            worker
            for worker in self.supervisor.live()
            if worker.adminPath is not None and worker.state.value in _ASKED
        ]

    def _gather(self, method: bytes, target: bytes, body: bytes | None = None) -> Deferred[list]:
        """
        Ask every worker; fires with C{(worker, (status, body) or None)}
        for each, L{None} when it did not answer.
        """
        workers = self._asked()

        def one(worker):
            d = self.ask(worker.adminPath, method, target, body)
            d.addErrback(lambda failure: None)
            return d.addCallback(lambda answer: (worker, answer))

        return gatherResults([one(worker) for worker in workers])

    def replay(self, worker) -> None:
        """
        Give a worker that became ready the admin changes made so far.
        """
        if worker.adminPath is None or not self.supervisor.changes:
            return
        d: Deferred = Deferred()
        for target, body in list(self.supervisor.changes):
            d.addCallback(lambda ignored, t=target, b=body: self.ask(worker.adminPath, b"POST", t, b))
        d.addErrback(
            lambda failure: log.warn(
                "manualb supervisor: worker {number} did not take the admin changes: {reason}",
                number=worker.number,
                reason=failure.getErrorMessage(),
            )
        )
        d.callback(None)

    def render(self, request: Request) -> Any:
        segments, answer = admitted(request, self.supervisor.adminToken)
        if answer is not None:
            return answer
        method = request.method
        reading = method in (b"GET", b"HEAD")
        if segments == ["metrics"]:
            if not reading:
                return notAllowed(request, b"GET, HEAD")
            return self._later(request, self._metrics(request))
        if segments == ["api", "status"]:
            if not reading:
                return notAllowed(request, b"GET, HEAD")
            return self._later(request, self._status(request))
        if len(segments) == 3 and segments[:2] == ["api", "explain"]:
            if not reading:
                return notAllowed(request, b"GET, HEAD")
            return self._later(request, self._explain(request, request.path))
        if segments == ["api", "reload"]:
            if method != b"POST":
                return notAllowed(request, b"POST")
            applied, message = self.supervisor.reloadFile()
            return jsonAnswer(request, 200 if applied else 400, {"reloaded": applied, "message": message})
        if len(segments) == 5 and segments[:2] == ["api", "upstreams"] and segments[3] == "servers":
            if method != b"POST":
                return notAllowed(request, b"POST")
            body = request.content.read(65536)
            return self._later(request, self._change(request, request.path, body))
        return jsonAnswer(request, 404, {"error": "no such resource"})

    def _later(self, request: Request, answer: Deferred) -> object:
        """
        Write what C{answer} fires with (a L{bytes} body, its status and
        headers set) once it does.
        """
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda failure: gone.append(True))

        def write(body: bytes) -> None:
            if gone:
                return
            request.write(body)
            request.finish()

        def failed(failure) -> None:
            log.failure("manualb supervisor: admin request failed", failure)
            if not gone:
                request.write(jsonAnswer(request, 502, {"error": "the workers did not answer"}))
                request.finish()

        answer.addCallback(write).addErrback(failed)
        return NOT_DONE_YET

    def _metrics(self, request: Request) -> Deferred[bytes]:
        def merged(answers):
            texts = [
                answer[1].decode("utf-8", "replace")
                for worker, answer in answers
                if answer is not None and answer[0] == 200
            ]
            request.setHeader(b"Content-Type", b"text/plain; version=0.0.4; charset=utf-8")
            return mergeMetrics(texts).encode("utf-8")

        return self._gather(b"GET", b"/metrics").addCallback(merged)

    def _status(self, request: Request) -> Deferred[bytes]:
        def merged(answers):
            parts = []
            for worker, answer in answers:
                status = None
                if answer is not None and answer[0] == 200:
                    try:
                        status = json.loads(answer[1])
                    except ValueError:
                        status = None
                parts.append((worker.summary(), status))
            return jsonAnswer(request, 200, mergeStatus(parts, self.reactor.seconds()))

        return self._gather(b"GET", b"/api/status").addCallback(merged)

    def _explain(self, request: Request, target: bytes) -> Deferred[bytes]:
        def found(answers):
            for worker, answer in answers:
                if answer is not None and answer[0] == 200:
                    request.setHeader(b"Content-Type", b"application/json")
                    request.setHeader(b"Cache-Control", b"no-store")
                    return answer[1]
            return jsonAnswer(request, 404, {"error": "no recent request has this id"})

        return self._gather(b"GET", target).addCallback(found)

    def _change(self, request: Request, target: bytes, body: bytes) -> Deferred[bytes]:
        def applied(answers):
            answered = [answer for worker, answer in answers if answer is not None]
            if not answered:
                return jsonAnswer(request, 502, {"error": "no worker answered"})
            failed = [answer for answer in answered if answer[0] != 200]
            code, data = (failed or answered)[0]
            if not failed:
                self.supervisor.changes.append((target, body))
            request.setResponseCode(code)
            request.setHeader(b"Content-Type", b"application/json")
            request.setHeader(b"Cache-Control", b"no-store")
            return data

        return self._gather(b"POST", target, body).addCallback(applied)
