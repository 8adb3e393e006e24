"""
The header rules of a route, as nginx writes them: C{set_header} (nginx's
C{proxy_set_header}) for the request to the backend, C{hide_header} and
C{pass_header} (C{proxy_hide_header}, C{proxy_pass_header}) for the
backend's response, and C{add_header} for the response to the client.

A value is literal text and the C{$variables} of C{hash} and C{log_format}
(L{manualb.variables.parseKey}, C{$route} included), and three of nginx's
that only headers use: C{$scheme} (C{http} or C{https}), C{$request_id}
and C{$proxy_add_x_forwarded_for} (the client's C{X-Forwarded-For} with
the client's address added, what manualb sends by default).  Names must be HTTP
tokens; values may hold no control character, and a value built from
variables is checked again once computed: one that is not a valid header
value is not sent (and logged), so no request can smuggle a header line
through a variable.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from twisted.logger import Logger

from manualb.rules import CONTROL, HOST
from manualb.syntax import Section
from manualb.variables import parseKey
from manualb.view import RequestView

__all__ = ["HeaderRules", "parseHeaderKeys", "ADD_HEADER_CODES"]

log = Logger()

#: An HTTP token (RFC 9110, section 5.6.2): what a header name is made of.
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")

#: The codes nginx's C{add_header} adds to, unless C{always}.
ADD_HEADER_CODES = frozenset([200, 201, 204, 206, 301, 302, 303, 304, 307, 308])

# Headers that describe one connection or the framing of the message: no
# rule may set, add or pass them.
_FRAMING = frozenset(
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
    ]
)
_NOT_SET = _FRAMING | frozenset(["expect"])
_NOT_ADDED = _FRAMING | frozenset(["content-encoding", "server", "date"])
#: What the proxy hides of a backend's response by default (see
#: L{manualb.forwarding}): what C{pass_header} can let through.
_PASSABLE = ("server", "date")

Value = Callable[[RequestView, "str | None", bytes], bytes]

# The variables of header values that the other keys do not know.
_OWN_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>scheme|request_id|proxy_add_x_forwarded_for)\}"
    r"|(?P<bare>scheme|request_id|proxy_add_x_forwarded_for)(?![A-Za-z0-9_]))"
)


def _scheme(view: RequestView, requestId: bytes) -> bytes:
    return b"https" if view.secure else b"http"


def _requestId(view: RequestView, requestId: bytes) -> bytes:
    return requestId


def _forwardedFor(view: RequestView, requestId: bytes) -> bytes:
    return b", ".join([*view.header(b"x-forwarded-for"), view.clientAddress.encode("ascii")])


_OWN = {"scheme": _scheme, "request_id": _requestId, "proxy_add_x_forwarded_for": _forwardedFor}


def _name(section: Section, key: str, text: str, refused: frozenset[str]) -> str:
    if TOKEN.match(text) is None:
        raise section.error(
            key, f"{text!r} is not a header name (letters, digits and !#$%&'*+.^_`|~-)"
        )
    if text.lower() in refused:
        raise section.error(
            key, f"{text!r}: manualb writes this header itself; it cannot be given here"
        )
    return text


def _value(section: Section, key: str, line: str, text: str) -> str:
    if CONTROL.search(text.encode("utf-8")) is not None:
        raise section.error(key, f"{line!r}: a header value cannot hold control characters")
    if text:
        try:
            compileValue(text)
        except ValueError as e:
            raise section.error(key, f"{line!r}: {e}") from None
    return text


def parseHeaderKeys(section: Section) -> dict[str, object]:
    """
    Read C{set_header}, C{hide_header}, C{pass_header} and C{add_header} of
    a C{[route NAME]}.

    @return: The fields of L{manualb.config.RouteConfig} given, by name.
    """
    values: dict[str, object] = {}
    lines = section.lines("set_header")
    if lines is not None:
        if not lines:
            raise section.error("set_header", "empty value (expected NAME VALUE lines)")
        setHeaders: list[tuple[str, str]] = []
        for line in lines:
            name, _, text = line.partition(" ")
            name = _name(section, "set_header", name, _NOT_SET)
            text = text.strip()
            if text in ('""', "''"):
                text = ""
            if not text and name.lower() == "host":
                raise section.error(
                    "set_header", f"{line!r}: the backend needs a Host; give a value"
                )
            if (
                name.lower() == "host"
                and "$" not in text
                and HOST.fullmatch(text.encode("utf-8")) is None
            ):
                raise section.error("set_header", f"{line!r}: {text!r} is not a host")
            if any(name.lower() == other.lower() for other, _ in setHeaders):
                raise section.error("set_header", f"{line!r}: {name} is set twice")
            setHeaders.append((name, _value(section, "set_header", line, text)))
        values["set_header"] = tuple(setHeaders)
    for key in ("hide_header", "pass_header"):
        text = section.single(key)
        if text is None:
            continue
        names = []
        for name in text.split():
            lower = _name(section, key, name, frozenset()).lower()
            if key == "pass_header" and lower not in _PASSABLE:
                raise section.error(
                    key,
                    f"{name!r} is passed on already; only {', '.join(_PASSABLE)} "
                    f"are hidden unless passed",
                )
            names.append(lower)
        values[key] = tuple(names)
    lines = section.lines("add_header")
    if lines is not None:
        if not lines:
            raise section.error("add_header", "empty value (expected NAME VALUE [always] lines)")
        added: list[tuple[str, str, bool]] = []
        for line in lines:
            name, _, text = line.partition(" ")
            name = _name(section, "add_header", name, _NOT_ADDED)
            text = text.strip()
            always = False
            if text == "always" or text.endswith(" always"):
                always = True
                text = text[: -len("always")].rstrip()
            if not text:
                raise section.error("add_header", f"{line!r}: expected NAME VALUE [always]")
            added.append((name, _value(section, "add_header", line, text), always))
        values["add_header"] = tuple(added)
    return values


def compileValue(text: str) -> Value | None:
    """
    The function computing a header value for a request and its route's
    name; L{None} for an empty value (the header is removed).
    """
    if not text:
        return None
    keys: list[Callable[[RequestView, str | None], bytes]] = []
    own: list[Callable[[RequestView, bytes], bytes] | None] = []
    position = 0
    for match in _OWN_VARIABLE.finditer(text):
        if match.start() > position:
            keys.append(parseKey(text[position : match.start()]))
            own.append(None)
        keys.append(_noKey)
        own.append(_OWN[match["braced"] or match["bare"]])
        position = match.end()
    if position < len(text):
        keys.append(parseKey(text[position:]))
        own.append(None)
    if len(keys) == 1 and own[0] is None:
        only = keys[0]
        return lambda view, route, requestId: only(view, route)
    parts = list(zip(keys, own))

    def value(view: RequestView, route: str | None, requestId: bytes) -> bytes:
        return b"".join(
            key(view, route) if variable is None else variable(view, requestId)
            for key, variable in parts
        )

    return value


def _noKey(view: RequestView, route: str | None) -> bytes:
    return b""


def headerValue(
    value: Value, view: RequestView, route: str | None, requestId: bytes, name: bytes
) -> bytes | None:
    """
    Compute a header's value, or L{None} (logged) when what the variables
    gave is not a valid header value.
    """
    computed = value(view, route, requestId)
    if CONTROL.search(computed) is not None:
        log.warn(
            "header {name} not sent: its value for {request} holds control characters",
            name=name.decode("ascii"),
            request=(view.method + b" " + view.target).decode("ascii", "replace"),
        )
        return None
    return computed


class HeaderRules:
    """
    The header rules of one route, compiled.
    """

    def __init__(
        self,
        setHeaders: Sequence[tuple[str, str]],
        hidden: Sequence[str],
        passed: Sequence[str],
        added: Sequence[tuple[str, str, bool]],
    ) -> None:
        self.setHeaders = [
            (name.encode("ascii"), name.lower().encode("ascii"), compileValue(text))
            for name, text in setHeaders
        ]
        self.hidden = frozenset(name.encode("ascii") for name in hidden)
        self.passed = frozenset(name.encode("ascii") for name in passed)
        self.added = [
            (name.encode("ascii"), compileValue(text), always) for name, text, always in added
        ]

    def requestHead(
        self, head: bytes, view: RequestView, route: str | None, requestId: bytes = b""
    ) -> bytes:
        """
        The request head C{head} (as L{manualb.forwarding.requestHead} made
        it) with the C{set_header} rules applied: each named header's lines
        replaced by the computed value, or removed when it is empty.  A
        C{Host} whose value comes out empty or invalid is left as it was.
        """
        if not self.setHeaders:
            return head
        lines = head.split(b"\r\n")
        replaced = set()
        new = []
        for name, lower, value in self.setHeaders:
            computed = None if value is None else headerValue(value, view, route, requestId, name)
            if lower == b"host" and (not computed or HOST.fullmatch(computed) is None):
                # The backend gets the client's, rather than none or one
                # that is no host.
                continue
            replaced.add(lower)
            if computed:
                new.append(name + b": " + computed)
        kept = [line for line in lines[1:-2] if line.partition(b":")[0].lower() not in replaced]
        return b"\r\n".join([lines[0], *kept, *new, b"", b""])

    def responseHeaders(
        self,
        outgoing: list[tuple[bytes, bytes]],
        backend: Sequence[tuple[bytes, bytes]],
    ) -> list[tuple[bytes, bytes]]:
        """
        The headers of a proxied response, C{outgoing}, with those of the
        backend's, C{backend}, that C{pass_header} names (its own C{Server}
        or C{Date}) in place of the proxy's.  (The backend's headers that
        C{hide_header} names, L{hidden}, are left out of C{outgoing} as the
        hop-by-hop headers are, by L{manualb.forwarding.responseHeaders}.)
        """
        if self.passed:
            extra = [header for header in backend if header[0].lower() in self.passed]
            names = {name.lower() for name, value in extra}
            if names:
                outgoing = [header for header in outgoing if header[0].lower() not in names]
                outgoing += extra
        return outgoing

    def addedHeaders(
        self, code: int, view: RequestView, route: str | None, requestId: bytes = b""
    ) -> list[tuple[bytes, bytes]]:
        """
        The C{add_header} headers of a response of status C{code}.
        """
        added = []
        ordinary = code in ADD_HEADER_CODES
        for name, value, always in self.added:
            if (always or ordinary) and value is not None:
                computed = headerValue(value, view, route, requestId, name)
                if computed:
                    added.append((name, computed))
        return added
