"""
Server endpoint strings checked as the start will use them, but without
binding: what Twisted's parser refuses, ports out of range (which Twisted
parses and the start then fails to bind with a traceback), the directory of
a UNIX socket, and C{systemd:} endpoints, whose sockets exist only when
systemd starts the process (socket activation) and are therefore checked
for their syntax alone.

Whether an address can be bound (in use, not local, a port that needs
privileges) is known only by binding it, which only the start does.
"""

from __future__ import annotations

import os
import socket

from twisted.internet.endpoints import serverFromString

from manualb.termination import splitDescription

__all__ = ["endpointProblem", "socketFileProblem", "isSystemd"]

#: The endpoint types whose first argument is a TCP port.
_PORT_TYPES = ("tcp", "tcp6", "ssl")

#: The arguments of C{systemd:}, in the order Twisted takes them.
_SYSTEMD_ARGUMENTS = ("domain", "index", "name")


def _kind(args: list[str]) -> str:
    return args[0].strip().lower() if args else ""


def isSystemd(description: str) -> bool:
    """
    Whether C{description} is a C{systemd:} endpoint, a socket systemd
    hands over.
    """
    return _kind(splitDescription(description)[0]) == "systemd"


def endpointProblem(description: str) -> str | None:
    """
    Return why the start could not make a server endpoint of
    C{description}, or L{None} if it can (binding aside).
    """
    args, kwargs = splitDescription(description)
    kind = _kind(args)
    if kind == "systemd":
        return _systemdProblem(args[1:], kwargs)
    # Parsing stores the reactor without using it for the endpoint types we
    # care about (tcp, tcp6, unix, ssl), so any object will do.
    reactorPlaceholder = object()
    try:
        serverFromString(reactorPlaceholder, description)
    # Endpoint parsers (including third-party plugins) raise all sorts of
    # exceptions for bad arguments; any of them means "cannot parse".
    except Exception as e:
        return str(e) or type(e).__name__
    if kind in _PORT_TYPES:
        port = args[1] if len(args) > 1 else kwargs.get("port")
        if port is not None and not 0 <= int(port) <= 65535:
            return f"port {int(port)} out of range 0..65535"
    return None


def _systemdProblem(args: list[str], kwargs: dict[str, str]) -> str | None:
    """
    What Twisted would refuse in the arguments of C{systemd:} (see
    C{twisted.internet.endpoints._SystemdParser}), looking at no socket.
    """
    if len(args) > len(_SYSTEMD_ARGUMENTS):
        return f"systemd: takes {', '.join(_SYSTEMD_ARGUMENTS)}, got {len(args)} arguments"
    given = dict(zip(_SYSTEMD_ARGUMENTS, args))
    for name, value in kwargs.items():
        if name not in _SYSTEMD_ARGUMENTS or name in given:
            return (
                f"unexpected argument {name!r}: systemd: takes domain=INET|INET6|UNIX "
                f"and index=N or name=NAME"
            )
        given[name] = value
    domain = given.get("domain")
    if domain is None:
        return "systemd: needs domain=INET, INET6 or UNIX"
    if domain not in ("INET", "INET6", "UNIX") or not hasattr(socket, "AF_" + domain):
        return f"unknown domain {domain!r}: expected INET, INET6 or UNIX"
    if ("index" in given) == ("name" in given):
        return "systemd: takes exactly one of index=N or name=NAME"
    index = given.get("index")
    if index is not None and not (index.isascii() and index.isdigit()):
        return f"index must be a whole number from 0, got {index!r}"
    return None


def socketFileProblem(description: str) -> str | None:
    """
    Return why a C{unix:} endpoint cannot create its socket file (and lock
    file) where it says, or L{None} if it can or is of another type.
    """
    args, kwargs = splitDescription(description)
    if _kind(args) != "unix":
        return None
    address = args[1] if len(args) > 1 else kwargs.get("address")
    if not address:
        return None
    directory = os.path.dirname(os.path.abspath(address))
    if not os.path.isdir(directory):
        return f"endpoint {description!r}: directory {directory} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"endpoint {description!r}: directory {directory} is not writable"
    return None
