"""
The sticky cookie of C{balance = cookie [NAME] [OPTIONS]}: its name, its
attributes, and the values servers give it.

The options follow the cookie attributes (RFC 6265bis) by their nginx
C{sticky cookie} and HAProxy C{cookie} names::

    balance = cookie srv secure samesite=Lax max_age=1d domain=example.com path=/app

  - C{secure}: C{Secure}, sent by browsers over https only;
  - C{samesite=Strict|Lax|None}: C{SameSite}; C{None} needs C{secure}, as
    browsers drop a C{SameSite=None} cookie without it;
  - C{max_age=DURATION}: C{Max-Age}, in whole seconds; without it the
    cookie lasts the browser session;
  - C{domain=NAME}: C{Domain}, to share it with subdomains;
  - C{path=/PATH}: C{Path} (C{/} by default);
  - C{httponly}: C{HttpOnly}, which the cookie always has (scripts have no
    use for it); accepted for those who write it.

A server line's C{route=VALUE} (HAProxy's C{cookie VALUE} on a C{server})
is what the cookie holds for that server, in place of the opaque hash of
its address: readable, and stable when the server moves.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

from manualb.syntax import closest, hostName, parseDuration

__all__ = ["CookieSettings", "RouteError", "parseCookieArgument", "checkRoutes", "DEFAULT_NAME"]

#: The cookie's name when C{balance = cookie} gives none.
DEFAULT_NAME = "manualb_server"

# RFC 6265 cookie-name: an HTTP token.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 6265 cookie-octet: printable ASCII but for space, '"', ',', ';', '\'.
_COOKIE_VALUE = re.compile(r"[!#-+\--:<-\[\]-~]+")
_PATH = re.compile(r"/[!-:<-~]*")
_SAMESITE = ("Strict", "Lax", "None")
_FLAGS = ("secure", "httponly")
_VALUED = ("samesite", "max_age", "domain", "path")
_OPTIONS = _FLAGS + _VALUED


@attrs.frozen
class CookieSettings:
    """
    The sticky cookie: its name and the attributes of its C{Set-Cookie}.

    @ivar attributes: What follows C{NAME=VALUE} in C{Set-Cookie}, from
        C{"; "} on: C{"; Path=/; HttpOnly"} by default.
    """

    name: str = DEFAULT_NAME
    attributes: str = "; Path=/; HttpOnly"


def parseCookieArgument(argument: str | None) -> CookieSettings:
    """
    Read what follows C{cookie} in C{balance}: an optional name, then the
    options of the module docstring, in any order.

    @raise ValueError: with the message to show, naming an unknown option
        and the known one it was likely meant to be.
    """
    words = (argument or "").split()
    name = DEFAULT_NAME
    if words and "=" not in words[0] and words[0].lower() not in _FLAGS:
        name = words.pop(0)
        if not _COOKIE_NAME.fullmatch(name):
            raise ValueError(
                f"cookie name {name!r} is not a valid cookie name"
                " (letters, digits and !#$%&'*+-.^_`|~ only)"
            )
    given: dict[str, str | None] = {}
    for word in words:
        option, equals, value = word.partition("=")
        option = option.lower()
        if option not in _OPTIONS or (option in _FLAGS) == bool(equals):
            meant = closest(option, _OPTIONS)
            hint = "" if meant is None else f"; did you mean {meant!r}?"
            if option in _FLAGS:
                hint = f"; {option} takes no value"
            elif option in _VALUED:
                hint = f"; write {option}=VALUE"
            raise ValueError(
                f"unknown cookie option {word!r} (known: secure, httponly, "
                f"samesite=Strict|Lax|None, max_age=DURATION, domain=NAME, "
                f"path=/PATH){hint}"
            )
        if option in given:
            raise ValueError(f"cookie option {option} given twice")
        given[option] = value if equals else None
    path = given.get("path") or "/"
    if not _PATH.fullmatch(path):
        raise ValueError(f"path={path!r}: expected a path starting with /, without ; or spaces")
    attributes = [f"Path={path}"]
    if "domain" in given:
        try:
            domain = hostName((given["domain"] or "").lstrip("."), wildcard=False)
        except ValueError as e:
            raise ValueError(f"domain={given['domain']!r}: {e}") from None
        attributes.append(f"Domain={domain}")
    if "max_age" in given:
        try:
            seconds = parseDuration(given["max_age"] or "")
        except ValueError as e:
            raise ValueError(f"max_age={given['max_age']!r}: {e}") from None
        attributes.append(f"Max-Age={int(seconds)}")
    if "secure" in given:
        attributes.append("Secure")
    attributes.append("HttpOnly")
    if "samesite" in given:
        written = given["samesite"] or ""
        known = [value for value in _SAMESITE if value.lower() == written.lower()]
        if not known:
            raise ValueError(f"samesite={written!r}: expected Strict, Lax or None")
        if known[0] == "None" and "secure" not in given:
            raise ValueError(
                "samesite=None needs secure: browsers drop a SameSite=None "
                "cookie that is not Secure"
            )
        attributes.append(f"SameSite={known[0]}")
    return CookieSettings(name, "".join("; " + attribute for attribute in attributes))


def checkRoutes(routes: Sequence[str | None], cookie: bool) -> None:
    """
    Check the C{route=} values of an upstream's servers, in order (L{None}
    for a server without one): each a valid cookie value, none twice, and
    only where C{balance = cookie} (C{cookie}) gives them a use.

    @raise RouteError: with the message to show and the index of the
        server at fault.
    """
    seen: set[str] = set()
    for index, route in enumerate(routes):
        if route is None:
            continue
        if not cookie:
            raise RouteError(
                f"route={route} is the value of the sticky cookie, which only "
                f"balance = cookie sets",
                index,
            )
        if not _COOKIE_VALUE.fullmatch(route):
            raise RouteError(
                f"route={route!r} cannot be a cookie value (printable ASCII "
                f"without spaces, quotes, commas, semicolons or backslashes)",
                index,
            )
        if route in seen:
            raise RouteError(f"route={route} given to two servers", index)
        seen.add(route)


class RouteError(ValueError):
    """
    A server's C{route=} is wrong.

    @ivar index: The index of the server among the upstream's.
    """

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index
