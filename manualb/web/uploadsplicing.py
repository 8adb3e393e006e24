"""
Big request bodies at kernel speed: the rest of an upload of known length
goes from the client's socket to the backend's through a pipe with
C{splice(2)}, as response bodies do (L{manualb.web.splicing}), never
through Python.

It takes over when the lean front end (L{manualb.front.http1}) reads a
body with a C{Content-Length} from a plain TCP client for the one request
it is answering (none pipelined before it), the exchange has passed that
body to a plain TCP backend connection (L{manualb.handoff.UpstreamConnection})
that is still sending it, and at least L{SPLICE_MIN} bytes of it are still
to come.  A TLS client or backend, a chunked body, a body held for a check
(the WAF's, L{SplicingBody.hold}), a body still kept to be sent again to
another server (C{retry_body_limit}), a backend that already answered, and
a system without C{os.splice} keep the copying path.  A spliced body cannot
be sent again: the exchange sees it as not replayable.

The two transports stay what the reactor knows: the client's C{doRead}
and the backend's C{doWrite} are those of the splice while it lasts:
    - what the backend connection has not sent yet (the request head, the
      first bytes of the body) goes into the pipe first;
    - a backend that takes nothing while the pipe holds bytes stops the
      client being read and arms C{send_timeout}, through the backend
      connection's own producer of the body; each byte from the client
      re-arms C{client_body_timeout};
    - a client that goes away, or a backend whose socket fails, ends the
      splice: the client's connection or the backend's then finds out as it
      would have on the copying path, and what remains of the body, if
      anything, is read by the front end's parser again;
    - the last byte delivered ends the body as if the parser had read it:
      the request goes on to its response, and the client to its next
      request.

The pipe is closed whatever way the splice ends (L{UploadSplice.cancel}).
"""

from __future__ import annotations


from manualb.bodies import StreamingBody
from manualb.handoff import ConnectionState, UpstreamConnection
import manualb.web.splicing as splicing
from manualb.web.splicing import (
    SPLICE_MIN,
    PipedBody,
    _forget,
    _plainTCP,
    _unsent,
    openPipe,
    restoreWriting,
)

__all__ = ["SPLICE_MIN", "SplicingBody", "UploadSplice"]


class SplicingBody(StreamingBody):
    """
    A request body of known length that the lean front end reads for
    C{request} (a L{manualb.front.request.LeanRequest}), whose rest may be
    spliced (L{offer}).

    @ivar inspected: Whether a stage reads the body (L{hold}): it is then
        never spliced.
    @ivar spliced: Whether a splice took (part of) the body; there is only
        ever one.
    """

    def __init__(self, length: int, reader, limit: int, request) -> None:
        super().__init__(length, reader, limit)
        self.request = request
        self.inspected = False
        self.spliced = False

    def hold(self, size, callback) -> None:
        self.inspected = True
        super().hold(size, callback)

    def offer(self) -> None:
        """
        Splice the rest of the body if it can be, now that the front end
        has read and parsed all it received (called after each read, for
        the request it is answering).
        """
        left = self.length - self._received
        if (
            left < SPLICE_MIN
            or self.spliced
            or self.inspected
            or not splicing.enabled
            or self.complete
            or self._discarding
            or self._paused
            or self._pending
        ):
            return
        upstream = self._target
        if (
            not isinstance(upstream, UpstreamConnection)
            or upstream.state is not ConnectionState.SENDING
            or upstream.splice is not None
            or upstream._throttle is None
        ):
            return
        if self._kept is not None and self.length <= self._keepLimit:
            # Kept whole, it can go to another server if this one fails.
            return
        client = self.request.connection.transport
        backend = upstream.transport
        if (
            not _plainTCP(client)
            or not _plainTCP(backend)
            or client.disconnecting
            or backend.disconnecting
            or backend.producerPaused
        ):
            return
        pending = _unsent(backend, None)
        try:
            pipe = openPipe(pending)
        except OSError:
            return
        if pipe is None:
            return
        readEnd, writeEnd, capacity = pipe
        _forget(backend)
        self.spliced = True
        # Not kept, and delivered: the exchange cannot send it again.
        self._kept = None
        self._delivered = True
        UploadSplice(self, upstream, left, readEnd, writeEnd, capacity, len(pending)).start()


