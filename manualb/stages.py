"""
The stage chain of an HTTP request (L{IStage}): the view every front end
builds of a request (L{requestView}), the standard stages that answer
what the proxy answers itself before the URL map routes the rest
(L{defaultStages}), and the chain of a plain endpoint that redirects to
https (L{redirectStages}).  Both begin by giving the request its id
(L{RequestId}, or L{StandardChecks}, which runs the standard stages as one).
"""

from __future__ import annotations

import os
import re
from functools import partial
from itertools import chain, repeat, starmap
from typing import Any, Callable, Mapping, Sequence

from zope.interface import implementer

from manualb.config import ListenerConfig, RouteConfig
from manualb.interfaces import IStage
from manualb.rules import ALLOWED_METHODS
from manualb.urlmap import URLMap, normalizePath
from manualb.view import Answer, Passage, RequestView, normalizeHost

# As nginx: CONNECT would make the proxy a tunnel, TRACE echoes headers the
# proxy added (cross-site tracing).
_REFUSED_METHODS = frozenset([b"CONNECT", b"TRACE"])
_HSTS = b"Strict-Transport-Security"


def requestView(
    clientAddress: str,
    secure: bool,
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    localHost: str = "",
    trustedPeer: bool = False,
    started: float = 0.0,
) -> RequestView:
    """
    The L{RequestView} of an HTTP request, as every front end builds it: the
    path of C{target} normalised (L{normalizePath}; empty when it is not
    valid), the host of an absolute-form target, else of the first C{Host}
    header, normalised (L{normalizeHost}).

    @param clientAddress: As L{manualb.view.clientHost} gives it.
    @param headers: The request's header lines, in order.
    @param localHost: The address the client connected to, as
        L{manualb.view.clientHost} gives it.
    @param trustedPeer: Whether the socket peer is a trusted proxy.
    @param started: When the request was received, by the front end's
        clock.
    """
    path = normalizePath(target.partition(b"?")[0]) or b""
    host = None
    if target[:1] != b"/":
        # An absolute-form target names the host (RFC 9112, section 3.2.2).
        scheme, separator, rest = target.partition(b"://")
        if separator:
            end = len(rest)
            for delimiter in (b"/", b"?"):
                found = rest.find(delimiter)
                if found != -1:
                    end = min(end, found)
            host = rest[:end].rpartition(b"@")[2] or None
    if host is None:
        for name, value in headers:
            if name.lower() == b"host":
                host = value
                break
    return RequestView(
        clientAddress,
        secure,
        method,
        target,
        path,
        None if host is None else normalizeHost(host),
        headers,
        localHost,
        trustedPeer,
        started,
    )


# The stages of the standard chain, before the URL map.

_REQUEST_ID = b"X-Request-Id"
#: A request id believed from a trusted proxy: a token, short enough to log.
_SANE_ID = re.compile(rb"[A-Za-z0-9._~:+/=@-]{1,128}\Z")
#: Random bytes for this many ids are read at once.
_ID_BATCH = 256


def _idBatch() -> list[bytes]:
    """
    L{_ID_BATCH} new request ids, 16 random hex digits each, from one
    C{os.urandom} call.
    """
    digits = os.urandom(8 * _ID_BATCH).hex().encode("ascii")
    return [digits[start : start + 16] for start in range(0, len(digits), 16)]


#: Makes a new request id: 16 random hex digits.  The ids come from batches
#: (L{_idBatch}) by iterators written in C, so that taking one runs no
#: Python code but once every L{_ID_BATCH} ids.
newRequestId: Callable[[], bytes] = partial(
    next, chain.from_iterable(starmap(_idBatch, repeat(())))
)


@implementer(IStage)
class RequestId:
    """
    Gives the request its id (L{Passage.requestId}), which every response
    carries in C{X-Request-Id}, the backend gets in C{X-Request-Id}, the
    access log writes as C{$request_id} and the gatekeeper's refusals show:
    the one a trusted proxy sent in C{X-Request-Id} when it is a sane token
    (letters, digits and C{._~:+/=@-}, at most 128), else a new one.

    @param newId: Makes a new id (L{newRequestId}).
    """

    def __init__(self, newId: Callable[[], bytes] = newRequestId):
        self._newId = newId

    def handle(self, passage: Passage) -> Answer | None:
        _giveId(passage, self._newId)
        return None


