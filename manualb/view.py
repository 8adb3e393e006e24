"""
What the stages see of a request: a small, read-only L{RequestView} built
once by whichever front end received it (the HTTP exchange, the TCP stream
proxy, or another front end), plus the one place that turns a peer address
into the client's address and a C{Host} value into a host name.

This module is a leaf: it imports nothing of manualb's, so every stage may
use it.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterable, Sequence

import attrs


def clientHost(address: object) -> str:
    """
    The client's address as text, from a Twisted C{IAddress}: an IPv4-mapped
    IPv6 address (C{::ffff:192.0.2.1}, from a dual-stack listener) as its
    IPv4 one, so that the same client is one client whatever socket it came
    in on; the empty string for a peer without a host (a UNIX socket).
    """
    host = getattr(address, "host", None)
    if not host or not isinstance(host, str):
        return ""
    if host[:7].lower() == "::ffff:" and "." in host:
        return host[7:]
    return host


#: Hosts as clients send them, normalised: most requests name one of a few.
_HOSTS: dict[bytes, bytes | None] = {}
_HOSTS_KEPT = 1024
#: A name has at most 253 bytes, a port 6 more (and longer values, which
#: cannot be hosts, are not kept).
_HOST_LENGTH = 260


def normalizeHost(host: bytes | str | None) -> bytes | None:
    """
    Return the host of a C{Host} value (or a TLS server name) as it is
    compared: without its port, lower case, without a trailing dot, an IPv6
    literal in brackets and compressed; L{None} when there is no host (L{None}
    or empty, or text that is not ASCII).
    """
    if host.__class__ is bytes and len(host) <= _HOST_LENGTH:
        try:
            return _HOSTS[host]
        except KeyError:
            normal = _normalizeHost(host)
            if len(_HOSTS) >= _HOSTS_KEPT:
                # Many names (a scan): forget them all rather than keep
                # track of which were used last.
                _HOSTS.clear()
            _HOSTS[host] = normal
            return normal
    return _normalizeHost(host)


def _normalizeHost(host: bytes | str | None) -> bytes | None:
    if isinstance(host, str):
        try:
            host = host.encode("ascii")
        except UnicodeEncodeError:
            return None
    if not host:
        return None
    host = host.strip()
    if host[:1] == b"[":
        end = host.find(b"]")
        if end != -1:
            host = host[: end + 1]
        try:
            address = ipaddress.IPv6Address(host[1:-1].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            host = host.lower()
        else:
            return b"[" + address.compressed.encode("ascii") + b"]"
    else:
        host = host.split(b":", 1)[0].lower()
    if host[-1:] == b".":
        host = host[:-1]
    return host or None


def _splitCookies(headers: Iterable[bytes]) -> Iterable[tuple[bytes, bytes]]:
    for header in headers:
        for cookie in header.split(b";"):
            name, separator, value = cookie.strip().partition(b"=")
            if separator:
                yield name, value


@attrs.frozen
class RequestView:
    """
    A request as the stages see it, whatever front end received it.

    @ivar clientAddress: The client's address, as L{clientHost} gives it.
    @ivar secure: Whether the client came over TLS.
    @ivar method: The request method; empty for a TCP stream.
    @ivar target: The request target as the client sent it (origin or
        absolute form); empty for a TCP stream.
    @ivar path: The request path, percent-decoded and normalised (no dot
        segments, no query); empty for a TCP stream, and for a target that
        has no valid path (one that climbs above the root, say), which the
        HTTP stages refuse.
    @ivar host: The host the client asked for (of an absolute-form target,
        else of C{Host}), as L{normalizeHost} gives it; L{None} when none.
    @ivar headers: The request's header lines, names as sent, in order.
    @ivar localHost: The address the client connected to, as L{clientHost}
        gives it: the host of a request that names none.
    @ivar trustedPeer: Whether the socket peer is one of the trusted proxies
        (whose C{X-Request-Id} is then believed).
    @ivar started: When the front end received the request (by its clock),
        for C{$request_time}; 0 when it did not say.
    """

    clientAddress: str
    secure: bool = False
    method: bytes = b""
    target: bytes = b""
    path: bytes = b""
    host: bytes | None = None
    headers: Sequence[tuple[bytes, bytes]] = ()
    localHost: str = ""
    trustedPeer: bool = False
    started: float = 0.0

    @property
    def query(self) -> bytes:
        """
        The query of the target, without C{?}, as sent.
        """
        return self.target.partition(b"?")[2]

    def header(self, name: bytes) -> list[bytes]:
        """
        The values of every header line C{name} (any case), in order.
        """
        name = name.lower()
        return [value for key, value in self.headers if key.lower() == name]

    def cookie(self, name: bytes) -> bytes | None:
        """
        The value of the request's first cookie C{name}, or L{None}.
        """
        for cookieName, value in _splitCookies(self.header(b"cookie")):
            if cookieName == name:
                return value
        return None


@attrs.frozen
class Answer:
    """
    What a stage answers a request with itself, instead of passing it on.

    @ivar code: The status code.
    @ivar reason: The reason phrase.
    @ivar detail: The sentence of the short HTML page sent as the body; no
        body when empty.
    @ivar headers: Headers of this answer, as C{(name, value)} byte pairs
        (C{Allow}, C{Location}...), besides those the proxy always sends.
    @ivar page: The whole HTML body, in place of the page about C{detail};
        L{None} for that page.
    """

    code: int
    reason: bytes
    detail: bytes = b""
    headers: Sequence[tuple[bytes, bytes]] = ()
    page: bytes | None = None


@attrs.define(eq=False)
class Passage:
    """
    A request on its way through the stages (see C{manualb.interfaces.IStage}):
    what the front end received, and what the stages learned of it.  The
    exchange keeps it for the request's whole life, with its decision
    records, for the access log and whoever explains a decision.

    @ivar view: The request.
    @ivar refusal: C{(code, reason, detail)} when the front end refuses the
        request, which the first stage answers; else L{None}.
    @ivar hsts: The C{Strict-Transport-Security} value of the listener, or
        L{None}.
    @ivar headers: Response headers the stages add, as C{(name, value)}
        byte pairs: they go with any answer, and replace the backend's
        headers of the same name.
    @ivar route: The URL map's decision, a C{manualb.urlmap.RouteDecision},
        once it is made.
    @ivar selection: The pool's attempts for the request (a
        C{manualb.selection.Attempts}, whose C{record()} is the decision
        record of every server tried and why), once routed.
    @ivar requestId: The request's id (C{X-Request-Id}), once a stage gave
        it one; empty before.
    @ivar decisions: The gatekeeper's decision records (which rule, which
        bucket), in the order they were made.
    @ivar delay: Seconds the request waits before it goes to a backend (a
        rate limit that delays the excess, as nginx's C{limit_req}).
    @ivar bodyLimit: The largest request body for this request (the
        route's C{client_max_body_size}), or L{None} for the front end's.
    @ivar bodyCheck: Called with the first C{bodyCheckSize} bytes of the
        request body (fewer when the body is shorter) before any of it goes
        to a backend; returns an L{Answer} to refuse the request, or
        L{None} to let it go on.  L{None} when no stage inspects the body.
    @ivar bodyCheckSize: How much of the body C{bodyCheck} wants.
    @ivar local: How the proxy answers by itself on the listener (its
        C{Server} header and pages, a C{manualb.errorpages.LocalAnswers}),
        or L{None} for the defaults.
    """

    view: RequestView
    refusal: tuple[int, bytes, bytes] | None = None
    hsts: bytes | None = None
    headers: list[tuple[bytes, bytes]] = attrs.Factory(list)
    route: Any = None
    selection: Any = None
    requestId: bytes = b""
    decisions: list[Any] = attrs.Factory(list)
    delay: float = 0.0
    bodyLimit: int | None = None
    bodyCheck: Callable[[bytes], Answer | None] | None = None
    bodyCheckSize: int = 0
    local: Any = None
