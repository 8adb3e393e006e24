"""
Listening sockets opened once and shared by several processes: a supervisor
binds each listen line of the configuration (with the privileges a port
below 1024 needs) and passes the sockets to its workers, which adopt them
(L{AdoptedEndpoint}) and accept on them side by side, the kernel handing
each new connection to one of them.

Lines of the types C{tcp:}, C{tcp6:}, C{ssl:}, C{sni:} and C{unix:} can be
shared: the socket of C{ssl:} and C{sni:} is plain TCP, and each worker
wraps the connections it accepts in TLS itself.
"""

from __future__ import annotations

import os
import socket
from typing import Iterable

import attrs
from twisted.internet.defer import execute
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from manualb.config import Config, ConfigError
from manualb.termination import DEFAULT_BACKLOG, splitDescription

__all__ = [
    "SHARED_TYPES",
    "AdoptedEndpoint",
    "ListenSockets",
    "SocketAddress",
    "bindLine",
    "listenLines",
    "lineProblem",
    "socketAddress",
]

#: The endpoint types whose sockets can be bound once and shared.
SHARED_TYPES = ("tcp", "tcp6", "ssl", "sni", "unix")

# The positional arguments of each type, in Twisted's order (manualb's for
# sni:), as far as binding needs them.
_POSITIONAL = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
    "ssl": ("port", "privateKey", "certKey", "sslmethod", "interface", "backlog"),
    "sni": ("port", "backlog"),
    "unix": ("address", "mode", "backlog", "lockfile"),
}


@attrs.frozen
class SocketAddress:
    """
    What binding a listen line takes.

    @ivar family: C{AF_INET}, C{AF_INET6} or C{AF_UNIX}.
    @ivar address: The address to bind: C{(host, port)}, or a path.
    @ivar backlog: The length of the queue of connections not yet accepted.
    @ivar mode: The permissions of a UNIX socket's file, or L{None}.
    """

    family: int
    address: object
    backlog: int = DEFAULT_BACKLOG
    mode: int | None = None


def listenLines(config: Config) -> tuple[str, ...]:
    """
    Every listen line of C{config}, its HTTP listeners' then its streams',
    each once.
    """
    lines: list[str] = []
    for owner in (*config.listeners, *config.streams):
        for description in owner.listen:
            if description not in lines:
                lines.append(description)
    return tuple(lines)


def socketAddress(description: str) -> SocketAddress:
    """
    What binding the listen line C{description} takes, as the endpoint the
    line names would bind it.

    @raise ValueError: It is not of a type in L{SHARED_TYPES}, or its port,
        backlog or mode is not a number.
    """
    args, kwargs = splitDescription(description)
    kind = args[0].strip().lower() if args else ""
    names = _POSITIONAL.get(kind)
    if names is None:
        raise ValueError(
            "workers share listen lines of the types %s only, not %s:"
            % (", ".join(t + ":" for t in SHARED_TYPES), kind)
        )
    given = dict(zip(names, args[1:]))
    given.update(kwargs)
    backlog = int(given.get("backlog", DEFAULT_BACKLOG))
    if kind == "unix":
        mode = int(given.get("mode", "666"), 8)
        return SocketAddress(socket.AF_UNIX, given.get("address", ""), backlog, mode)
    port = int(given.get("port", ""))
    if not 0 <= port <= 65535:
        raise ValueError("port %d out of range 0..65535" % (port,))
    interface = given.get("interface", "::" if kind == "tcp6" else "")
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    return SocketAddress(family, (interface, port), backlog)


def lineProblem(description: str) -> str | None:
    """
    Why the line C{description} cannot be shared by workers, or L{None}.
    """
    try:
        socketAddress(description)
    except ValueError as e:
        return str(e)
    return None


def bindLine(description: str) -> socket.socket:
    """
    Bind and listen on the socket of the listen line C{description}, as
    Twisted's endpoint for it would (C{SO_REUSEADDR} on TCP), not
    blocking.

    @raise ValueError: See L{socketAddress}.
    @raise OSError: It cannot be bound.
    """
    where = socketAddress(description)
    sock = socket.socket(where.family, socket.SOCK_STREAM)
    try:
        if where.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where.address)
        if where.mode is not None:
            os.chmod(where.address, where.mode)  # type: ignore[arg-type]
        sock.listen(where.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ListenSockets:
    """
    The sockets of the listen lines, each bound once.

    @ivar sockets: The socket of each line, by line.
    """

    def __init__(self) -> None:
        self.sockets: dict[str, socket.socket] = {}

    def bind(self, source: str, lines: Iterable[str]) -> list[str]:
        """
        Bind each of C{lines} that is not bound yet.

        @param source: The configuration file, for the message of an error.
        @raise ConfigError: A line cannot be bound: those bound by this call
            are closed again.
        @return: The lines bound now.
        """
        bound: list[str] = []
        for line in lines:
            if line in self.sockets:
                continue
            try:
                self.sockets[line] = bindLine(line)
            except (OSError, ValueError) as e:
                for each in bound:
                    self.sockets.pop(each).close()
                reason = getattr(e, "strerror", None) or str(e)
                raise ConfigError(
                    source, "manualb", "listen", "cannot listen on %s: %s" % (line, reason)
                ) from None
            bound.append(line)
        return bound

    def release(self, keep: Iterable[str]) -> list[str]:
        """
        Close the sockets of every line but C{keep}: processes that hold
        them still accept on their copies until they close them too.

        @return: The lines closed.
        """
        kept = set(keep)
        gone = [line for line in self.sockets if line not in kept]
        for line in gone:
            self.sockets.pop(line).close()
        return gone

    def address(self, line: str) -> str:
        """
        Where the socket of C{line} listens, readable: C{host:port} or its
        path.
        """
        name = self.sockets[line].getsockname()
        if isinstance(name, tuple):
            host = name[0]
            return ("[%s]:%d" if ":" in host else "%s:%d") % (host, name[1])
        return str(name)


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """
    A server endpoint over a listening socket that this process inherited
    (see L{ListenSockets}): listening adopts it
    (L{IReactorSocket.adoptStreamPort}), and with a context factory the
    connections it accepts speak TLS, as those of C{ssl:} and C{sni:}
    endpoints do.

    @ivar fileno: The inherited socket's descriptor.
    @ivar family: Its address family.
    @ivar contextFactory: The TLS context factory, or L{None} for plain
        connections.
    @ivar tlsFactory: What wraps the factory listened with in TLS, called
        as L{TLSMemoryBIOFactory} is.
    """

    tlsFactory = TLSMemoryBIOFactory

    def __init__(self, reactor, fileno: int, family: int, contextFactory=None) -> None:
        self.reactor = reactor
        self.fileno = fileno
        self.family = family
        self.contextFactory = contextFactory

    def listen(self, factory):
        if self.contextFactory is not None:
            factory = self.tlsFactory(self.contextFactory, False, factory, self.reactor)
        return execute(self.reactor.adoptStreamPort, self.fileno, self.family, factory)
