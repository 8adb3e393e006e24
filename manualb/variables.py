"""
Request values in nginx's C{$variable} syntax: C{hash $cookie_sid},
C{rate_key = $http_x_api_key}.  A key is literal text and variables,
concatenated, compiled once (L{parseHashKey}, L{parseKey}) into a function
that computes it for a request (a L{RequestView}).

This module imports only L{manualb.view}.
"""

from __future__ import annotations

import re
from typing import Callable

from manualb.view import RequestView

__all__ = ["parseHashKey", "parseKey", "VARIABLES"]

_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z0-9_]*))")

#: The variable that names the request's route, known only where the route
#: is (L{parseKey}).
_ROUTE = "route"


def _splitTarget(uri: bytes) -> tuple[bytes | None, bytes]:
    """
    Split a request target into the authority of an absolute-form target
    (C{http://host/path}) or L{None}, and the path with its query.
    """
    if uri.startswith(b"/"):
        return None, uri
    scheme, separator, rest = uri.partition(b"://")
    if not separator:
        return None, uri
    authority, slash, path = rest.partition(b"/")
    return authority, slash + path


def clientAddress(view: RequestView) -> bytes:
    """
    The client's address as bytes (see L{manualb.view.clientHost}); empty
    for a client without one (a UNIX socket).
    """
    return view.clientAddress.encode("ascii", "replace")


def _requestURI(view: RequestView) -> bytes:
    return _splitTarget(view.target)[1]


def _uri(view: RequestView) -> bytes:
    return _requestURI(view).partition(b"?")[0]


def _args(view: RequestView) -> bytes:
    return view.query


def _host(view: RequestView) -> bytes:
    """
    As nginx's C{$host}: the host of an absolute-form target, else of the
    C{Host} header, lower-cased and without the port (the view's C{host}).
    """
    return view.host or b""


def _header(name: str) -> Callable[[RequestView], bytes]:
    headerName = name.replace("_", "-").encode("ascii")
    separator = b"; " if headerName == b"cookie" else b", "

    def header(view: RequestView) -> bytes:
        return separator.join(view.header(headerName))

    return header


def _cookie(name: str) -> Callable[[RequestView], bytes]:
    cookieName = name.encode("ascii")

    def cookie(view: RequestView) -> bytes:
        return view.cookie(cookieName) or b""

    return cookie


def _argument(name: str) -> Callable[[RequestView], bytes]:
    argumentName = name.encode("ascii")

    def argument(view: RequestView) -> bytes:
        for pair in view.query.split(b"&"):
            pairName, _, value = pair.partition(b"=")
            if pairName == argumentName:
                return value
        return b""

    return argument


#: The variables of a request, by name.
VARIABLES: dict[str, Callable[[RequestView], bytes]] = {
    "request_uri": _requestURI,
    "uri": _uri,
    "args": _args,
    "query_string": _args,
    "host": _host,
    "remote_addr": clientAddress,
}

_PREFIXES: dict[str, Callable[[str], Callable[[RequestView], bytes]]] = {
    "http_": _header,
    "cookie_": _cookie,
    "arg_": _argument,
}


def _variable(name: str, what: str, route: bool) -> Callable[[RequestView], bytes] | None:
    """
    The function computing variable C{name}; L{None} for C{$route} when
    C{route} allows it.
    """
    if name in VARIABLES:
        return VARIABLES[name]
    if route and name == _ROUTE:
        return None
    for prefix, makeGetter in _PREFIXES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            return makeGetter(name[len(prefix) :])
    known = [f"${variable}" for variable in VARIABLES]
    if route:
        known.append(f"${_ROUTE}")
    known += [f"${prefix}NAME" for prefix in _PREFIXES]
    raise ValueError(f"unknown variable ${name} in {what} (known: {', '.join(known)})")


def _parts(
    text: str, what: str, route: bool
) -> list[bytes | Callable[[RequestView], bytes] | None]:
    """
    The literal text (bytes) and variables (functions of a view; L{None}
    for C{$route}) of key C{text}, in order.
    """
    if not text:
        raise ValueError(f"the {what} is empty")
    parts: list[bytes | Callable[[RequestView], bytes] | None] = []
    position = 0
    for match in _VARIABLE.finditer(text):
        if match.start() > position:
            parts.append(text[position : match.start()].encode("utf-8"))
        name = match["braced"] if match["braced"] is not None else match["bare"]
        if not name:
            raise ValueError(f"a $ without a variable name in {what} {text!r}")
        parts.append(_variable(name, what, route))
        position = match.end()
    if position < len(text):
        parts.append(text[position:].encode("utf-8"))
    return parts


def parseHashKey(text: str) -> Callable[[RequestView], bytes]:
    """
    Compile a hash key written in nginx's variable syntax into a function
    computing it for a request (a L{RequestView}).

    The key is literal text and variables, concatenated: C{$request_uri}
    (the path with the query), C{$uri} (the path), C{$args} (the query),
    C{$host} (of the C{Host} header, lower-cased, without port),
    C{$remote_addr}, C{$http_NAME} (a request header, C{_} for C{-}),
    C{$cookie_NAME} and C{$arg_NAME} (a query argument, as sent).  C{${NAME}}
    separates a variable from text following it.  Values are as the client
    sent them (not percent-decoded); a missing header, cookie or argument is
    empty.

    @raise ValueError: For an unknown variable, a lone C{$}, or no key.
    """
    parts = _parts(text, "hash key", route=False)
    if len(parts) == 1:
        only = parts[0]
        if isinstance(only, bytes):
            return lambda view: only
        return only

    def key(view: RequestView) -> bytes:
        return b"".join(part if isinstance(part, bytes) else part(view) for part in parts)

    return key


def parseKey(text: str) -> Callable[[RequestView, str | None], bytes]:
    """
    Compile a key in the syntax of L{parseHashKey}, which may also use
    C{$route}, the name of the request's route (empty when it has none),
    into a function of a request (a L{RequestView}) and its route's name.

    @raise ValueError: For an unknown variable, a lone C{$}, or no key.
    """
    parts = _parts(text, "key", route=True)
    if len(parts) == 1:
        only = parts[0]
        if only is None:
            return _routeName
        if isinstance(only, bytes):
            return lambda view, route: only
        return lambda view, route: only(view)

    def key(view: RequestView, route: str | None) -> bytes:
        values = []
        for part in parts:
            if part is None:
                values.append(_routeName(view, route))
            elif isinstance(part, bytes):
                values.append(part)
            else:
                values.append(part(view))
        return b"".join(values)

    return key


def _routeName(view: RequestView, route: str | None) -> bytes:
    return route.encode("utf-8") if route else b""
