"""
Read and validate the manualb configuration file.

The file is INI (L{configparser}) and becomes a tree of frozen L{attrs}
objects: L{Config} holding L{UpstreamConfig}, L{ServerAddress} and
L{RouteConfig}.  Everything is checked before the load balancer starts so
that the rest of the program can trust these objects, and so that every
mistake stops start-up with one message naming the file, section and key
(L{ConfigError}) instead of a traceback or a surprise at request time.

Example::

    [manualb]
    listen = tcp:8080
    access_log = -

    [upstream my_backend_pool]
    servers =
        10.128.0.2:80
        10.128.0.3:80
    connect_timeout = 5s

    [route default]
    path = /
    upstream = my_backend_pool
"""

from __future__ import annotations

import configparser
import ipaddress
import re
from collections.abc import Mapping

import attrs
from twisted.internet.endpoints import serverFromString

from manualb.durations import parseDuration

__all__ = [
    "BALANCE_METHODS",
    "SCHEMES",
    "ConfigError",
    "ServerAddress",
    "UpstreamConfig",
    "RouteConfig",
    "Config",
    "parseConfig",
    "loadConfig",
]

#: Load-balancing methods the C{balance} key accepts.
BALANCE_METHODS: tuple[str, ...] = ("round_robin",)

#: URL schemes a server address may use.
SCHEMES: tuple[str, ...] = ("http",)

_DEFAULT_PORTS = {"http": 80}

# configparser treats its default section specially (its keys leak into every
# other section).  A header cannot contain a newline, so no file can name this
# one and "[DEFAULT]" becomes an ordinary, unknown section.
_NO_DEFAULT_SECTION = "\n"

# Stricter than configparser's own pattern, which silently ignores anything
# after the closing bracket ("[route a] b").  Comments are already removed.
_SECTION_HEADER = re.compile(r"\[(?P<header>[^\]]+)\]$")

_KNOWN_SECTIONS = "[manualb], [upstream NAME], [route NAME]"
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")
_INTEGER = re.compile(r"[+-]?[0-9]+")


class ConfigError(Exception):
    """
    The configuration file is wrong; C{str()} of this error is the single
    message to show the user.

    @ivar source: The file name (or C{"<string>"}).
    @ivar section: The section header as written (without brackets), or
        L{None} when the problem is not inside one section.
    @ivar key: The key, or L{None} when the problem is not about one key.
    @ivar message: What is wrong, without the location.
    @ivar line: The line number, when configparser reported one, else
        L{None}.
    """

    def __init__(
        self,
        source: str,
        section: str | None,
        key: str | None,
        message: str,
        line: int | None = None,
    ) -> None:
        super().__init__(source, section, key, message, line)
        self.source = source
        self.section = section
        self.key = key
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f", line {self.line}"
        place = ""
        if self.section is not None:
            place = f"[{self.section}]"
        if self.key is not None:
            place = f"{place} {self.key}" if place else self.key
        if place:
            return f"{where}: {place}: {self.message}"
        return f"{where}: {self.message}"


@attrs.frozen
class ServerAddress:
    """
    One backend server of an upstream.

    @ivar host: Host name or IP address; IPv6 addresses without brackets.
    @ivar port: TCP port, 1..65535.
    @ivar scheme: Protocol spoken to the server; only C{"http"} for now.
    """

    host: str
    port: int
    scheme: str = "http"

    @property
    def name(self) -> str:
        """
        C{"host:port"}, or C{"[v6addr]:port"} for IPv6: how logs and the
        access log refer to this server, and how it is written in the file.
        """
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@attrs.frozen
class UpstreamConfig:
    """
    A named pool of backend servers and how to talk to them; the timeouts and
    keep-alive settings follow the nginx directives of the same names.

    @ivar name: The NAME from C{[upstream NAME]}.
    @ivar servers: The servers, in file order.
    @ivar balance: Load-balancing method, one of L{BALANCE_METHODS}.
    @ivar connect_timeout: Seconds allowed to connect to a server.
    @ivar read_timeout: Seconds allowed between two successful reads from a
        server (nginx C{proxy_read_timeout}).
    @ivar send_timeout: Seconds allowed between two successful writes to a
        server (nginx C{proxy_send_timeout}).
    @ivar keepalive: Idle keep-alive connections cached per server; 0 turns
        caching off.
    @ivar keepalive_timeout: Seconds after which a cached idle connection is
        closed.
    @ivar keepalive_requests: Requests sent over one backend connection
        before it is closed.
    """

    name: str
    servers: tuple[ServerAddress, ...] = attrs.field(converter=tuple)
    balance: str = "round_robin"
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    send_timeout: float = 60.0
    keepalive: int = 32
    keepalive_timeout: float = 60.0
    keepalive_requests: int = 1000


