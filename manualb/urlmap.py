"""
Stage 4, the URL map: the request's host and path decide which upstream pool
serves it, as nginx's C{server_name} and C{location} do.

Host
====

The host is looked at first, as nginx picks a C{server} block by its
C{server_name}.  The request's C{Host} value is normalised: the port is
dropped (C{example.com:8080}, C{[::1]:8080}), letters are lower-cased, a
trailing dot is dropped, and an IPv6 literal keeps its brackets and is
written in its compressed form (C{[0:0::1]} is C{[::1]}).  It then selects
one group of routes:

  1. the routes whose C{host} is exactly that name;
  2. if there are none, the routes whose wildcard host matches it, the
     longest wildcard first: C{*.example.com} matches C{a.example.com} and
     C{a.b.example.com}, but not C{example.com};
  3. if there are none either (or the request has no host), the routes with
     no host, which serve any host.

Only the chosen group is searched for the path.  As in nginx, a request whose
host has a group of its own never falls through to a less specific group
when no route of its group matches its path: it has no route.  Nor has a
request whose host selects no group at all, when no route serves any host.

Path
====

Within the group, the path is matched as nginx's C{location} blocks are,
whatever the order of the prefix routes in the file:

  1. an L{EXACT} route whose path equals the request path wins;
  2. otherwise the longest L{PREFIX} or L{PREFIX_NO_REGEX} route that the
     request path starts with (as a string of bytes: C{/api} covers
     C{/apix}) is found; if it is L{PREFIX_NO_REGEX} (nginx's C{^~}), it
     wins;
  3. otherwise the first L{REGEX} or L{REGEX_CASELESS} route, in file order,
     whose regular expression is found anywhere in the path (C{search}, not
     C{match}: anchor it with C{^} to match from the start) wins;
  4. otherwise the longest prefix found in 2 wins, if there is one;
  5. otherwise no route matches.

The path is matched as given, bytes and all: it is neither percent-decoded
nor normalised here.  Regular expressions are compiled as C{bytes} patterns,
from their text encoded as UTF-8, so that any sequence of bytes can be
matched: a non-ASCII character of a pattern matches its UTF-8 bytes, C{.}
matches one byte, and L{REGEX_CASELESS} ignores the case of ASCII letters
only.  Prefix and exact paths are encoded as UTF-8 as well.

The path sent on
================

L{RouteMatch.path} is the path to send to the backend:

  - with C{strip_prefix} (prefix routes only), the matched prefix is removed
    and the result always starts with C{/}: prefix C{/api} makes C{/api/users}
    C{/users} and C{/api} C{/}; prefix C{/api/} makes C{/api/x} C{/x};
  - with C{rewrite = (regex, replacement)}, the first match of C{regex} in the
    path (after C{strip_prefix}, when both are set) is replaced by
    C{replacement}, in which C{$1} to C{$9} stand for the groups of the match
    (a group that did not take part is empty) and every other character,
    backslashes included, is literal; a path the regex does not match is
    left as it is;
  - otherwise it is the request's path, unchanged.

The query string is not part of any of these paths.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Callable, Iterable, Mapping, Sequence
from urllib.parse import quote_from_bytes, unquote_to_bytes

import attrs
from zope.interface import implementer

from manualb.config import (
    EXACT,
    PREFIX,
    PREFIX_NO_REGEX,
    REGEX,
    REGEX_CASELESS,
    RouteConfig,
    keys,
)
from manualb.interfaces import IStage
from manualb.routecontrols import RouteControls, compileControls
from manualb.routelimits import poolFor
from manualb.selection import Pool
from manualb.syntax import Section, hostName
from manualb.view import Answer, Passage, normalizeHost

__all__ = [
    "Route",
    "RouteDecision",
    "RouteMatch",
    "URLMap",
    "encodePath",
    "normalizePath",
    "parseRoute",
    "claimPath",
]

_PREFIXES = frozenset([PREFIX, PREFIX_NO_REGEX])
_KINDS = (PREFIX, PREFIX_NO_REGEX, EXACT, REGEX, REGEX_CASELESS)
_DOLLAR_GROUP = re.compile(r"\$([1-9])")


def normalizePath(path: bytes) -> bytes | None:
    """
    The path as routes match it, as nginx's C{$uri}: percent-decoded, with
    repeated slashes merged and C{.} and C{..} segments resolved, so that
    C{/static/../admin} is matched as C{/admin}.  An absolute-form target
    (C{http://host/path}) gives its path.  L{None} for a path that does not
    start with C{/} or climbs above the root.
    """
    if path[:1] != b"/":
        scheme, separator, rest = path.partition(b"://")
        if not separator or scheme.lower() not in (b"http", b"https"):
            return None
        path = b"/" + rest.partition(b"/")[2]
    # find(), not "in": bytes' "in" first tries its operand as an integer,
    # which raises and clears an error each time.
    if path.find(b"%") == -1 and path.find(b"/.") == -1 and path.find(b"//") == -1:
        return path
    decoded = unquote_to_bytes(path)
    segments: list[bytes] = []
    for segment in decoded.split(b"/")[1:]:
        if segment == b"..":
            if not segments:
                return None
            segments.pop()
        elif segment not in (b"", b"."):
            segments.append(segment)
    normalized = b"/" + b"/".join(segments)
    if segments and decoded.endswith((b"/", b"/.", b"/..")):
        normalized += b"/"
    return normalized


def encodePath(path: bytes) -> bytes:
    """
    Percent-encode a decoded path again for a request line, as nginx
    escapes C{$uri}: every byte but the unreserved ones, the sub-delimiters,
    C{:}, C{@} and C{/} is encoded, so that CR, LF, NUL, spaces, C{%}, C{?}
    and C{#} can never stand raw in what goes to a backend.
    """
    return quote_from_bytes(path, safe="/!$&'()*+,;=:@").encode("ascii")


def _routeHost(host: str) -> bytes:
    """
    Return the configured host of a route (a name, a C{*.wildcard} or an IP
    address, IPv6 with or without brackets) normalised as L{normalizeHost}
    normalises request hosts, with a wildcard's C{*} kept.
    """
    if ":" in host or "[" in host:
        try:
            address = ipaddress.IPv6Address(host.removeprefix("[").removesuffix("]"))
        except ValueError:
            raise ValueError(
                f"bad route host {host!r}: a host has no port, and an IPv6 "
                f"address must be valid"
            ) from None
        return b"[" + address.compressed.encode("ascii") + b"]"
    normalised = normalizeHost(host.encode("utf-8"))
    if normalised is None or normalised == b"*" or b"*" in normalised[1:]:
        raise ValueError(f"bad route host {host!r}")
    if normalised.startswith(b"*") and not normalised.startswith(b"*."):
        raise ValueError(
            f"bad route host {host!r}: a wildcard must be like *.example.com"
        )
    return normalised


def _compileRewrite(rewrite: tuple[str, str] | None) -> tuple[re.Pattern[bytes], bytes] | None:
    """
    Compile C{rewrite = (regex, replacement)} into a pattern and a template
    for L{re.Pattern.sub}: the replacement's C{$1}..C{$9} become group
    references and its backslashes literal.
    """
    if rewrite is None:
        return None
    pattern, replacement = rewrite
    regex = re.compile(pattern.encode("utf-8"))
    for number in _DOLLAR_GROUP.findall(replacement):
        _checkGroup(number, regex.groups, pattern, replacement)
    template = _DOLLAR_GROUP.sub(r"\\g<\1>", replacement.replace("\\", "\\\\"))
    return regex, template.encode("utf-8")


@attrs.frozen
class Route:
    """
    A configured route, compiled: what it matches and the pool that serves
    what it matches.

    @ivar config: The route as configured.
    @ivar pool: The pool of C{config.upstream} (any object will do for the
        URL map itself).
    @ivar host: The normalised host (C{*.example.com} for a wildcard), or
        L{None} for any host.
    @ivar path: C{config.path} encoded as UTF-8: the prefix, the exact path
        or the pattern of the regex.
    @ivar regex: The compiled pattern of a regex route, else L{None}.
    @ivar controls: What the route controls besides where its requests go
        (its headers, its own answer, pages, compression: a
        L{manualb.routecontrols.RouteControls}), or L{None}.

    @raise ValueError: for an unknown C{match}, a bad host, C{strip_prefix}
        on a route that is not a prefix route, or a rewrite that uses more
        groups than its regex has.
    @raise re.error: for a bad regular expression.
    """

    config: RouteConfig
    pool: Pool
    host: bytes | None = attrs.field(init=False)
    path: bytes = attrs.field(init=False, repr=False)
    regex: re.Pattern[bytes] | None = attrs.field(init=False, repr=False, eq=False)
    _rewrite: tuple[re.Pattern[bytes], bytes] | None = attrs.field(
        init=False, repr=False, eq=False
    )
    controls: RouteControls | None = attrs.field(init=False, repr=False, eq=False)

    @host.default
    def _hostDefault(self) -> bytes | None:
        config = self.config
        if config.match not in _KINDS:
            raise ValueError(
                f"route {config.name!r}: unknown match {config.match!r} "
                f"(expected one of {', '.join(_KINDS)})"
            )
        try:
            _checkStripPrefix(config.match, config.path, config.strip_prefix)
        except ValueError as e:
            raise ValueError(f"route {config.name!r}: strip_prefix {e}") from None
        return None if config.host is None else _routeHost(config.host)

    @path.default
    def _pathDefault(self) -> bytes:
        return self.config.path.encode("utf-8")

    @regex.default
    def _regexDefault(self) -> re.Pattern[bytes] | None:
        if self.config.match == REGEX:
            return re.compile(self.path)
        if self.config.match == REGEX_CASELESS:
            return re.compile(self.path, re.IGNORECASE)
        return None

    @_rewrite.default
    def _rewriteDefault(self) -> tuple[re.Pattern[bytes], bytes] | None:
        return _compileRewrite(self.config.rewrite)

    @controls.default
    def _controlsDefault(self) -> RouteControls | None:
        return compileControls(self.config)

    @property
    def name(self) -> str:
        """
        The NAME of C{[route NAME]}.
        """
        return self.config.name

    def backendPath(self, path: bytes) -> bytes:
        """
        Return the path to send to the backend for a request path that this
        route matched: after C{strip_prefix} and C{rewrite}, when set.
        """
        if self.config.strip_prefix:
            path = path[len(self.path) :]
            if path[:1] != b"/":
                path = b"/" + path
        rewrite = self._rewrite
        if rewrite is not None:
            regex, template = rewrite
            path = regex.sub(template, path, count=1)
        return path


@attrs.frozen
class RouteDecision:
    """
    What the URL map decided for a request, and why.

    @ivar route: The route chosen.
    @ivar path: The path to send to the backend: after C{strip_prefix} or
        C{rewrite}; the request's path otherwise.
    @ivar rule: The rule that chose it: L{EXACT} (an exact path),
        L{PREFIX_NO_REGEX} (a C{^~} prefix, which stops the regex search),
        L{REGEX} or L{REGEX_CASELESS} (the first regex found in the path),
        or L{PREFIX} (the longest prefix, when no regex matched).
    @ivar group: The host of the group of routes searched: a name, a
        C{*.wildcard}, or L{None} for the routes of any host.
    """

    route: Route
    path: bytes
    rule: str = PREFIX
    group: bytes | None = None


#: The name the URL map's decision had before it said why.
RouteMatch = RouteDecision


class _Group:
    """
    The routes of one host (or of any host), arranged for the path search of
    nginx's C{location}s.

    Prefixes are kept in a dictionary and the lengths they come in, longest
    first, so that finding the longest prefix of a path takes one dictionary
    look-up per distinct length.
    """

    def __init__(self, routes: Sequence[Route], host: bytes | None = None) -> None:
        self.host = host
        self.exact: dict[bytes, Route] = {}
        self.prefixes: dict[bytes, Route] = {}
        self.regexes: list[tuple[re.Pattern[bytes], Route]] = []
        for route in routes:
            kind = route.config.match
            if kind == EXACT:
                table = self.exact
            elif kind in _PREFIXES:
                table = self.prefixes
            else:
                assert route.regex is not None
                self.regexes.append((route.regex, route))
                continue
            table[route.path] = route
        self.lengths = sorted({len(path) for path in self.prefixes}, reverse=True)
        # The common case: prefix routes only, nothing to rewrite.
        self.plain = not self.exact and not self.regexes and not any(
            route.config.strip_prefix or route.config.rewrite is not None
            for route in self.prefixes.values()
        )

    def match(self, path: bytes) -> RouteDecision | None:
        if self.plain:
            prefixes = self.prefixes
            for length in self.lengths:
                route = prefixes.get(path[:length])
                if route is not None:
                    return RouteDecision(route, path, PREFIX, self.host)
            return None
        route = self.exact.get(path)
        if route is None:
            prefixes = self.prefixes
            for length in self.lengths:
                route = prefixes.get(path[:length])
                if route is not None:
                    break
            if route is None or route.config.match != PREFIX_NO_REGEX:
                for regex, regexRoute in self.regexes:
                    if regex.search(path) is not None:
                        route = regexRoute
                        break
            if route is None:
                return None
        return RouteDecision(
            route, route.backendPath(path), route.config.match, self.host
        )


_NO_ROUTE = Answer(404, b"Not Found", b"No route matches this path.")


@implementer(IStage)
class URLMap:
    """
    The routes of a listener, arranged for L{match}; see the module
    docstring for the rules.

    As a stage of the request chain, it adds its L{RouteDecision} to the
    passage (C{route}), or answers 404 when no route serves the request; a
    decision a stage before made (the gatekeeper, which routes requests
    itself when some route has rules of its own) is kept.

    @ivar routes: The routes, in file order.
    """

    def __init__(self, routes: Iterable[Route]) -> None:
        """
        @param routes: In file order, which decides between regex routes.

        @raise ValueError: if two routes of the same host have the same exact
            path, or the same prefix path (whether C{^~} or not).
        """
        self.routes = tuple(routes)
        claimed: dict[tuple[bytes | None, str, str], RouteConfig] = {}
        for route in self.routes:
            # Regex routes are searched in order: the first of two equal ones
            # wins, as nginx's locations do.
            if route.regex is None:
                claimPath(claimed, route.config, lambda other: f"route {other.name!r}")
        byHost: dict[bytes | None, list[Route]] = {}
        for route in self.routes:
            byHost.setdefault(route.host, []).append(route)
        groups = {host: _Group(hostRoutes, host) for host, hostRoutes in byHost.items()}
        self._any = groups.pop(None, None)
        # "*.example.com" is kept as ".example.com", the suffix it matches.
        self._wildcards = {host[1:]: group for host, group in groups.items() if host[:1] == b"*"}
        self._hosts = {host: group for host, group in groups.items() if host[:1] != b"*"}
        self._byHost = bool(groups)

    @classmethod
    def fromConfig(cls, routes: Sequence[RouteConfig], pools: Mapping[str, Pool]) -> "URLMap":
        """
        Build the map from configured routes, in file order, and the pools
        built for their upstreams, by name (each route's seen through its
        own timeouts and tries, L{poolFor}).
        """
        return cls(
            Route(route, None if route.upstream is None else poolFor(route, pools[route.upstream]))
            for route in routes
        )

    def _group(self, name: bytes | None) -> _Group | None:
        """
        Return the group of routes that serves a request for host C{name},
        normalised (L{normalizeHost}).
        """
        if name is not None:
            group = self._hosts.get(name)
            if group is not None:
                return group
            wildcards = self._wildcards
            if wildcards:
                # Every suffix that starts at a dot, longest first; not the
                # whole name, which "*." needs a label before.
                dot = name.find(b".", 1)
                while dot != -1:
                    group = wildcards.get(name[dot:])
                    if group is not None:
                        return group
                    dot = name.find(b".", dot + 1)
        return self._any

    def match(self, host: bytes | None, path: bytes) -> RouteDecision | None:
        """
        Return the route for a request, and the path to send on, or L{None}
        when no route serves it.

        @param host: The request's C{Host} value, with or without a port, or
            L{None} when it has none.
        @param path: The request's path, without its query.
        """
        return self.decide(normalizeHost(host), path)

    def decide(self, host: bytes | None, path: bytes) -> RouteDecision | None:
        """
        As L{match}, for a host already normalised (L{normalizeHost}), as a
        L{manualb.view.RequestView} has it.
        """
        if self._byHost:
            group = self._group(host)
        else:
            group = self._any
        if group is None:
            return None
        return group.match(path)

    def handle(self, passage: Passage) -> Answer | None:
        """
        Route the request of C{passage} (see L{IStage.handle}).
        """
        if passage.route is not None:
            # A stage before (the gatekeeper) asked already.
            return None
        view = passage.view
        decision = self.decide(view.host, view.path)
        if decision is None:
            return _NO_ROUTE
        passage.route = decision
        return None


# The syntax of C{[route NAME]} sections, read by the configuration file
# reader, and the checks it shares with L{Route} and L{URLMap}.

# The modifier of each kind of path, as nginx's location writes it.
_PATH_MODIFIERS = {
    PREFIX_NO_REGEX: "^~",
    EXACT: "=",
    REGEX: "~",
    REGEX_CASELESS: "~*",
}

#: The kind of path of each of nginx's location modifiers.
_MODIFIER_MATCHES = {modifier: match for match, modifier in _PATH_MODIFIERS.items()}


def parseRoute(section: Section, name: str) -> RouteConfig:
    """
    Build the L{RouteConfig} of section C{[route NAME]}.
    """
    match, path = _parseRoutePath(section)
    host = _parseRouteHost(section)
    # A route that answers itself (return) needs none.
    upstream = section.single("upstream", required=section.lines("return") is None)
    stripPrefix = section.read("strip_prefix", keys(RouteConfig)["strip_prefix"])
    assert isinstance(stripPrefix, bool)
    try:
        _checkStripPrefix(match, path, stripPrefix)
    except ValueError as e:
        raise section.error("strip_prefix", str(e)) from None
    rewrite = _parseRewrite(section)
    if rewrite is not None and stripPrefix:
        raise section.error(
            "rewrite",
            "cannot be used together with strip_prefix = on; let the rewrite "
            "remove the prefix too, such as rewrite = ^/app/(.*)$ /$1",
        )
    return RouteConfig(
        name=name,
        path=path,
        upstream=upstream,
        match=match,
        host=host,
        strip_prefix=stripPrefix,
        rewrite=rewrite,
    )


def _checkStripPrefix(match: str, path: str, stripPrefix: bool) -> None:
    """
    Insist that a route with C{strip_prefix} is a prefix route.

    @raise ValueError: with the message about C{strip_prefix}.
    """
    if stripPrefix and match not in _PREFIXES:
        raise ValueError(
            f"needs a prefix path (such as /app or ^~ /app), but the path is "
            f"{_writtenPath(match, path)!r}"
        )


def claimPath(
    claimed: dict[tuple[bytes | None, str, str], RouteConfig],
    route: RouteConfig,
    describe: Callable[[RouteConfig], str],
) -> None:
    """
    Insist that no route in C{claimed} has the host and path of C{route},
    then add it.  Prefix paths, with C{^~} or without, count as the same:
    nginx refuses C{location /a} besides C{location ^~ /a} too.

    @param claimed: The routes seen so far, by host, kind and path; empty
        for the first.
    @param describe: Names a route in the message, such as C{[route a]}.

    @raise ValueError: with the message about C{path}.
    """
    kind = PREFIX if route.match == PREFIX_NO_REGEX else route.match
    host = None if route.host is None else _routeHost(route.host)
    identity = (host, kind, route.path)
    other = claimed.get(identity)
    if other is not None:
        written = _writtenPath(route.match, route.path)
        message = f"path {written!r}"
        if route.host is not None:
            message += f" for host {route.host!r}"
        message += f" is already used by {describe(other)}"
        if other.match != route.match:
            message += (
                f" (as {_writtenPath(other.match, other.path)!r}: a prefix "
                f"is given once, with or without ^~)"
            )
        raise ValueError(message)
    claimed[identity] = route


def _parseRoutePath(section: Section) -> tuple[str, str]:
    """
    Return C{(match, path)} from C{path}, written as nginx's C{location}
    takes it: C{/prefix}, C{^~ /prefix}, C{= /exact}, C{~ REGEX} or
    C{~* REGEX}; the path without its modifier.
    """
    text = section.single("path", required=True)
    assert text is not None
    first, *rest = text.split(None, 1)
    if first in _MODIFIER_MATCHES:
        match = _MODIFIER_MATCHES[first]
        if not rest:
            example = "/app" if match in (PREFIX_NO_REGEX, EXACT) else r"\.php$"
            raise section.error(
                "path", f"{first!r} needs a path after it, such as {first} {example}"
            )
        path = rest[0]
    elif text.startswith("/"):
        match, path = PREFIX, text
    else:
        # Longest first: "~*" before "~".
        for modifier in ("^~", "~*", "=", "~"):
            if text.startswith(modifier):
                raise section.error(
                    "path",
                    f"put a space after the modifier {modifier!r}, as in "
                    f"{modifier} {text[len(modifier):]}",
                )
        raise section.error("path", f"must start with '/', got {text!r}")
    if any(character.isspace() for character in path):
        raise section.error("path", f"must not contain spaces, got {text!r}")
    if match in (PREFIX_NO_REGEX, EXACT) and not path.startswith("/"):
        raise section.error(
            "path", f"the path after {first!r} must start with '/', got {path!r}"
        )
    if match in (REGEX, REGEX_CASELESS):
        flags = re.IGNORECASE if match == REGEX_CASELESS else 0
        try:
            _compileRegex(path, flags)
        except ValueError as e:
            raise section.error("path", str(e)) from None
    return match, path


def _writtenPath(match: str, path: str) -> str:
    """
    Return C{path} as it is written with its modifier, for messages.
    """
    if match == PREFIX:
        return path
    return f"{_PATH_MODIFIERS.get(match, match)} {path}"


def _compileRegex(pattern: str, flags: int = 0) -> re.Pattern[str]:
    """
    Compile C{pattern} as a string, and check that it also compiles as the
    bytes pattern that matches request paths (its UTF-8 encoding: some
    constructs, such as named Unicode escapes or the C{u} flag, only exist
    for strings).

    @raise ValueError: with a message quoting C{pattern} and giving L{re}'s.
    """
    try:
        compiled = re.compile(pattern, flags)
        re.compile(pattern.encode("utf-8"), flags)
    except re.error as e:
        raise ValueError(f"not a valid regular expression {pattern!r}: {e}") from None
    return compiled


def _parseRouteHost(section: Section) -> str | None:
    """
    Return the C{host} of a route, lower case: a name or a C{*.wildcard};
    L{None} for any host (C{*} or no key).
    """
    text = section.single("host")
    if text is None or text == "*":
        return None
    if len(text.split()) > 1:
        raise section.error(
            "host",
            f"expected one host, got {text!r} (give each host a route of its own)",
        )
    try:
        return hostName(text, wildcard=True)
    except ValueError as e:
        raise section.error("host", str(e)) from None


def _checkGroup(number: str, groups: int, pattern: str, replacement: str) -> None:
    """
    Insist that group C{number} of a rewrite's C{replacement} is one of the
    C{groups} groups of its C{pattern}.

    @raise ValueError: with the message about C{rewrite}.
    """
    if int(number) > groups:
        raise ValueError(
            f"the replacement {replacement!r} uses ${number}, but "
            f"{pattern!r} has {groups} group(s)"
        )


def _parseRewrite(section: Section) -> tuple[str, str] | None:
    """
    Return C{(regex, replacement)} from C{rewrite = REGEX REPLACEMENT}, as
    written, after checking them: as nginx's C{rewrite}, C{$1} to C{$9} in
    the replacement stand for the groups of the regex.
    """
    text = section.single("rewrite")
    if text is None:
        return None
    fields = text.split()
    if len(fields) == 3 and fields[2] in ("last", "break", "redirect", "permanent"):
        raise section.error(
            "rewrite",
            f"nginx's rewrite flags such as {fields[2]!r} are not supported, "
            f"got {text!r} (give only REGEX REPLACEMENT)",
        )
    if len(fields) != 2:
        raise section.error(
            "rewrite",
            f"expected a regular expression and a replacement separated by a "
            f"space, such as ^/old/(.*)$ /new/$1, got {text!r}",
        )
    pattern, replacement = fields
    try:
        regex = _compileRegex(pattern)
    except ValueError as e:
        raise section.error("rewrite", str(e)) from None
    if not replacement.startswith("/"):
        raise section.error(
            "rewrite", f"the replacement must start with '/', got {replacement!r}"
        )
    for reference in re.finditer(r"\$(.?)", replacement):
        group = reference.group(1)
        if not (group.isascii() and group.isdigit() and group != "0"):
            raise section.error(
                "rewrite",
                f"'$' must be followed by a group number from 1 to 9 in "
                f"{replacement!r} (nginx variables such as $uri are not "
                f"supported)",
            )
        try:
            _checkGroup(group, regex.groups, pattern, replacement)
        except ValueError as e:
            raise section.error("rewrite", str(e)) from None
    return pattern, replacement
