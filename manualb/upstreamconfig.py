"""
Reading the C{[upstream NAME]} sections of the configuration file: the
servers and their options, the strategy, the health checks, the timeouts;
and the simple keys every section declares in the data model
(L{manualb.config.key}).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from manualb import balancers, health, stickycookie
from manualb.config import ServerAddress, ServerConfig, UpstreamConfig, keys
from manualb.syntax import Section, canonicalHost, hostName, parseOptions, parseServerAddress, parseValue

_FAILURE_STATUS = re.compile(r"5[0-9][0-9]")


def keyDefault(cls: type, name: str) -> object:
    """
    The default of key C{name} of the attrs class C{cls}.
    """
    return keys(cls)[name].default


def readKeys(
    section: Section, cls: type, defaults: Mapping[str, object] | None = None
) -> dict[str, object]:
    """
    Read the simple keys of C{cls} (those whose L{manualb.config.Key} has a
    kind) from C{section}, each as its declaration says.

    @param defaults: The value of a key that is absent, by name, where it
        is not the field's default.
    """
    values = {}
    for name, spec in keys(cls).items():
        if spec.kind is None:
            continue
        if defaults is not None and name in defaults:
            values[name] = section.value(name, spec.kind, defaults[name], spec.minimum)
        else:
            values[name] = section.read(name, spec)  # type: ignore[arg-type]
    return values


def parseUpstream(section: Section, name: str, directory: str) -> UpstreamConfig:
    """
    Build the L{UpstreamConfig} of section C{[upstream NAME]}; C{directory}
    is where a relative C{tls_ca} is.
    """
    balance, balanceArgument = _parseBalance(section)
    values = readKeys(section, UpstreamConfig)
    tlsCA = section.file("tls_ca", directory)
    if tlsCA is not None and not values["tls_verify"]:
        raise section.error(
            "tls_ca",
            "has no use with tls_verify = off, which trusts any certificate; "
            "remove one of them",
        )
    tlsName = section.single("tls_name")
    if tlsName is not None:
        try:
            tlsName = hostName(tlsName, wildcard=False)
        except ValueError as e:
            raise section.error("tls_name", str(e)) from None
    servers = _parseServers(section)
    try:
        stickycookie.checkRoutes([server.route for server in servers], balance == "cookie")
    except stickycookie.RouteError as e:
        line = (section.lines("servers") or [])[e.index]
        raise section.error("servers", f"{e}, in {line!r}") from None
    return UpstreamConfig(
        name=name,
        servers=servers,
        balance=balance,
        balance_argument=balanceArgument,
        passive_fail_on=_parsePassiveFailOn(section),
        health_check=health.parseHealthCheck(section),
        tls_ca=tlsCA,
        tls_name=tlsName,
        **values,  # type: ignore[arg-type]
    )


def _parseBalance(section: Section) -> tuple[str, str | None]:
    """
    Return the method and the argument of C{balance}, as the balancers read
    them (L{balancers.parseBalance}), or the default method.
    """
    text = section.single("balance")
    if text is None:
        return keyDefault(UpstreamConfig, "balance"), None  # type: ignore[return-value]
    try:
        return balancers.parseBalance(text)
    except ValueError as e:
        raise section.error("balance", str(e)) from None


def _serverOptions() -> dict[str, object]:
    """
    The options of a server line (L{parseOptions}), as L{ServerConfig}
    declares them: a flag is bare, every other option is C{name=value}.
    """
    options: dict[str, object] = {}
    for name, spec in keys(ServerConfig).items():
        assert spec.kind is not None
        if spec.kind == "flag":
            options[name] = None
        else:
            options[name] = (
                lambda text, spec=spec: parseValue(text, spec.kind, spec.minimum),
                f"{name}={spec.example}",
            )
    return options


_SERVER_OPTIONS = _serverOptions()


def _parseServerLine(line: str) -> ServerConfig:
    """
    Parse one line of C{servers}: an address (L{parseServerAddress})
    followed by options separated by spaces, as nginx's C{server}
    parameters: C{10.0.0.1:80 weight=3 max_fails=2 fail_timeout=30s}.

    @raise ValueError: with a message quoting the line (or the address), if
        the address or an option is wrong.
    """
    text, *words = line.split()
    address = ServerAddress(*parseServerAddress(text))
    options = parseOptions(words, _SERVER_OPTIONS, line)  # type: ignore[arg-type]
    return ServerConfig(address, **options)  # type: ignore[arg-type]


def _parseServers(section: Section) -> tuple[ServerConfig, ...]:
    """
    Return the servers of an upstream section: at least one, no duplicate
    addresses, not all of them backups.
    """
    lines = section.lines("servers")
    if lines is None:
        raise section.error("servers", "missing required key")
    if not lines:
        raise section.error("servers", "needs at least one server, such as 10.0.0.1:80")
    servers: list[ServerConfig] = []
    seen: dict[tuple[str, int], str] = {}
    for line in lines:
        try:
            server = _parseServerLine(line)
        except ValueError as e:
            raise section.error("servers", str(e)) from None
        address = server.address
        written = line.split()[0]
        # Not the scheme: one port does not speak both http and https, and
        # logs, the access log and balancers know a server by host:port.
        identity = (canonicalHost(address.host), address.port)
        if identity in seen:
            raise section.error(
                "servers",
                f"duplicate server {written!r} (same as {seen[identity]!r})",
            )
        seen[identity] = written
        servers.append(server)
    if all(server.backup for server in servers):
        raise section.error(
            "servers",
            "every server is a backup; at least one must not be, since backup "
            "servers take requests only when no other server can",
        )
    return tuple(servers)


def _parsePassiveFailOn(section: Section) -> frozenset[int]:
    """
    Return the status codes of C{passive_fail_on = 502 503 504}: at least
    one if the key is there, each from 500 to 599, none twice.
    """
    text = section.single("passive_fail_on")
    if text is None:
        return frozenset()
    codes: set[int] = set()
    for word in text.split():
        if not _FAILURE_STATUS.fullmatch(word):
            raise section.error(
                "passive_fail_on",
                f"bad status code {word!r} in {text!r} (expected codes from 500 "
                f"to 599 separated by spaces, like 502 503 504)",
            )
        if int(word) in codes:
            raise section.error(
                "passive_fail_on", f"status code {word} given twice in {text!r}"
            )
        codes.add(int(word))
    return frozenset(codes)
