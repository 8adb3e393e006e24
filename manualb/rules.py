"""
What the proxy lets through of a request, over HTTP/1.1 and HTTP/2 alike
(RFC 9110, 9112 and 9113, read as strictly as nginx reads them), and the
page it answers a refusal with.
"""

from __future__ import annotations

import re

from twisted.web.http_headers import Headers

from manualb._version import __version__
from manualb.config import GatekeeperConfig

SERVER_NAME = b"manualb/" + __version__.encode("ascii")

# The largest Content-Length that HTTP implementations can be trusted to
# agree on (a signed 64-bit count).
MAX_CONTENT_LENGTH = 2**63 - 1
# nginx's parser: methods are upper-case letters, digits, "_" and "-"; a
# lower-case "get" or "trace" is refused rather than taken for another
# method or passed on as one.
METHOD = re.compile(rb"[A-Z0-9_-]+")
# A request target: visible ASCII only, no fragment.
TARGET = re.compile(rb"[\x21-\x22\x24-\x7e]+")
# Controls other than HTAB, and DEL, have no place in a header field (RFC
# 9110, 5.5); Twisted checks NUL, CR and LF only.
CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+;=%-]*)(?::[0-9]*)?"
)


#: The methods nearly every request has, known to match L{METHOD}: looked
#: up rather than matched.
_COMMON_METHODS = frozenset([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"])

#: Host header values found valid (L{HOST}), so that a site's few names are
#: matched once, not on every request; emptied when it holds
#: L{_VALID_HOSTS_LIMIT}, so that no client can make it grow.
_validHosts: set[bytes] = set()
_VALID_HOSTS_LIMIT = 256


def validHost(host: bytes) -> bool:
    """
    Whether C{host} is a valid C{Host} header value (L{HOST}).
    """
    if host in _validHosts:
        return True
    if HOST.fullmatch(host) is None:
        return False
    if len(_validHosts) >= _VALID_HOSTS_LIMIT:
        _validHosts.clear()
    _validHosts.add(host)
    return True


#: What the proxy answers C{Allow} with (to 405, and to C{OPTIONS *}).
ALLOWED_METHODS = b"GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"

#: The reason phrases of the refusals the front ends answer themselves, as
#: RFC 9110 names them.
REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def errorBody(code: int, title: bytes, detail: bytes) -> bytes:
    """
    The short HTML page of an error answered by the proxy itself.
    """
    return (
        b"<html><head><title>%d %s</title></head><body><h1>%d %s</h1><p>%s</p>"
        b"<hr><p>manualb</p></body></html>\n" % (code, title, code, title, detail)
    )


#: The C{Server} of C{server_tokens = off}: no version.
SERVER_NAME_ONLY = b"manualb"


def serverNameOf(site: object) -> bytes:
    """
    The C{Server} that C{site} answers with (its C{serverName}), or
    L{SERVER_NAME}.
    """
    return getattr(site, "serverName", SERVER_NAME)


def errorResponse(code: int, detail: bytes, server: bytes = SERVER_NAME) -> bytes:
    """
    A whole HTTP/1.1 error response, page included, after which the
    connection closes: for a request that could not be read, or a
    connection that cannot be served; C{server} is its C{Server}.
    """
    title = REASONS[code]
    body = errorBody(code, title, detail)
    return (
        b"HTTP/1.1 %d %s\r\nServer: %s\r\nContent-Type: text/html; charset=utf-8"
        b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
        % (code, title, server, len(body), body)
    )


def requestProblem(
    method: bytes,
    target: bytes,
    version: bytes,
    headers: Headers,
    gatekeeper: GatekeeperConfig,
) -> tuple[int, bytes, bytes] | None:
    """
    Why a request whose head has been read must be refused, as C{(status,
    title, detail)}, or L{None} when it may go on.
    """
    if method not in _COMMON_METHODS and METHOD.fullmatch(method) is None:
        return 400, b"Bad Request", b"The request method is not valid."
    if TARGET.fullmatch(target) is None or not (
        target[:1] == b"/"
        or target[:7].lower() == b"http://"
        or target[:8].lower() == b"https://"
        or (target == b"*" and method == b"OPTIONS")
    ):
        return 400, b"Bad Request", b"The request target is not valid."
    hosts = headers.getRawHeaders(b"host") or []
    if len(hosts) > 1 or (version == b"HTTP/1.1" and not hosts):
        return 400, b"Bad Request", b"The request needs exactly one Host header."
    if hosts and not validHost(hosts[0]):
        return 400, b"Bad Request", b"The Host header is not valid."
    lengths = headers.getRawHeaders(b"content-length") or []
    if lengths:
        length = int(lengths[0])
        if length > MAX_CONTENT_LENGTH:
            return 400, b"Bad Request", b"The Content-Length is not valid."
        limit = gatekeeper.client_max_body_size
        if limit and length > limit:
            return (
                413,
                b"Content Too Large",
                b"The request body is larger than this server accepts.",
            )
    return None
