"""
Stage 1, the entry: the server endpoints of listen lines (Twisted's, with
nginx's backlog), and the lines a configuration listens on, each with its
owner.
"""

from __future__ import annotations

from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint

from manualb.config import Config, TLSConfig
from manualb.termination import DEFAULT_BACKLOG, isTLS, splitDescription, tolerateUnknownALPN
from manualb.web import sslContextFactory

# For each endpoint type that takes a backlog, how many positional arguments
# come before it: a string with more gives its backlog positionally
# (tcp:PORT:INTERFACE:BACKLOG, tcp6:PORT:BACKLOG, unix:PATH:MODE:BACKLOG,
# ssl:PORT:KEY:CERT:METHOD:INTERFACE:BACKLOG).
_BACKLOG_POSITION = {"tcp": 2, "tcp6": 1, "unix": 2, "ssl": 5, "sni": 1}


def withBacklog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """
    The endpoint string C{description} with C{backlog=BACKLOG} added when it
    is of a type that takes a backlog (C{tcp}, C{tcp6}, C{unix}, C{ssl},
    C{sni}) and gives none, so that every listener queues as many
    connections as nginx's (511) rather than Twisted's default 50.  A string
    that gives C{backlog=N} keeps it; other types are left as they are.
    """
    args, kwargs = splitDescription(description)
    position = _BACKLOG_POSITION.get(args[0].strip().lower())
    if position is None or "backlog" in kwargs or len(args) - 1 > position:
        return description
    trailing = len(description) - len(description.rstrip("\\"))
    if trailing % 2:
        # A lone final backslash would escape the colon added.
        return description
    return "%s:backlog=%d" % (description, backlog)


def serverEndpoint(
    reactor, description: str, tls: TLSConfig | None = None
) -> IStreamServerEndpoint:
    """
    Twisted's server endpoint for C{description}, with a backlog of
    L{DEFAULT_BACKLOG} unless it gives one (see L{withBacklog}); for
    C{ssl:}, a client offering by ALPN no protocol the factory speaks is
    served without ALPN rather than refused, and sessions resume from the
    cache as C{tls} says (see L{tolerateUnknownALPN}).
    """
    description = withBacklog(description)
    endpoint = serverFromString(reactor, description)
    if isTLS(description):
        tolerateUnknownALPN(sslContextFactory(endpoint), tls)
    return endpoint


def ownedLines(config: Config) -> list[tuple[str, str]]:
    """
    Every line C{config} listens on, with its owner: C{"listener NAME"},
    C{"stream NAME"} or C{"admin"}.
    """
    lines = [
        ("listener " + listener.name, description)
        for listener in config.listeners
        for description in listener.listen
    ]
    lines += [
        ("stream " + stream.name, description)
        for stream in config.streams
        for description in stream.listen
    ]
    if config.admin is not None:
        lines.append(("admin", config.admin))
    return lines