def _giveId(passage: Passage, newId: Callable[[], bytes]) -> None:
    """
    Give the request its id (see L{RequestId}), made by C{newId} unless a
    trusted peer sent a sane one.
    """
    view = passage.view
    requestId = _trustedId(view) if view.trustedPeer else None
    if requestId is None:
        requestId = newId()
    passage.requestId = requestId
    passage.headers.append((_REQUEST_ID, requestId))


def _trustedId(view: RequestView) -> bytes | None:
    """
    The first C{X-Request-Id} of C{view}, a request of a trusted peer, when
    it is a sane token; else L{None}.
    """
    for name, value in view.headers:
        if name.lower() == b"x-request-id":
            if _SANE_ID.match(value) is not None:
                return value
            break
    return None


@implementer(IStage)
class StrictTransport:
    """
    Gives every response over TLS the listener's C{Strict-Transport-Security}
    header, in place of any the backend sends; none over plain HTTP, where
    it must be ignored (RFC 6797, section 8.1).
    """

    def handle(self, passage: Passage) -> Answer | None:
        hsts = passage.hsts
        if hsts is not None and passage.view.secure:
            passage.headers.append((_HSTS, hsts))
        return None


@implementer(IStage)
class Refusal:
    """
    Answers a request that the front end read but refuses (a bad header, a
    body declared too large): it is answered and logged as any other.
    """

    def handle(self, passage: Passage) -> Answer | None:
        refusal = passage.refusal
        if refusal is not None:
            return Answer(*refusal)
        return None


_OPTIONS = Answer(200, b"OK", b"", ((b"Allow", ALLOWED_METHODS),))
_NOT_ALLOWED = Answer(
    405,
    b"Method Not Allowed",
    b"A proxy does not pass this method on.",
    ((b"Allow", ALLOWED_METHODS),),
)
_BAD_PATH = Answer(400, b"Bad Request", b"The request path is not valid.")


@implementer(IStage)
class ServerOptions:
    """
    Answers C{OPTIONS *}, which asks about the server itself (RFC 9110,
    section 9.3.7), with the methods it passes on.
    """

    def handle(self, passage: Passage) -> Answer | None:
        if passage.view.target == b"*":
            return _OPTIONS
        return None


@implementer(IStage)
class RefusedMethods:
    """
    Refuses, with a 405, the methods a proxy does not pass on: C{CONNECT}
    would make it a tunnel, C{TRACE} echoes the headers it added.
    """

    def handle(self, passage: Passage) -> Answer | None:
        if passage.view.method in _REFUSED_METHODS:
            return _NOT_ALLOWED
        return None


@implementer(IStage)
class ValidPath:
    """
    Refuses, with a 400, a target without a valid path (one that climbs
    above the root, or is not a path).
    """

    def handle(self, passage: Passage) -> Answer | None:
        if not passage.view.path:
            return _BAD_PATH
        return None


@implementer(IStage)
class StandardChecks:
    """
    The six standard stages before the URL map as one, for a stage chain
    that runs them all: L{RequestId}, L{StrictTransport}, L{Refusal},
    L{ServerOptions}, L{RefusedMethods} and L{ValidPath}, in that order,
    with the same answers.  One call does for every request what six did.

    @param newId: Makes a new id (L{newRequestId}).
    """

    def __init__(self, newId: Callable[[], bytes] = newRequestId):
        self._newId = newId

    def handle(self, passage: Passage) -> Answer | None:
        _giveId(passage, self._newId)
        view = passage.view
        hsts = passage.hsts
        if hsts is not None and view.secure:
            passage.headers.append((_HSTS, hsts))
        refusal = passage.refusal
        if refusal is not None:
            return Answer(*refusal)
        if view.target == b"*":
            return _OPTIONS
        if view.method in _REFUSED_METHODS:
            return _NOT_ALLOWED
        if not view.path:
            return _BAD_PATH
        return None


