"""
The headers a proxy must rewrite on the way through.

Hop-by-hop headers describe one connection and die with it (RFC 9110,
section 7.6.1): they are removed in both directions, together with every
header that C{Connection} names.  Towards the backend manualb tells it who
the client is with C{X-Forwarded-For}, C{X-Forwarded-Proto},
C{X-Forwarded-Host} and C{Via}.

A protocol upgrade (WebSocket, RFC 9110 section 7.8) is the exception: for
a request that asks for one, C{Upgrade} and C{Connection: upgrade} go on to
the backend, and come back with its C{101 Switching Protocols}.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from twisted.web.http_headers import Headers

HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
)

# Headers the proxy writes itself towards the backend.
_REWRITTEN = frozenset(
    [
        b"content-length",
        b"expect",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"via",
    ]
)

# The request id, which the proxy sends in place of the client's.
_REQUEST_ID = frozenset([b"x-request-id"])

# What a client's Connection header cannot make the proxy drop: the headers
# the proxy must send.
_PROTECTED = _REWRITTEN | frozenset([b"host"])

# The headers whose names a client might spell with "_" to slip one past a
# backend that folds "_" into "-" (as CGI, PHP and WSGI do): such a header
# is dropped, as nginx drops every name with "_" (underscores_in_headers).
_ALIASED = HOP_BY_HOP | _PROTECTED | frozenset([b"forwarded", b"x-real-ip", b"x-request-id"])

# nginx's proxy_hide_header defaults: the proxy answers with its own.
_HIDDEN_RESPONSE = frozenset([b"server", b"date"])

VIA_NAME = b"manualb"

# What a protocol upgrade keeps of the hop-by-hop headers.
_UPGRADE_HEADERS = frozenset([b"upgrade", b"connection"])

# What the proxy drops of every backend response's headers.
_DROPPED_RESPONSE = HOP_BY_HOP | _HIDDEN_RESPONSE

# What the proxy drops of the client's headers; with the request id it sends.
_DROPPED = HOP_BY_HOP | _REWRITTEN
_DROPPED_ID = _DROPPED | _REQUEST_ID


def connectionTokens(values: Iterable[bytes] | None) -> frozenset[bytes]:
    """
    The lower-cased header names listed by C{Connection} header values.
    """
    if not values:
        return frozenset()
    return frozenset(map(bytes.strip, b",".join(values).lower().split(b",")))


_JOIN_LINE = b": ".join


def headerBlock(headers: Iterable[Sequence[bytes]]) -> bytes:
    """
    The header lines of C{(name, value)} pairs as they are sent: a
    C{name: value} line each, every one ended by CRLF.
    """
    # Joined in C, not in a loop of Python: every response's headers go
    # through here.
    block = b"\r\n".join(map(_JOIN_LINE, headers))
    return block + b"\r\n" if block else block


def requestHead(
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    clientAddress: bytes,
    clientVersion: bytes,
    secure: bool,
    bodyLength: int | None,
    defaultHost: bytes,
    upgrade: bool = False,
    requestId: bytes = b"",
) -> bytes:
    """
    Serialise the request line and headers sent to the backend.

    @param headers: The client's header lines as C{(name, value)} pairs, in
        order.
    @param bodyLength: The length of the request body; C{None} to send it
        chunked, C{0} when there is none.
    @param defaultHost: The C{Host} to send when the client gave none
        (an HTTP/1.0 client).
    @param upgrade: The request asks for a protocol upgrade that the proxy
        passes on: its C{Upgrade} header is kept and C{Connection: upgrade}
        sent (every other hop-by-hop header is still removed).
    @param requestId: The request's id, sent in C{X-Request-Id} in place of
        any the client sent; when empty, the client's goes on.
    """
    dropped = _DROPPED_ID if requestId else _DROPPED
    if upgrade:
        kept = _UPGRADE_HEADERS
        dropped = dropped - kept
    else:
        kept = frozenset()
    forwardedFor: list[bytes] = []
    via: list[bytes] = []
    connection: list[bytes] = []
    host = None
    passed = []
    names = []
    for header in headers:
        lower = header[0].lower()
        # A name with "_" spelling one of these: replace() costs less than
        # a find() first ("in" would try b"_" as an integer, raising and
        # clearing an error).
        alias = lower.replace(b"_", b"-")
        if alias != lower and alias in _ALIASED:
            continue
        if lower in dropped or lower == b"connection":
            if lower == b"connection":
                connection.append(header[1])
            elif lower == b"x-forwarded-for":
                forwardedFor.append(header[1])
            elif lower == b"via":
                via.append(header[1])
            continue
        if host is None and lower == b"host":
            host = header[1]
        passed.append(header)
        names.append(lower)
    if connection:
        named = connectionTokens(connection) - kept - _PROTECTED
        if not named.isdisjoint(names):
            passed = [header for header, lower in zip(passed, names) if lower not in named]
    lines = [b"%s %s HTTP/1.1\r\n" % (method, target)]
    if host is None:
        host = defaultHost
        lines.append(b"Host: %s\r\n" % (host,))
    lines.append(headerBlock(passed))
    if upgrade:
        lines.append(b"Connection: upgrade\r\n")
    forwardedFor.append(clientAddress)
    via.append(b"%s %s" % (clientVersion.split(b"/", 1)[-1], VIA_NAME))
    lines.append(
        b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\n"
        b"Via: %s\r\n"
        % (b", ".join(forwardedFor), b"https" if secure else b"http", host, b", ".join(via))
    )
    if requestId:
        lines.append(b"X-Request-Id: %s\r\n" % (requestId,))
    if bodyLength is None:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    elif bodyLength or method not in (b"GET", b"HEAD", b"DELETE", b"OPTIONS"):
        lines.append(b"Content-Length: %d\r\n" % (bodyLength,))
    lines.append(b"\r\n")
    return b"".join(lines)


def responseHeaders(
    headers: Iterable[tuple[bytes, bytes]],
    upgrade: bool = False,
    replaced: frozenset[bytes] = frozenset(),
) -> list[tuple[bytes, bytes]]:
    """
    The backend's response headers that go on to the client, every repeated
    value kept, in order.

    @param upgrade: The response is a C{101 Switching Protocols}: its
        C{Upgrade} and C{Connection} headers go on too.
    @param replaced: Lower-case names of headers the proxy sends itself in
        place of the backend's (C{x-request-id}, say).
    """
    dropped = _DROPPED_RESPONSE | replaced if replaced else _DROPPED_RESPONSE
    if upgrade:
        dropped = dropped - _UPGRADE_HEADERS
    kept = []
    names = []
    connection = []
    for header in headers:
        lower = header[0].lower()
        if lower == b"connection":
            connection.append(header[1])
        if lower not in dropped:
            kept.append(header)
            names.append(lower)
    if connection:
        # Its tokens name more headers to drop, wherever they came.
        named = connectionTokens(connection)
        if upgrade:
            named = named - _UPGRADE_HEADERS
        if not named.isdisjoint(names):
            return [header for header, lower in zip(kept, names) if lower not in named]
    return kept


def wantsUpgrade(headers: Headers) -> bool:
    """
    Whether request headers ask for a protocol upgrade: an C{Upgrade} header,
    and C{upgrade} among the C{Connection} tokens (RFC 9110, section 7.8).
    """
    if not headers.getRawHeaders(b"upgrade"):
        return False
    return b"upgrade" in connectionTokens(headers.getRawHeaders(b"connection"))