@attrs.frozen
class RouteConfig:
    """
    Send requests whose path matches C{path} to the upstream C{upstream}.

    @ivar name: The NAME from C{[route NAME]}.
    @ivar path: Request path, always starting with C{"/"}.
    @ivar upstream: Name of an upstream in L{Config.upstreams}.
    """

    name: str
    path: str
    upstream: str


@attrs.frozen
class Config:
    """
    The whole, validated configuration.

    @ivar source: Where it was read from (a file name or C{"<string>"}).
    @ivar listen: Twisted server endpoint strings to listen on, at least one.
    @ivar access_log: C{"-"} for standard output, a file path, or L{None}
        when access logging is off.
    @ivar upstreams: Upstreams by name, in file order.
    @ivar routes: Routes in file order; every one names an upstream in
        C{upstreams} and no two share a path.
    @ivar client_timeout: Seconds a client connection may stay silent: idle
        between requests, or stalled while sending its request head or body
        (nginx's C{keepalive_timeout}, C{client_header_timeout} and
        C{client_body_timeout} in one).
    """

    source: str
    listen: tuple[str, ...] = attrs.field(converter=tuple)
    access_log: str | None
    upstreams: Mapping[str, UpstreamConfig]
    routes: tuple[RouteConfig, ...] = attrs.field(converter=tuple)
    client_timeout: float = 60.0


def loadConfig(path: str) -> Config:
    """
    Read and validate the configuration file at C{path}.

    @raise ConfigError: if the file cannot be read (naming the file and the
        operating system's reason) or its contents are wrong.
    """
    try:
        # utf-8-sig: tolerate the byte order mark some Windows editors add.
        with open(path, encoding="utf-8-sig") as configFile:
            text = configFile.read()
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(path, None, None, f"cannot read file: {reason}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            path, None, None, f"not UTF-8 text (bad byte at offset {e.start})"
        ) from None
    return parseConfig(text, path)


def parseConfig(text: str, source: str = "<string>") -> Config:
    """
    Parse and validate configuration file contents.

    @param text: The contents of the file.
    @param source: File name to put in error messages and L{Config.source}.

    @raise ConfigError: on the first mistake found.
    """
    parser = _readIni(text, source)
    sections = _Sections(source, parser)
    sections.classify()
    listen, accessLog = _parseMain(sections)
    clientTimeout = sections.duration(sections.main, "client_timeout", 60.0)
    upstreams = {
        name: _parseUpstream(sections, header, name)
        for name, header in sections.upstreams.items()
    }
    routes = tuple(
        _parseRoute(sections, header, name)
        for name, header in sections.routes.items()
    )
    _checkRoutes(source, routes, upstreams, sections.routes)
    return Config(
        source=source,
        listen=listen,
        access_log=accessLog,
        upstreams=upstreams,
        routes=routes,
        client_timeout=clientTimeout,
    )


def _readIni(text: str, source: str) -> configparser.RawConfigParser:
    """
    Run configparser over C{text}, turning its errors into L{ConfigError}.
    """
    parser = configparser.RawConfigParser(
        interpolation=None,
        strict=True,
        delimiters=("=",),
        comment_prefixes=(";", "#"),
        inline_comment_prefixes=(";", "#"),
        empty_lines_in_values=False,
        default_section=_NO_DEFAULT_SECTION,
    )
    parser.SECTCRE = _SECTION_HEADER
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise _fromParserError(e, text, source) from None
    return parser


def _fromParserError(
    error: configparser.Error, text: str, source: str
) -> ConfigError:
    """
    Translate a configparser exception into a L{ConfigError} with its line.
    """
    if isinstance(error, configparser.DuplicateSectionError):
        return ConfigError(
            source, error.section, None, "duplicate section", error.lineno
        )
    if isinstance(error, configparser.DuplicateOptionError):
        return ConfigError(
            source,
            error.section,
            error.option,
            "duplicate key (each key may appear once per section)",
            error.lineno,
        )
    if isinstance(error, configparser.MissingSectionHeaderError):
        return ConfigError(
            source,
            None,
            None,
            f"{_lineAt(text, error.lineno).strip()!r} comes before any section "
            f"header (the file must start with a section such as [manualb])",
            error.lineno,
        )
    if isinstance(error, configparser.ParsingError) and error.errors:
        lineno = error.errors[0][0]
        line = _lineAt(text, lineno)
        message = f"cannot parse {line.strip()!r}: expected 'key = value'"
        if line[:1].isspace():
            # configparser only continues a value on lines directly below it.
            message += (
                " or a continuation line directly below a key"
                " (a blank or comment line ends a multi-line value)"
            )
        else:
            message += " or a [section] header"
        return ConfigError(source, None, None, message, lineno)
    return ConfigError(source, None, None, str(error))


