"""
The reactor C{twistd manualb} runs on where epoll is available (Linux):
Twisted's epoll reactor without the legacy log context it sets around
every event.

Twisted's reactors call each ready connection through
L{twisted.python.log.callWithLogger}, which asks the connection for its log
prefix and copies two context dictionaries so that a legacy C{log.msg} made
while handling the event names the connection as its C{system}.  That is
about a tenth of what a small proxied request costs manualb, which reads
twice a request (the client's request, the backend's response).  manualb
logs through L{twisted.logger.Logger}, whose events name their own
namespace, so only legacy messages of Twisted itself lose the prefix
(their C{system} is C{-}).  Errors are logged as before: the reactor's own
handling of a failed read or write (log it, close the connection) is
unchanged.

C{twistd manualb} and its workers install it (L{installDefault}) unless a
reactor was already chosen (C{twistd --reactor=NAME}); code that embeds
manualb may call L{installDefault} itself before it first imports
C{twisted.internet.reactor}.
"""

from __future__ import annotations

import errno
import select
import sys

from twisted.logger import Logger

__all__ = ["installDefault"]

log = Logger()


def installDefault() -> None:
    """
    Install a C{LeanEPollReactor} as C{twisted.internet.reactor}, unless a
    reactor is installed already or this system has no epoll (where
    Twisted's default is used).
    """
    if "twisted.internet.reactor" in sys.modules or not hasattr(select, "epoll"):
        return
    from twisted.internet.main import installReactor

    installReactor(LeanEPollReactor())


if hasattr(select, "epoll"):
    from select import EPOLLIN

    from twisted.internet.epollreactor import EPollReactor
    from twisted.internet.error import ConnectionFdescWentAway

    #: What a selectable whose descriptor is -1 (closed) has lost.
    _NO_FILEDESC = ConnectionFdescWentAway("File descriptor lost")

    __all__.append("LeanEPollReactor")

    class LeanEPollReactor(EPollReactor):
        """
        L{EPollReactor}, with each ready connection called directly (and a
        connection that is only readable read without a further call).
        """

        def doPoll(self, timeout: float | None) -> None:
            """
            Wait for events, at most C{timeout} seconds (for ever when
            L{None}), and handle them.
            """
            selectables = self._selectables
            try:
                events = self._poller.poll(-1 if timeout is None else timeout, len(selectables))
            except OSError as e:
                if e.errno == errno.EINTR:
                    return
                raise
            handle = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is None:
                    # Removed by the handling of an earlier event.
                    continue
                try:
                    if event != EPOLLIN:
                        handle(selectable, fd, event)
                        continue
                    # Readable, and nothing else: what the reactor's own
                    # handling does then, without its call.
                    inRead = False
                    try:
                        if selectable.fileno() == -1:
                            why = _NO_FILEDESC
                        else:
                            why = selectable.doRead()
                            inRead = True
                    except Exception as e:
                        log.failure("reading from {selectable}", selectable=selectable)
                        why = e
                    if why:
                        self._disconnectSelectable(selectable, why, inRead)
                except Exception:
                    log.failure("handling an event of {selectable}", selectable=selectable)

        doIteration = doPoll
