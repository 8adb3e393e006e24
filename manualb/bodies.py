"""
Request bodies as the exchange sends them to a backend (L{IRequestBody}):
none at all (L{NO_BODY}), one that streams in from the client while it is
proxied, and one already read whole into a file.

A backend connection (C{manualb.handoff.UpstreamConnection}) takes them
through C{attachBody}, C{writeBody} and C{finishBody}.
"""

from __future__ import annotations

from typing import IO, Any, Callable

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from manualb.interfaces import IRequestBody

_BUFFER_LIMIT = 64 * 1024
_READ_SIZE = 64 * 1024


@implementer(IPushProducer)
class Still:
    """
    A producer with nothing to pause, resume or stop: the reader of a body
    whose client has left, or of no body at all.  One serves them all
    (L{STILL}).
    """

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


STILL = Still()


@implementer(IPushProducer, IRequestBody)
class NoBody(Still):
    """
    The body of a request that has none: nothing to send, nothing to keep.
    One serves every such request.
    """

    length = 0
    replayable = True
    complete = True

    def keepForRetry(self, limit: int) -> None:
        pass

    def limitTo(self, limit: int) -> bool:
        return True

    def hold(self, size: int, callback) -> None:
        callback(b"")

    def whenTooLarge(self, callback) -> None:
        pass

    def deliverTo(self, connection) -> None:
        connection.finishBody()

    def detach(self) -> None:
        pass

    def discard(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        pass

    def allReceived(self) -> None:
        pass


NO_BODY = NoBody()


@implementer(IPushProducer, IRequestBody)
class StreamingBody:
    """
    A request body that streams in from the client while it is proxied.

    Data is passed straight to the backend connection once there is one;
    until then, up to L{_BUFFER_LIMIT} bytes wait here and the client is
    paused.  When asked to (L{keepForRetry}), the body is also kept, up to a
    limit, so that it can be sent again to another server.

    @param length: The declared length, or L{None} for a chunked body.
    @param reader: Returns what reads the body from the client, to pause
        and resume (it may change, or go, while the body arrives).
    @param limit: The most bytes the body may have (C{client_max_body_size});
        0 for no limit.
    """

    def __init__(
        self, length: int | None, reader: Callable[[], IPushProducer], limit: int = 0
    ):
        self.length = length
        self._transport = reader
        self._limit = limit
        self._received = 0
        self._tooLarge: Callable[[], None] | None = None
        self._pending: list[bytes] = []
        self._pendingSize = 0
        self._kept: list[bytes] | None = None
        self._keptSize = 0
        self._keepLimit = 0
        self._delivered = False
        self._target: Any = None
        self.complete = False
        self._paused = False
        self._discarding = False
        # How much may wait here before the client is paused: more while
        # the body is held for a check (hold).
        self._bufferLimit = _BUFFER_LIMIT
        self._holdSize = 0
        self._holding: Callable[[bytes], None] | None = None

    def limitTo(self, limit: int) -> bool:
        """
        Hold the body to C{limit} bytes (0 for no limit) in place of the
        limit it was made with; before any of it is read.

        @return: Whether its declared length, if any, is within it.
        """
        self._limit = limit
        return not (limit and self.length is not None and self.length > limit)

    def hold(self, size: int, callback: Callable[[bytes], None]) -> None:
        """
        Keep the body from any backend until its first C{size} bytes (all of
        a shorter body) are in, then call C{callback} with them.  The client
        is paused only once more than both C{size} and L{_BUFFER_LIMIT} are
        waiting.
        """
        self._holdSize = size
        self._holding = callback
        self._bufferLimit = max(_BUFFER_LIMIT, size)
        self._checkHold()

    def _checkHold(self) -> None:
        if self._discarding:
            return
        if self._pendingSize >= self._holdSize or self.complete:
            callback, self._holding = self._holding, None
            self._bufferLimit = _BUFFER_LIMIT
            prefix = b"".join(self._pending)[: self._holdSize]
            callback(prefix)

    def keepForRetry(self, limit: int) -> None:
        self._kept = []
        self._keepLimit = limit

    @property
    def replayable(self) -> bool:
        return not self._delivered or self._kept is not None

    def whenTooLarge(self, callback: Callable[[], None]) -> None:
        """
        Call C{callback} if the body grows beyond C{limit} (only a chunked
        body can: a declared length beyond it is refused before any of the
        body is read); the rest of the body is dropped.
        """
        self._tooLarge = callback

    def dataReceived(self, data: bytes) -> None:
        """
        A piece of the body arrived.
        """
        if self._discarding:
            return
        self._received += len(data)
        if self._limit and self._received > self._limit:
            self.discard()
            if self._tooLarge is not None:
                self._tooLarge()
            return
        if self._kept is not None:
            self._keptSize += len(data)
            if self._keptSize > self._keepLimit:
                self._kept = None
            else:
                self._kept.append(data)
        if self._target is not None and not self._paused:
            self._delivered = True
            self._target.writeBody(data)
            return
        self._pending.append(data)
        self._pendingSize += len(data)
        if self._pendingSize >= self._bufferLimit or self._paused:
            # Also re-pauses a transport that the channel resumed on its own.
            self._transport().pauseProducing()
        if self._holding is not None:
            self._checkHold()

    def allReceived(self) -> None:
        """
        The whole body arrived.
        """
        self.complete = True
        if self._target is not None and not self._pending:
            self._target.finishBody()
        elif self._holding is not None:
            self._checkHold()

    def deliverTo(self, connection) -> None:
        if self._delivered:
            self._pending = list(self._kept)
            self._pendingSize = self._keptSize
        self._target = connection
        self._paused = False
        connection.attachBody(self)
        self._flush()

    def detach(self) -> None:
        self._target = None

    def _flush(self) -> None:
        target = self._target
        while self._pending and not self._paused and target is self._target:
            data = self._pending.pop(0)
            self._pendingSize -= len(data)
            self._delivered = True
            target.writeBody(data)
        if not self._pending and target is self._target:
            if self.complete:
                target.finishBody()
            else:
                self._transport().resumeProducing()

    def pauseProducing(self) -> None:
        self._paused = True
        self._transport().pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._target is not None:
            self._flush()

    def stopProducing(self) -> None:
        self.discard()

    def discard(self) -> None:
        self._target = None
        self._kept = None
        if self.complete or self._discarding:
            return
        self._discarding = True
        self._pending = []
        self._paused = False
        self._transport().resumeProducing()


@implementer(IPushProducer, IRequestBody)
class FileBody:
    """
    A request body that was read whole into a file first; it can always be
    sent again.
    """

    replayable = True

    def __init__(self, content: IO[bytes]):
        content.seek(0, 2)
        self.length = content.tell()
        content.seek(0, 0)
        self._content = content
        self._target: Any = None
        self._paused = False

    def keepForRetry(self, limit: int) -> None:
        pass

    def limitTo(self, limit: int) -> bool:
        return not limit or self.length <= limit

    def hold(self, size: int, callback: Callable[[bytes], None]) -> None:
        self._content.seek(0, 0)
        prefix = self._content.read(size)
        self._content.seek(0, 0)
        callback(prefix)

    def whenTooLarge(self, callback: Callable[[], None]) -> None:
        pass

    def deliverTo(self, connection) -> None:
        self._content.seek(0, 0)
        self._target = connection
        connection.attachBody(self)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        while not self._paused and self._target is not None:
            data = self._content.read(_READ_SIZE)
            if not data:
                target, self._target = self._target, None
                target.finishBody()
                return
            self._target.writeBody(data)

    def stopProducing(self) -> None:
        self.discard()

    def detach(self) -> None:
        self._target = None

    def discard(self) -> None:
        self._target = None
