"""
Read and validate the manualb configuration file.

The file is INI (L{configparser}) and becomes the frozen data model of
L{manualb.config}.  Everything is checked before the load balancer starts
so that the rest of the program can trust these objects, and so that every
mistake stops start-up with one message naming the file, section and key
(L{ConfigError}) instead of a traceback or a surprise at request time.

Example::

    [manualb]
    listen = tcp:8080
    access_log = -

    [upstream my_backend_pool]
    servers =
        10.128.0.2:80 weight=2 max_fails=3 fail_timeout=30s
        10.128.0.3:80 slow_start=30s max_conns=100
        10.128.0.4:80 backup
    balance = least_conn
    connect_timeout = 5s
    passive_fail_on = 502 503 504
    health_check = path=/healthz interval=2s rise=2 fall=3 expect=2xx

    [route default]
    path = /
    upstream = my_backend_pool

    [route static]
    host = www.example.com
    path = ^~ /static/
    strip_prefix = on
    upstream = my_backend_pool

Files named in the configuration (certificates, keys, C{tls_ca}) are found
relative to the directory of the configuration file, or of the current
directory when the text does not come from a file.

This reader knows the sections and how they fit together; the keys it
reads are declared once, in the data model (L{manualb.config.key}), and
each stage reads the values whose syntax is its own: the URL map a route's
C{path}, C{host} and C{rewrite} (L{manualb.urlmap.parseRoute}), the
gatekeeper its IP rules, WAF and rate limits, in C{[gatekeeper]} and in
routes (L{manualb.gatekeeper.parseGatekeeperKeys},
L{manualb.gatekeeper.parseRouteKeys}), TLS
termination C{[tls]} and C{sni:} endpoints (L{manualb.termination}), the
balancers C{balance} (L{manualb.balancers.parseBalance}) and health
checking C{health_check} (L{manualb.health.parseHealthCheck}), the access
log its C{log_format} (L{manualb.accesslog.compileFormat}).
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping

import attrs

from manualb import termination, urlmap
from manualb.accesslog import compileFormat, parseAccessLog
from manualb.config import (
    AcmeConfig,
    Config,
    ConfigError,
    GatekeeperConfig,
    ListenerConfig,
    RouteConfig,
    StreamConfig,
    TLSConfig,
    UpstreamConfig,
    keys,
)
from manualb.gatekeeper import (
    GATEKEEPER_KEYS,
    ROUTE_KEYS,
    parseGatekeeperKeys,
    parseRouteKeys,
    routeWithKeys,
)
from manualb.endpoints import endpointProblem, socketFileProblem
from manualb.errorpages import parseErrorPages
from manualb.routecontrols import CONTROL_KEYS, parseRouteControls
from manualb.hsts import parseListenerHSTS, parseRouteHSTS
from manualb.includes import INCLUDE, compose, readText as readConfigText
from manualb.routelimits import parseRouteLimits
from manualb.upstreamconfig import keyDefault, parseUpstream, readKeys
from manualb.syntax import (
    SECTION_HEADER,
    IniLines,
    Section,
    anyPort,
    closest,
)

__all__ = [
    "KNOWN_KEYS", "parseConfig", "loadConfig", "placeError", "readConfigText", "withLine"
]

# configparser treats its default section specially (its keys leak into every
# other section).  A header cannot contain a newline, so no file can name this
# one and "[DEFAULT]" becomes an ordinary, unknown section.
_NO_DEFAULT_SECTION = "\n"

_KNOWN_SECTIONS = (
    "[manualb], [gatekeeper], [upstream NAME], [route NAME], [listener NAME], "
    "[stream NAME], [tls], [acme]"
)

#: The keys each kind of section knows, as the data model declares them.
#: The listen lines of C{[manualb]} are the listener C{"default"}, whose
#: C{redirect_https} is given there too.
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "manualb": (*keys(Config), "redirect_https", INCLUDE),
    "gatekeeper": (*keys(GatekeeperConfig), *GATEKEEPER_KEYS),
    "tls": tuple(keys(TLSConfig)),
    "acme": tuple(keys(AcmeConfig)),
    "upstream": tuple(keys(UpstreamConfig)),
    "route": (*keys(RouteConfig), *ROUTE_KEYS, *CONTROL_KEYS),
    "listener": tuple(keys(ListenerConfig)),
    "stream": tuple(keys(StreamConfig)),
}

# The status codes passive_fail_on accepts.


def loadConfig(path: str, requireListen: bool = False) -> Config:
    """
    Read and validate the configuration file at C{path}.

    @param requireListen: See L{parseConfig}.

    @raise ConfigError: if the file cannot be read (naming the file and the
        operating system's reason) or its contents are wrong, naming the
        line of the section or key too (see L{withLine}).
    """
    composed = compose(path)
    try:
        return parseConfig(composed.text, path, requireListen)
    except ConfigError as e:
        raise composed.place(withLine(e, composed.text)) from None


def placeError(error: ConfigError, path: str) -> ConfigError:
    """
    Give C{error}, about the configuration file at C{path} as L{loadConfig}
    reads it (its includes too), the file and line of its section or key.
    """
    composed = compose(path)
    return composed.place(withLine(error, composed.text))


def withLine(error: ConfigError, text: str) -> ConfigError:
    """
    Give C{error} the line of its section or key in C{text}, the file's
    contents, unless it has one or is not about a section.  The reader
    raises errors with the section and the key: their line is found once
    something is wrong, by L{IniLines}.
    """
    if error.line is None:
        error.line = IniLines(text).locate(error.section, error.key, error.message)
    return error


def parseConfig(
    text: str, source: str = "<string>", requireListen: bool = False
) -> Config:
    """
    Parse and validate configuration file contents.

    @param text: The contents of the file.
    @param source: File name to put in error messages and L{Config.source}.
        Relative paths in the file are relative to its directory when it
        names a file, else to the current directory.
    @param requireListen: Refuse a file that listens on nothing (no
        C{[manualb] listen}, no C{[listener]} or C{[stream]} section), as a
        process that serves the file must.  Without it, such a file is fine:
        an embedder mounts L{manualb.service.LoadBalancer.resource} in a
        site of its own.

    @raise ConfigError: on the first mistake found.
    """
    parser = _readIni(text, source)
    sections = _Sections(source, parser)
    sections.classify(requireListen)
    directory = _configDirectory(source)
    listen, accessLog, redirect = _parseMain(sections, requireListen)
    clientTimeout = None
    shutdownTimeout = keyDefault(Config, "shutdown_timeout")
    explainRecords = keyDefault(Config, "explain_records")
    workers = keyDefault(Config, "workers")
    frontEnd = None
    if sections.main is not None:
        main = readKeys(sections.section(sections.main), Config, {"client_timeout": None})
        clientTimeout = main["client_timeout"]
        shutdownTimeout = main["shutdown_timeout"]
        explainRecords = main["explain_records"]
        workers = main["workers"]
        frontEnd = main["front_end"]
    logFormat = _parseLogFormat(sections)
    admin = adminToken = state = instance = None
    if sections.main is not None:
        # The admin listener's and the shared state's modules are loaded
        # only by a configuration that has them.
        mainSection = sections.section(sections.main)
        if _given(mainSection, "admin", "admin_token_file"):
            from manualb.admin import parseAdminKeys

            admin, adminToken = parseAdminKeys(mainSection, directory)
        if _given(mainSection, "state", "instance"):
            from manualb.state import parseStateKeys

            state, instance = parseStateKeys(mainSection)
    gatekeeper = _parseGatekeeper(sections, clientTimeout)
    tls = None
    if sections.tls is not None:
        tls = termination.parseTLS(sections.section(sections.tls), directory)
    upstreams = {
        name: parseUpstream(sections.section(header), name, directory)
        for name, header in sections.upstreams.items()
    }
    routes = tuple(
        _parseRoute(sections.section(header), name, gatekeeper, directory)
        for name, header in sections.routes.items()
    )
    listeners = tuple(
        _withPages(sections, each, directory)
        for each in _parseListeners(sections, listen, redirect)
    )
    pages = serverTokens = None
    if sections.main is not None:
        serverTokens = main["server_tokens"]
        pages = parseErrorPages(sections.section(sections.main), directory)
    streams = tuple(
        _parseStream(sections, header, name, upstreams)
        for name, header in sections.streams.items()
    )
    _checkRoutes(source, routes, upstreams, sections.routes, needed=bool(listeners))
    _checkEndpointsUnique(sections, listen, listeners, streams)
    acme = None
    if sections.acme is not None or (tls is not None and tls.acme):
        from manualb.autotls import parseAcme

        acme, tls = parseAcme(
            sections.section(sections.acme) if sections.acme else None,
            sections.error, directory, tls, listeners,
        )
    return Config(
        source=source,
        listen=listen,
        access_log=accessLog[0],
        access_log_buffer=accessLog[1],
        access_log_flush=accessLog[2],
        log_format=logFormat,
        upstreams=upstreams,
        routes=routes,
        client_timeout=keyDefault(Config, "client_timeout")
        if clientTimeout is None
        else clientTimeout,
        shutdown_timeout=shutdownTimeout,
        explain_records=explainRecords,
        workers=workers,
        admin=admin,
        admin_token_file=adminToken,
        state=state,
        instance=instance,
        front_end=frontEnd,
        listeners=listeners,
        tls=tls,
        streams=streams,
        gatekeeper=gatekeeper,
        acme=acme,
        server_tokens=keyDefault(Config, "server_tokens")
        if serverTokens is None
        else serverTokens,
        error_page=pages or (),
    )


_NOTHING_TO_LISTEN_ON = (
    "nothing to listen on: give endpoints here, such as listen = tcp:8080, or "
    "add a [listener NAME] or [stream NAME] section"
)


def _parseGatekeeper(
    sections: "_Sections", clientTimeout: float | None
) -> GatekeeperConfig:
    """
    The C{[gatekeeper]} section, or its defaults; C{[manualb]
    client_timeout}, when given, is the default of the three timeouts that
    it used to stand for.
    """
    default = GatekeeperConfig()
    if clientTimeout is not None:
        default = attrs.evolve(
            default,
            client_header_timeout=clientTimeout,
            client_body_timeout=clientTimeout,
            keepalive_timeout=clientTimeout,
        )
    if sections.gatekeeper is None:
        return default
    section = sections.section(sections.gatekeeper)
    return GatekeeperConfig(
        **readKeys(section, GatekeeperConfig, attrs.asdict(default, recurse=False)),
        **parseGatekeeperKeys(section, default),
    )


def _parseRoute(
    section: Section, name: str, gatekeeper: GatekeeperConfig, directory: str
) -> RouteConfig:
    """
    The L{RouteConfig} of section C{[route NAME]}: what the URL map reads
    of it (L{urlmap.parseRoute}), what the gatekeeper does
    (L{parseRouteKeys}), and its controls (L{parseRouteControls}).
    """
    route = urlmap.parseRoute(section, name)
    route = attrs.evolve(route, **parseRouteLimits(section), **parseRouteHSTS(section))
    route = routeWithKeys(route, parseRouteKeys(section, gatekeeper))
    return routeWithKeys(route, parseRouteControls(section, directory))


def _withPages(sections: _Sections, listener: ListenerConfig, directory: str) -> ListenerConfig:
    """
    C{listener} with the C{error_page} of its C{[listener NAME]}, if any.
    """
    header = sections.listeners.get(listener.name)
    if header is None:
        return listener
    return attrs.evolve(listener, error_page=parseErrorPages(sections.section(header), directory))


def _configDirectory(source: str) -> str:
    """
    Return the absolute directory that relative paths in the configuration
    are relative to: that of the file C{source}, or the current directory
    when C{source} is not a file (such as C{"<string>"}).
    """
    if os.path.isfile(source):
        return os.path.dirname(os.path.abspath(source))
    return os.getcwd()


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
    parser.SECTCRE = SECTION_HEADER
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
    duplicate sections and keys.

    @ivar main: The header of the C{[manualb]} section, or L{None}.
    @ivar tls: The header of the C{[tls]} section, or L{None}.
    @ivar gatekeeper: The header of the C{[gatekeeper]} section, or L{None}.
    @ivar upstreams: Upstream name to section header, in file order.
    @ivar routes: Route name to section header, in file order.
    @ivar listeners: Listener name to section header, in file order.
    @ivar streams: Stream name to section header, in file order.
    """

    def __init__(self, source: str, parser: configparser.RawConfigParser) -> None:
        self.source = source
        self.parser = parser
        self.main: str | None = None
        self.tls: str | None = None
        self.gatekeeper: str | None = None
        self.acme: str | None = None
        self.upstreams: dict[str, str] = {}
        self.routes: dict[str, str] = {}
        self.listeners: dict[str, str] = {}
        self.streams: dict[str, str] = {}

    def error(self, section: str | None, key: str | None, message: str) -> ConfigError:
        """
        Make a L{ConfigError} for this file.
        """
        return ConfigError(self.source, section, key, message)

    def section(self, header: str) -> Section:
        """
        The keys of section C{[header]}, handed out with errors that name
        this file, the section and the key.
        """
        return Section(
            header,
            dict(self.parser.items(header)),
            lambda key, message: self.error(header, key, message),
        )

    def classify(self, requireListen: bool) -> None:
        """
        Sort every section by kind and check its keys against the known ones.
        With C{requireListen}, C{[manualb]} is required unless C{[listener]}
        or C{[stream]} sections do the listening.
        """
        for header in self.parser.sections():
            self._classifyOne(header)
        if (
            requireListen
            and self.main is None
            and not self.listeners
            and not self.streams
        ):
            raise self.error(
                "manualb",
                None,
                "missing section (it holds 'listen', which is required)",
            )

    def _classifyOne(self, header: str) -> None:
        words = header.split()
        kind = words[0] if words else ""
        known = KNOWN_KEYS.get(kind)
        if kind in ("manualb", "tls", "gatekeeper", "acme"):
            if len(words) > 1:
                raise self.error(header, None, f"[{kind}] takes no name")
            attribute = "main" if kind == "manualb" else kind
            seen = getattr(self, attribute)
            if seen is not None:
                raise self.error(header, None, f"duplicate section (see [{seen}])")
            setattr(self, attribute, header)
        elif kind in ("upstream", "route", "listener", "stream"):
            name = self._sectionName(header, words)
            named = getattr(self, kind + "s")
            if name in named:
                raise self.error(
                    header, None, f"duplicate section (see [{named[name]}])"
                )
            named[name] = header
        else:
            meant = closest(kind, KNOWN_KEYS)
            suggestion = ""
            if meant is not None:
                suggestion = "; did you mean [%s]?" % " ".join([meant, *words[1:]])
            raise self.error(
                header,
                None,
                f"unknown section (known sections: {_KNOWN_SECTIONS}){suggestion}",
            )
        assert known is not None
        for key in self.parser.options(header):
            if key not in known:
                meant = closest(key, known)
                suggestion = "" if meant is None else f"; did you mean {meant!r}?"
                raise self.error(
                    header,
                    key,
                    f"unknown key (known keys: {', '.join(known)}){suggestion}",
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


def _parseMain(
    sections: _Sections, requireListen: bool
) -> tuple[tuple[str, ...], tuple[str | None, int, float | None], int | None]:
    """
    Return C{(listen, access_log, redirect_https)} from the C{[manualb]}
    section, or their defaults when there is none; C{access_log} as
    L{parseAccessLog} reads it.  C{listen} may be left
    out (giving no endpoint), unless C{requireListen} and no C{[listener]}
    or C{[stream]} sections listen instead.
    """
    accessLog = keyDefault(Config, "access_log")
    assert isinstance(accessLog, str)
    if sections.main is None:
        return (), (accessLog, 0, None), None
    section = sections.section(sections.main)
    if section.lines(INCLUDE) is not None:
        raise section.error(INCLUDE, "includes are read from a file only (loadConfig)")
    listen = _parseEndpoints(sections, section, required=False)
    if listen is None:
        if requireListen and not sections.listeners and not sections.streams:
            raise section.error("listen", _NOTHING_TO_LISTEN_ON)
        listen = ()
    redirect = _parseRedirect(section, listen)
    given = section.single("access_log") or accessLog
    try:
        target, buffer, flush = parseAccessLog(given)
    except ValueError as e:
        raise section.error("access_log", str(e)) from None
    return listen, (target, buffer, flush), redirect


def _given(section: Section, *names: str) -> bool:
    """
    Whether C{section} has any of the keys C{names}.
    """
    return any(section.lines(name) is not None for name in names)


def _parseLogFormat(sections: _Sections) -> str:
    """
    The C{log_format} of C{[manualb]}, checked (every variable known).
    """
    default = keyDefault(Config, "log_format")
    if sections.main is None:
        return default
    section = sections.section(sections.main)
    text = section.single("log_format")
    if text is None:
        return default
    try:
        compileFormat(text)
    except ValueError as e:
        raise section.error("log_format", str(e)) from None
    return text


def _parseRedirect(section: Section, listen: tuple[str, ...]) -> int | None:
    """
    Return the port of C{redirect_https = off|on|PORT} (C{on} is 443), or
    L{None} for C{off} or when absent; C{listen} are the endpoints it
    applies to, of which at least one must be plain (not C{sni:}).
    """
    text = section.single("redirect_https")
    if text is None or text.lower() == "off":
        return None
    if text.lower() == "on":
        port = 443
    elif text.isascii() and text.isdigit():
        port = int(text)
        if not 1 <= port <= 65535:
            raise section.error("redirect_https", f"port {port} out of range 1..65535")
    else:
        raise section.error(
            "redirect_https",
            f"expected off, on (port 443) or a port number, got {text!r}",
        )
    if not listen:
        raise section.error(
            "redirect_https",
            "there is no listen here for it to apply to; set redirect_https "
            "in the [listener NAME] whose connections should be redirected",
        )
    if all(termination.isSNI(description) for description in listen):
        raise section.error(
            "redirect_https",
            "every endpoint of listen is sni: (TLS already), so there is "
            "nothing to redirect; it applies to plain endpoints such as tcp:80",
        )
    return port


def _parseEndpoints(
    sections: _Sections, section: Section, required: bool, allowSNI: bool = True
) -> tuple[str, ...] | None:
    """
    Return the endpoint strings of C{listen}, or L{None} if the optional key
    is absent.  Each is checked as the start will use it, without binding
    (L{endpointProblem}, L{socketFileProblem}), so that a typo is reported
    now rather than when listening, except manualb's C{sni:}, which is
    checked by L{termination.parseSNIDescription} and needs a C{[tls]}
    section.

    @param allowSNI: Whether C{sni:} endpoints may be given (HTTP listeners)
        or not (streams).
    """
    lines = section.lines("listen")
    if lines is None:
        if required:
            raise section.error("listen", "missing required key")
        return None
    if not lines:
        raise section.error("listen", "needs at least one endpoint, such as tcp:8080")
    seen: set[str] = set()
    for description in lines:
        if description in seen:
            raise section.error("listen", f"duplicate endpoint {description!r}")
        seen.add(description)
        isSNI = termination.isSNI(description)
        if isSNI:
            if not allowSNI:
                raise section.error(
                    "listen",
                    f"endpoint {description!r} cannot be used here: sni: "
                    f"terminates TLS for HTTP routes, while a stream passes "
                    f"bytes through (listen with tcp: instead)",
                )
            problem = _sniProblem(description)
        else:
            problem = endpointProblem(description)
        if problem is not None:
            raise section.error(
                "listen", f"cannot parse endpoint {description!r} ({problem})"
            )
        problem = socketFileProblem(description)
        if problem is not None:
            raise section.error("listen", problem)
        if isSNI and sections.tls is None and sections.acme is None:
            raise section.error(
                "listen",
                f"endpoint {description!r} needs a [tls] section, whose "
                f"certificates it serves",
            )
    return tuple(lines)


def _sniProblem(description: str) -> str | None:
    """
    Return what is wrong with the C{sni:} endpoint string C{description}, or
    L{None} if nothing is.
    """
    try:
        termination.parseSNIDescription(description)
    except ValueError as e:
        return str(e)
    return None


def _parseListeners(
    sections: _Sections, listen: tuple[str, ...], redirect: int | None
) -> tuple[ListenerConfig, ...]:
    """
    Return the HTTP listeners: C{"default"} for the C{listen} lines of
    C{[manualb]} (with its C{redirect_https}), if it has any, then the
    C{[listener NAME]} sections in file order.
    """
    listeners = []
    if listen:
        listeners.append(ListenerConfig("default", listen, None, redirect))
    for name, header in sections.listeners.items():
        section = sections.section(header)
        if name == "default" and listen:
            raise section.error(
                None,
                "the name 'default' is taken by the listen lines of [manualb]; "
                "choose another",
            )
        endpoints = _parseEndpoints(sections, section, required=True)
        assert endpoints is not None
        listeners.append(
            ListenerConfig(
                name,
                endpoints,
                _parseListenerRoutes(sections, section),
                _parseRedirect(section, endpoints),
                hsts=parseListenerHSTS(
                    section,
                    any(termination.isSNI(each) or each.startswith("ssl:") for each in endpoints),
                ),
                front_end=section.read("front_end", keys(ListenerConfig)["front_end"]),
            )
        )
    return tuple(listeners)


def _parseListenerRoutes(sections: _Sections, section: Section) -> tuple[str, ...] | None:
    """
    Return the route names of a listener's C{routes}, each of an existing
    C{[route NAME]} and none twice, or L{None} (all routes) if absent.
    """
    text = section.single("routes")
    if text is None:
        return None
    names: list[str] = []
    for name in text.split():
        if name not in sections.routes:
            defined = ", ".join(sections.routes) or "none"
            raise section.error(
                "routes", f"no section [route {name}] (defined routes: {defined})"
            )
        if name in names:
            raise section.error("routes", f"route {name!r} given twice")
        names.append(name)
    return tuple(names)


def _parseStream(
    sections: _Sections,
    header: str,
    name: str,
    upstreams: Mapping[str, UpstreamConfig],
) -> StreamConfig:
    """
    Build the L{StreamConfig} of section C{[stream NAME]}.
    """
    section = sections.section(header)
    listen = _parseEndpoints(sections, section, required=True, allowSNI=False)
    assert listen is not None
    upstream = section.single("upstream", required=True)
    assert upstream is not None
    if upstream not in upstreams:
        defined = ", ".join(upstreams) or "none"
        raise section.error(
            "upstream",
            f"no section [upstream {upstream}] (defined upstreams: {defined})",
        )
    proxyProtocol = None
    text = section.single("proxy_protocol")
    if text is not None:
        if text.lower() not in ("off", "v1", "v2"):
            raise section.error(
                "proxy_protocol", f"expected off, v1 or v2, got {text!r}"
            )
        if text.lower() != "off":
            proxyProtocol = text.lower()
    return StreamConfig(
        name=name,
        listen=listen,
        upstream=upstream,
        proxy_protocol=proxyProtocol,
        **readKeys(section, StreamConfig),  # type: ignore[arg-type]
    )


def _checkEndpointsUnique(
    sections: _Sections,
    listen: tuple[str, ...],
    listeners: tuple[ListenerConfig, ...],
    streams: tuple[StreamConfig, ...],
) -> None:
    """
    Insist that no endpoint string is given by two of C{[manualb] listen},
    the listeners and the streams (the duplicates within one C{listen} are
    found while parsing it).
    """
    owners: list[tuple[str, tuple[str, ...]]] = []
    named = listeners
    if listen:
        assert sections.main is not None
        owners.append((sections.main, listen))
        named = listeners[1:]
    for listener in named:
        owners.append((sections.listeners[listener.name], listener.listen))
    for stream in streams:
        owners.append((sections.streams[stream.name], stream.listen))
    used: dict[str, str] = {}
    for header, endpoints in owners:
        for description in endpoints:
            if anyPort(description):
                # Port 0 asks for a free port: each such endpoint gets its own.
                continue
            if description in used:
                raise sections.error(
                    header,
                    "listen",
                    f"endpoint {description!r} is already used by "
                    f"[{used[description]}]",
                )
        for description in endpoints:
            used[description] = header


def _checkRoutes(
    source: str,
    routes: tuple[RouteConfig, ...],
    upstreams: Mapping[str, UpstreamConfig],
    headers: Mapping[str, str],
    needed: bool,
) -> None:
    """
    Check what no single route section can: that there is a route when
    C{needed} (when there are HTTP listeners), that each names an existing
    upstream, and that no two share a host and a path
    (L{urlmap.claimPath}).
    """
    if not routes and needed:
        raise ConfigError(
            source,
            None,
            None,
            "no [route NAME] section; at least one route is needed, such as "
            "[route default] with path = / and upstream = NAME",
        )
    paths: dict = {}
    for route in routes:
        header = headers[route.name]
        if route.upstream is not None and route.upstream not in upstreams:
            defined = ", ".join(upstreams) or "none"
            raise ConfigError(
                source,
                header,
                "upstream",
                f"no section [upstream {route.upstream}] "
                f"(defined upstreams: {defined})",
            )
        try:
            urlmap.claimPath(paths, route, lambda other: f"[{headers[other.name]}]")
        except ValueError as e:
            raise ConfigError(source, header, "path", str(e)) from None
