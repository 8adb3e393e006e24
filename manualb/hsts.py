"""
HSTS (C{Strict-Transport-Security}) per listener, per certificate and per
route, in place of the one value of C{[tls] hsts}.

  - C{hsts} in C{[listener NAME]}: the value of that listener's TLS
    answers, in place of C{[tls]}'s (C{off} for none);
  - C{hsts=VALUE} after a C{[tls] certificates} line: the value of the
    answers to requests for the names of that certificate (its exact name,
    or the names its wildcard covers), the name its certificate is chosen
    by; the directives are separated by C{;} without spaces
    (C{hsts=max-age=63072000;includeSubDomains;preload});
  - C{hsts} in C{[route NAME]}: the value of that route's answers (its
    host's, for a route with a host).

The most specific wins: the route's, then the certificate's, then the
listener's, then C{[tls]}'s.  Each value is C{max-age=SECONDS} with
C{includeSubDomains} and C{preload}, as C{[tls] hsts} takes it, or
C{off}.  HSTS goes on answers over TLS only, never over plain HTTP, where
browsers must ignore it (RFC 6797, section 8.1).

The per-listener value is the listener's site's (L{listenerHSTS}); the
certificates' and routes' are given by L{HostStrictTransport}, a stage
after the URL map that only the chains of a configuration that has such
values get, so that the others pay nothing for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from zope.interface import implementer

from manualb.config import Config, RouteConfig
from manualb.interfaces import IStage
from manualb.syntax import Section
from manualb.view import Answer, Passage, normalizeHost

__all__ = [
    "HostStrictTransport",
    "hstsValue",
    "hostStage",
    "listenerHSTS",
    "parseCertificateHSTS",
    "parseListenerHSTS",
    "parseRouteHSTS",
]

_HSTS = b"Strict-Transport-Security"
_OFF = "off"
_MAX_AGE = re.compile(r"max-age=[0-9]+", re.IGNORECASE)
_FLAGS = ("includeSubDomains", "preload")


def hstsValue(text: str) -> str:
    """
    Check a C{Strict-Transport-Security} value: C{max-age=SECONDS} and then,
    separated by C{;}, C{includeSubDomains} and C{preload}, each at most
    once.

    @return: C{text}.
    @raise ValueError: with the message to show.
    """
    first, *rest = [part.strip() for part in text.split(";")]
    if not _MAX_AGE.fullmatch(first):
        raise ValueError(
            f"must start with max-age= and a number of seconds, such as "
            f"max-age=31536000; includeSubDomains, got {text!r}"
        )
    seen: set[str] = set()
    for part in rest:
        known = [flag for flag in _FLAGS if flag.lower() == part.lower()]
        if not known:
            raise ValueError(
                f"unknown directive {part!r} in {text!r} (after max-age, "
                f"expected {' or '.join(_FLAGS)}, separated by ';')"
            )
        if known[0] in seen:
            raise ValueError(f"{known[0]} given twice in {text!r}")
        seen.add(known[0])
    return text


def _header(value: str | None) -> bytes | None:
    """
    The header value of a written C{hsts}: L{None} for C{off}.
    """
    if value is None:
        return None
    value = value.strip()
    if not value or value.lower() == _OFF:
        return None
    if any(character in value for character in "\r\n\0") or not value.isascii():
        raise ValueError(f"bad hsts value {value!r}")
    return value.encode("ascii")


def _read(text: str) -> str:
    """
    A written C{hsts}, checked: C{off} or a valid value.

    @raise ValueError: with the message to show.
    """
    if text.lower() == _OFF:
        return _OFF
    return hstsValue(text)


def parseListenerHSTS(section: Section, tls: bool) -> str | None:
    """
    The C{hsts} of a C{[listener NAME]}: L{None} when absent (C{[tls]}'s
    then), C{"off"}, or the value; C{tls} says whether the listener has a
    TLS endpoint, without which it has no use.
    """
    text = section.single("hsts")
    if text is None:
        return None
    try:
        value = _read(text)
    except ValueError as e:
        raise section.error("hsts", str(e)) from None
    if not tls:
        raise section.error(
            "hsts",
            "this listener has no TLS endpoint (sni: or ssl:), and HSTS is "
            "never sent over plain HTTP (browsers ignore it there)",
        )
    return value


def parseRouteHSTS(section: Section) -> dict[str, object]:
    """
    The C{hsts} of a C{[route NAME]}, as the keyword of L{RouteConfig}
    (none when absent).
    """
    text = section.single("hsts")
    if text is None:
        return {}
    try:
        return {"hsts": _read(text)}
    except ValueError as e:
        raise section.error("hsts", str(e)) from None


def parseCertificateHSTS(word: str) -> str:
    """
    The value of C{hsts=VALUE} after a certificate line.

    @raise ValueError: with the message to show.
    """
    option, equals, text = word.partition("=")
    if option.lower() != "hsts" or not equals:
        raise ValueError(
            f"unknown option {word!r} after the files (expected hsts=VALUE, "
            f"such as hsts=max-age=31536000;includeSubDomains)"
        )
    return _read(text)


def listenerHSTS(config: Config, listener: str) -> bytes | None:
    """
    The C{Strict-Transport-Security} of the TLS answers of the listener
    named C{listener}: its own C{hsts}, else C{[tls]}'s.
    """
    for each in config.listeners:
        if each.name == listener and each.hsts is not None:
            return _header(each.hsts)
    tls = config.tls
    return None if tls is None else _header(tls.hsts)


@implementer(IStage)
class HostStrictTransport:
    """
    Gives an answer over TLS the C{Strict-Transport-Security} of its route,
    else of the certificate of its host, in place of the listener's.

    @ivar routes: The header value (L{None} for C{off}) by route name, for
        the routes that have one.
    @ivar hosts: The header value by exact certificate name.
    @ivar wildcards: C{(suffix, value)} of the wildcard certificates, the
        longest suffix first (C{b".example.com"} for C{*.example.com}).
    """

    def __init__(
        self,
        routes: dict[str, bytes | None],
        hosts: dict[bytes, bytes | None],
        wildcards: list[tuple[bytes, bytes | None]],
    ) -> None:
        self.routes = routes
        self.hosts = hosts
        self.wildcards = wildcards

    def _value(self, passage: Passage) -> tuple[bool, bytes | None]:
        decision = passage.route
        if decision is not None:
            name = decision.route.config.name
            if name in self.routes:
                return True, self.routes[name]
        host = normalizeHost(passage.view.host)
        if host is not None:
            if host in self.hosts:
                return True, self.hosts[host]
            for suffix, value in self.wildcards:
                if host.endswith(suffix):
                    return True, value
        return False, None

    def handle(self, passage: Passage) -> Answer | None:
        if not passage.view.secure:
            return None
        found, value = self._value(passage)
        if not found:
            return None
        headers = [header for header in passage.headers if header[0] != _HSTS]
        if value is not None:
            headers.append((_HSTS, value))
        passage.headers[:] = headers
        return None


def hostStage(config: Config, routes: Sequence[RouteConfig]) -> HostStrictTransport | None:
    """
    The stage that gives the HSTS of the C{routes} (those of a chain) and
    of the certificates of C{config}, or L{None} when none has any.
    """
    byRoute = {route.name: _header(route.hsts) for route in routes if route.hsts is not None}
    hosts: dict[bytes, bytes | None] = {}
    wildcards: list[tuple[bytes, bytes | None]] = []
    if config.tls is not None:
        for certificate in config.tls.certificates:
            if certificate.hsts is None:
                continue
            name = certificate.name.encode("ascii")
            if name[:2] == b"*.":
                wildcards.append((name[1:], _header(certificate.hsts)))
            else:
                hosts[name] = _header(certificate.hsts)
    if not byRoute and not hosts and not wildcards:
        return None
    wildcards.sort(key=lambda pair: -len(pair[0]))
    return HostStrictTransport(byRoute, hosts, wildcards)