def _lineAt(text: str, lineno: int) -> str:
    """
    Return line C{lineno} (1-based) of C{text} as configparser numbered it.
    """
    # read_string() iterates over a StringIO, which splits on "\n" only.
    lines = text.split("\n")
    if 1 <= lineno <= len(lines):
        return lines[lineno - 1]
    return ""


class _Sections:
    """
    The sections of one file, sorted by kind and checked for unknown or
    duplicate sections and keys; also hands out single values with errors
    that name the section and key.

    @ivar main: The header of the C{[manualb]} section, or L{None}.
    @ivar upstreams: Upstream name to section header, in file order.
    @ivar routes: Route name to section header, in file order.
    """

    _MAIN_KEYS = ("listen", "access_log", "client_timeout")
    _UPSTREAM_KEYS = (
        "servers",
        "balance",
        "connect_timeout",
        "read_timeout",
        "send_timeout",
        "keepalive",
        "keepalive_timeout",
        "keepalive_requests",
    )
    _ROUTE_KEYS = ("path", "upstream")

    def __init__(self, source: str, parser: configparser.RawConfigParser) -> None:
        self.source = source
        self.parser = parser
        self.main: str | None = None
        self.upstreams: dict[str, str] = {}
        self.routes: dict[str, str] = {}

    def error(self, section: str | None, key: str | None, message: str) -> ConfigError:
        """
        Make a L{ConfigError} for this file.
        """
        return ConfigError(self.source, section, key, message)

    def classify(self) -> None:
        """
        Sort every section into C{main}, C{upstreams} or C{routes} and check
        its keys against the known ones.
        """
        for header in self.parser.sections():
            self._classifyOne(header)
        if self.main is None:
            raise self.error(
                "manualb",
                None,
                "missing section (it holds 'listen', which is required)",
            )

    def _classifyOne(self, header: str) -> None:
        words = header.split()
        kind = words[0] if words else ""
        if kind == "manualb":
            if len(words) > 1:
                raise self.error(header, None, "[manualb] takes no name")
            if self.main is not None:
                raise self.error(header, None, f"duplicate section (see [{self.main}])")
            self.main = header
            known: tuple[str, ...] = self._MAIN_KEYS
        elif kind in ("upstream", "route"):
            name = self._sectionName(header, words)
            named = self.upstreams if kind == "upstream" else self.routes
            if name in named:
                raise self.error(
                    header, None, f"duplicate section (see [{named[name]}])"
                )
            named[name] = header
            known = self._UPSTREAM_KEYS if kind == "upstream" else self._ROUTE_KEYS
        else:
            raise self.error(
                header, None, f"unknown section (known sections: {_KNOWN_SECTIONS})"
            )
        for key in self.parser.options(header):
            if key not in known:
                raise self.error(
                    header, key, f"unknown key (known keys: {', '.join(known)})"
                )

    def _sectionName(self, header: str, words: list[str]) -> str:
        """
        Return NAME from a C{[kind NAME]} header, which must be one word.
        """
        kind = words[0]
        if len(words) == 1:
            raise self.error(header, None, f"section needs a name: [{kind} NAME]")
        if len(words) > 2:
            raise self.error(
                header,
                None,
                f"section name must be one word without spaces: [{kind} NAME]",
            )
        return words[1]

    def lines(self, section: str, key: str) -> list[str] | None:
        """
        Return the non-empty lines of a value, or L{None} if the key is
        absent.
        """
        if not self.parser.has_option(section, key):
            return None
        value = self.parser.get(section, key)
        return [line.strip() for line in value.splitlines() if line.strip()]

    def single(self, section: str, key: str, required: bool = False) -> str | None:
        """
        Return a one-line value, or L{None} if the optional key is absent.

        @raise ConfigError: if the value is empty or spans several lines, or
            if C{required} and the key is absent.
        """
        lines = self.lines(section, key)
        if lines is None:
            if required:
                raise self.error(section, key, "missing required key")
            return None
        if not lines:
            raise self.error(section, key, "empty value")
        if len(lines) > 1:
            raise self.error(
                section, key, f"expected a single value, got {len(lines)} lines"
            )
        return lines[0]

    def duration(self, section: str, key: str, default: float) -> float:
        """
        Return a positive duration in seconds, or C{default} if absent.
        """
        text = self.single(section, key)
        if text is None:
            return default
        try:
            seconds = parseDuration(text)
        except ValueError as e:
            raise self.error(section, key, str(e)) from None
        if seconds <= 0:
            raise self.error(section, key, f"must be greater than zero, got {text!r}")
        return seconds

    def integer(self, section: str, key: str, default: int, minimum: int) -> int:
        """
        Return a whole number of at least C{minimum}, or C{default} if absent.
        """
        text = self.single(section, key)
        if text is None:
            return default
        if not _INTEGER.fullmatch(text):
            raise self.error(section, key, f"bad integer {text!r}")
        value = int(text)
        if value < minimum:
            raise self.error(section, key, f"must be at least {minimum}, got {value}")
        return value