def defaultStages(urlMap: URLMap, gatekeeper: IStage | None = None) -> list[IStage]:
    """
    The standard chain: the request id, the HSTS header, the front end's
    refusals, C{OPTIONS *}, refused methods, invalid paths (the six as one
    stage, L{StandardChecks}), then the URL map, which chooses the route (or
    answers 404).  A stage that refuses clients (the gatekeeper,
    C{manualb.gatekeeper.Gatekeeper}) goes just before the URL map.
    """
    stages: list[IStage] = [StandardChecks(), urlMap]
    if gatekeeper is not None:
        stages.insert(-1, gatekeeper)
    return stages


_MOVED_PAGE = (
    b"<html><head><title>301 Moved Permanently</title></head><body>"
    b"<h1>301 Moved Permanently</h1><hr><p>manualb</p></body></html>\n"
)
_NO_HOST = Answer(400, b"Bad Request", b"The request names no host to redirect to.")


@implementer(IStage)
class RedirectToHTTPS:
    """
    Answers every request with a 301 to the same URL over https, as nginx's
    C{return 301 https://$host$request_uri} does on a plain listener: the
    host the request names (without its port), else the address it came to;
    the target's path and query.

    A request for a route with C{redirect_https = off} (an ACME HTTP-01
    path) is not redirected: it goes on, routed, to the URL map after.

    @ivar port: The https port; 443 is left out of the URL.
    @ivar urlMap: The routes of the listener when some of them are not
        redirected, else L{None}.
    """

    def __init__(self, port: int = 443, urlMap: URLMap | None = None):
        self.port = port
        self.urlMap = urlMap

    def handle(self, passage: Passage) -> Answer | None:
        view = passage.view
        urlMap = self.urlMap
        if urlMap is not None:
            decision = passage.route or urlMap.decide(view.host, view.path)
            if decision is not None and not decision.route.config.redirect_https:
                passage.route = decision
                return None
        name = view.host
        if name is None:
            address = view.localHost
            if not address:
                return _NO_HOST
            name = (f"[{address}]" if ":" in address else address).encode("ascii")
        if self.port != 443:
            name += b":%d" % (self.port,)
        target = view.target
        if target[:1] != b"/":
            # An absolute-form target (or *): keep its path and query only.
            target = b"/" + target.partition(b"://")[2].partition(b"/")[2]
        return Answer(
            301,
            b"Moved Permanently",
            headers=((b"Location", b"https://" + name + target),),
            page=_MOVED_PAGE,
        )


def redirectStages(
    port: int = 443, gatekeeper: IStage | None = None, urlMap: URLMap | None = None
) -> list[IStage]:
    """
    The chain of a plain endpoint of a listener with C{redirect_https}: the
    front end's refusals, then the redirect to C{port}, which answers every
    other request in the URL map's place.  A stage that refuses clients
    (the gatekeeper) goes just before the redirect, as before the URL map.
    The request id comes first, as in L{defaultStages}.

    @param urlMap: The routes of the listener, when some of them are not
        redirected (C{redirect_https = off}): those are served, the URL map
        after the redirect routing them.
    """
    stages: list[IStage] = [RequestId(), Refusal(), RedirectToHTTPS(port, urlMap)]
    if gatekeeper is not None:
        stages.insert(2, gatekeeper)
    if urlMap is not None:
        stages += [RefusedMethods(), ValidPath(), urlMap]
    return stages


def listenerRedirectStages(
    listener: ListenerConfig,
    routes: Sequence[RouteConfig],
    pools: Mapping[str, Any],
    makeGatekeeper: Callable[[URLMap | None], IStage],
) -> list[IStage]:
    """
    The chain of the plain endpoints of C{listener}, a listener with
    C{redirect_https} (L{redirectStages}): with its routes, of C{routes},
    when some of them are not redirected.

    @param pools: The pools of the upstreams, by name.
    @param makeGatekeeper: Makes the gatekeeper of a chain with a URL map.
    """
    served = [
        route for route in routes if listener.routes is None or route.name in listener.routes
    ]
    urlMap = None
    if not all(route.redirect_https for route in served):
        urlMap = URLMap.fromConfig(served, pools)
    assert listener.redirect_https is not None
    return redirectStages(listener.redirect_https, makeGatekeeper(urlMap), urlMap)