class UploadSplice(PipedBody):
    """
    The rest of one request body on its way from a client socket to a
    backend socket through a pipe.

    C{left} is read from the client, which is not read (C{paused}) while
    the backend takes nothing (through the body's producer, which counts
    C{send_timeout}).
    """

    def __init__(
        self,
        body: SplicingBody,
        upstream: UpstreamConnection,
        left: int,
        readEnd: int,
        writeEnd: int,
        capacity: int,
        piped: int,
    ) -> None:
        super().__init__(body.request, upstream, left, readEnd, writeEnd, capacity, piped)
        self.body = body

    def start(self) -> None:
        """
        Take the two transports over and move what can be moved now.
        """
        self.upstream.splice = self
        self.client.doRead = self._clientReadable
        self.backend.doWrite = self._backendWritable
        self._pump()

    # The reactor's calls, as the transports' own.

    def _clientReadable(self):
        self._pump()

    def _backendWritable(self):
        self._pump()

    def _pump(self) -> None:
        """
        Move bytes client -> pipe -> backend until neither side takes more,
        then wait for the one that holds things up.
        """
        readEnd, writeEnd = self._readEnd, self._writeEnd
        clientFd, backendFd = self._clientFd, self._backendFd
        _splice = splicing._splice
        read = False
        while True:
            moved = False
            if self.piped:
                try:
                    sent = _splice(
                        readEnd,
                        backendFd,
                        self.piped,
                        flags=splicing._FILL | (splicing._MORE if self.left else 0),
                    )
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._backendFailed()
                    return
                if sent:
                    self.piped -= sent
                    moved = True
            if self.left and not self.paused and self.piped < self.capacity:
                try:
                    got = _splice(
                        clientFd,
                        writeEnd,
                        min(self.left, self.capacity - self.piped),
                        flags=splicing._FILL,
                    )
                except BlockingIOError:
                    got = -1
                except OSError:
                    got = 0
                if got == 0:
                    self._clientFailed()
                    return
                if got > 0:
                    self.left -= got
                    self.piped += got
                    moved = read = True
            if not moved:
                break
        if read:
            connection = self.connection
            connection._deadline.set(connection.gatekeeper.client_body_timeout)
        throttle = self.upstream._throttle
        if self.piped:
            # The backend takes no more for now: wait until it does, and
            # read no more from the client meanwhile.
            self.backend.startWriting()
            if not self.paused:
                self.paused = True
                throttle.pauseProducing()
            return
        self.backend.stopWriting()
        if self.paused:
            self.paused = False
            throttle.resumeProducing()
        if not self.left and self._readEnd >= 0:
            # The body is through: the request goes on as if the front
            # end's parser had read it.
            self.cancel()

    # Ending.

    def _clientFailed(self) -> None:
        """
        The client's socket is closed or failed: the splice ends, and the
        client's connection, still readable, finds out itself, which ends
        the exchange as a client gone does.
        """
        self.cancel()

    def _backendFailed(self) -> None:
        """
        The backend's socket failed (the backend closed): the splice ends,
        the client is no longer read, and the backend's connection, still
        readable, finds out itself (reading first any answer the backend
        sent before it closed).
        """
        paused = self.paused
        self.paused = True
        self.cancel()
        throttle = self.upstream._throttle
        if not paused and throttle is not None:
            throttle.pauseProducing()

    def cancel(self) -> None:
        """
        Give the transports back as they were, close the pipe, whatever is
        in it, and leave what is left of the body, if anything, to the
        front end's parser.  Called again, it does nothing.
        """
        if self._readEnd < 0:
            return
        upstream = self.upstream
        if upstream.splice is self:
            upstream.splice = None
        client, backend = self.client, self.backend
        if client.__dict__.get("doRead") == self._clientReadable:
            del client.doRead
        restoreWriting(backend, self._backendWritable)
        self._closePipe()
        self.body._received += self.total - self.left
        connection = self.connection
        if connection.transport is not None:
            connection._spliced(self.request, self.left)