def _parseMain(sections: _Sections) -> tuple[tuple[str, ...], str | None]:
    """
    Return C{(listen, access_log)} from the C{[manualb]} section.
    """
    header = sections.main
    assert header is not None
    listen = _parseListen(sections, header)
    accessLog: str | None = sections.single(header, "access_log") or "-"
    if accessLog.lower() == "off":
        accessLog = None
    return listen, accessLog


def _parseListen(sections: _Sections, header: str) -> tuple[str, ...]:
    """
    Return the endpoint strings of C{listen}, each checked by Twisted's own
    parser so that a typo is reported now rather than when listening.
    """
    lines = sections.lines(header, "listen")
    if lines is None:
        raise sections.error(header, "listen", "missing required key")
    if not lines:
        raise sections.error(
            header, "listen", "needs at least one endpoint, such as tcp:8080"
        )
    seen: set[str] = set()
    for description in lines:
        if description in seen:
            raise sections.error(
                header, "listen", f"duplicate endpoint {description!r}"
            )
        seen.add(description)
        problem = _endpointProblem(description)
        if problem is not None:
            raise sections.error(
                header, "listen", f"cannot parse endpoint {description!r} ({problem})"
            )
    return tuple(lines)


def _endpointProblem(description: str) -> str | None:
    """
    Return why Twisted cannot parse the server endpoint string
    C{description}, or L{None} if it can.
    """
    # Parsing stores the reactor without using it for the endpoint types we
    # care about (tcp, tcp6, unix, ssl), so any object will do.
    reactorPlaceholder = object()
    try:
        serverFromString(reactorPlaceholder, description)
    # Endpoint parsers (including third-party plugins) raise all sorts of
    # exceptions for bad arguments; any of them means "cannot parse".
    except Exception as e:
        return str(e) or type(e).__name__
    return None


def _parseUpstream(sections: _Sections, header: str, name: str) -> UpstreamConfig:
    """
    Build the L{UpstreamConfig} of section C{[upstream NAME]}.
    """
    balance = sections.single(header, "balance")
    if balance is None:
        balance = "round_robin"
    elif balance not in BALANCE_METHODS:
        raise sections.error(
            header,
            "balance",
            f"unknown method {balance!r} (known: {', '.join(BALANCE_METHODS)})",
        )
    return UpstreamConfig(
        name=name,
        servers=_parseServers(sections, header),
        balance=balance,
        connect_timeout=sections.duration(header, "connect_timeout", 5.0),
        read_timeout=sections.duration(header, "read_timeout", 60.0),
        send_timeout=sections.duration(header, "send_timeout", 60.0),
        keepalive=sections.integer(header, "keepalive", 32, minimum=0),
        keepalive_timeout=sections.duration(header, "keepalive_timeout", 60.0),
        keepalive_requests=sections.integer(
            header, "keepalive_requests", 1000, minimum=1
        ),
    )


def _parseServers(sections: _Sections, header: str) -> tuple[ServerAddress, ...]:
    """
    Return the servers of an upstream section: at least one, no duplicates.
    """
    lines = sections.lines(header, "servers")
    if lines is None:
        raise sections.error(header, "servers", "missing required key")
    if not lines:
        raise sections.error(
            header, "servers", "needs at least one server, such as 10.0.0.1:80"
        )
    servers: list[ServerAddress] = []
    seen: dict[tuple[str, str, int], str] = {}
    for text in lines:
        try:
            server = _parseServerAddress(text)
        except ValueError as e:
            raise sections.error(header, "servers", str(e)) from None
        identity = (server.scheme, _canonicalHost(server.host), server.port)
        if identity in seen:
            raise sections.error(
                header,
                "servers",
                f"duplicate server {text!r} (same as {seen[identity]!r})",
            )
        seen[identity] = text
        servers.append(server)
    return tuple(servers)


def _parseServerAddress(text: str) -> ServerAddress:
    """
    Parse one entry of C{servers}: C{host:port}, C{[v6addr]:port}, C{host}
    (the scheme's default port, 80 for http) or any of those behind
    C{http://}.

    @raise ValueError: with a message quoting C{text}, if it is not a
        supported server address.
    """
    scheme = "http"
    rest = text
    if "://" in text:
        scheme, rest = text.split("://", 1)
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(
                f"unsupported scheme {scheme!r} in {text!r} "
                f"(supported: {', '.join(SCHEMES)})"
            )
        if "/" in rest.rstrip("/"):
            raise ValueError(
                f"unexpected path in {text!r}; give only scheme://host:port"
            )
        rest = rest.rstrip("/")
    host, portText = _splitHostPort(rest, text)
    port = _DEFAULT_PORTS[scheme] if portText is None else _parsePort(portText, text)
    return ServerAddress(host=host, port=port, scheme=scheme)


def _splitHostPort(hostPort: str, text: str) -> tuple[str, str | None]:
    """
    Split C{host:port} or C{[v6addr]:port} into host and port text (L{None}
    if there is no port), checking the host.
    """
    if hostPort.startswith("["):
        address, bracket, after = hostPort[1:].partition("]")
        if not bracket:
            raise ValueError(f"missing ']' in {text!r}")
        if after and not after.startswith(":"):
            raise ValueError(f"unexpected {after!r} after ']' in {text!r}")
        _checkIPv6(address, text)
        return address, (after[1:] if after else None)
    if hostPort.count(":") > 1:
        raise ValueError(f"IPv6 address needs brackets, like [::1]:8080, in {text!r}")
    host, colon, portText = hostPort.partition(":")
    if not host:
        raise ValueError(f"empty host in {text!r}")
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"bad host {host!r} in {text!r}")
    return host, (portText if colon else None)


def _checkIPv6(address: str, text: str) -> None:
    """
    Insist that C{address}, found between brackets, is an IPv6 address.
    """
    if not address:
        raise ValueError(f"empty host in {text!r}")
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        raise ValueError(f"bad IPv6 address {address!r} in {text!r}") from None


def _parsePort(portText: str, text: str) -> int:
    """
    Return C{portText} as a TCP port number, 1..65535.
    """
    # isdigit() alone would accept non-ASCII digits such as "٨٠".
    if not (portText.isascii() and portText.isdigit()):
        raise ValueError(f"bad port {portText!r} in {text!r}")
    port = int(portText)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range 1..65535 in {text!r}")
    return port


def _canonicalHost(host: str) -> str:
    """
    Return a spelling of C{host} that is equal for equal hosts, so that
    C{A:80} and C{a:80}, or C{[::1]} and C{[0::1]}, count as duplicates.
    """
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower()


def _parseRoute(sections: _Sections, header: str, name: str) -> RouteConfig:
    """
    Build the L{RouteConfig} of section C{[route NAME]}.
    """
    path = sections.single(header, "path", required=True)
    assert path is not None
    if not path.startswith("/"):
        raise sections.error(header, "path", f"must start with '/', got {path!r}")
    if any(character.isspace() for character in path):
        raise sections.error(header, "path", f"must not contain spaces, got {path!r}")
    upstream = sections.single(header, "upstream", required=True)
    assert upstream is not None
    return RouteConfig(name=name, path=path, upstream=upstream)


def _checkRoutes(
    source: str,
    routes: tuple[RouteConfig, ...],
    upstreams: Mapping[str, UpstreamConfig],
    headers: Mapping[str, str],
) -> None:
    """
    Check what no single route section can: that there is a route, that each
    names an existing upstream, and that no two share a path.
    """
    if not routes:
        raise ConfigError(
            source,
            None,
            None,
            "no [route NAME] section; at least one route is needed, such as "
            "[route default] with path = / and upstream = NAME",
        )
    paths: dict[str, str] = {}
    for route in routes:
        header = headers[route.name]
        if route.upstream not in upstreams:
            defined = ", ".join(upstreams) or "none"
            raise ConfigError(
                source,
                header,
                "upstream",
                f"no section [upstream {route.upstream}] "
                f"(defined upstreams: {defined})",
            )
        if route.path in paths:
            raise ConfigError(
                source,
                header,
                "path",
                f"path {route.path!r} is already used by [{paths[route.path]}]",
            )
        paths[route.path] = header
