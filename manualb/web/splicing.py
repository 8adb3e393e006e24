"""
Big response bodies at kernel speed: the bytes of a long body of known
length go from the backend's socket to the client's through a pipe with
C{splice(2)}, as HAProxy does, never through Python.

It takes over when the lean front end (L{manualb.front.http1}) answers a
plain TCP client from a plain TCP backend connection
(L{manualb.handoff.UpstreamConnection}) and the exchange passes the body on
unchanged: what is left of it after a read (L{SPLICE_MIN} bytes or more)
moves in the kernel.  TLS on either side, a chunked or close-delimited
body, a body the proxy changes (compression), a client the front end is
still reading from, and a system without C{os.splice} keep the copying
path.

The two transports stay what the reactor knows: the backend's C{doRead} and
the client's C{doWrite} are those of the splice while it lasts, so its
readiness comes as theirs did, and everything that pauses, resumes, times
out or closes them works as it did:
    - what the client has not taken yet when the splice starts (the
      response head, the first bytes of the body) goes into the pipe first;
      the client's own reading stops until the body is through;
    - a client that takes nothing while the pipe is full pauses the backend
      connection and arms C{send_timeout}, through the front end's own
      L{IPushProducer}; each byte from the backend re-arms C{read_timeout};
    - a backend that closes early fails the exchange as a short body does,
      a client that goes away ends it as a client gone does;
    - the last byte delivered ends the response: the backend connection
      goes back to its pool and the client to its next request.

The pipe is closed whatever way the splice ends (L{Splice.cancel}).
"""

from __future__ import annotations

import errno
import os

from twisted.internet import tcp

from manualb.handoff import UpstreamClosed

try:
    import fcntl

    _SETPIPE = fcntl.F_SETPIPE_SZ
    _GETPIPE = fcntl.F_GETPIPE_SZ
    _splice = os.splice
    _FILL = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    _MORE = os.SPLICE_F_MORE
except (ImportError, AttributeError):
    _splice = None

#: The least body, in bytes left to move, worth a pipe of its own: below
#: it, the copying path costs less than the pipe's setup.
SPLICE_MIN = 64 * 1024

#: The capacity asked of each splice's pipe (C{F_SETPIPE_SZ}): how much of a
#: body the kernel holds between a fast backend and a slow client.  A system
#: that gives less (C{pipe-max-size}, C{pipe-user-pages-soft}) gives what
#: it can.
PIPE_SIZE = 256 * 1024

#: Whether bodies may be spliced at all: C{os.splice} exists (Linux).
enabled = _splice is not None


def _plainTCP(transport) -> bool:
    """
    Whether C{transport} is a TCP connection of the reactor's own with no
    TLS on it (startTLS sets C{TLS}; a TLS wrapper is no L{tcp.Connection}).
    """
    return isinstance(transport, tcp.Connection) and not transport.TLS and transport.connected


def takeBody(request, upstream, left: int) -> bool:
    """
    Offered the rest of a response body of known length that C{upstream}
    reads for C{request} (a L{manualb.front.request.LeanRequest}): splice it
    when it is long enough and both ends allow.

    @param left: The body's bytes still to come.
    @return: C{True} once the body is taken, or when it never will be
        (too short, TLS, chunked...); C{False} to be offered it again after
        the next read (the client is paused, or reading).
    """
    if not enabled or left < SPLICE_MIN:
        return True
    connection = request.connection
    client = connection.transport
    backend = upstream.transport
    if (
        request.finished
        or request.chunked
        or request.bodyless
        or not _plainTCP(client)
        or not _plainTCP(backend)
        or client.disconnecting
        or backend.disconnecting
    ):
        return True
    paused = connection.writePaused
    if not connection.quiet() or (paused and not client.producerPaused):
        return False
    pending = _unsent(client, request.head)
    try:
        pipe = openPipe(pending)
    except OSError:
        return False
    if pipe is None:
        return True
    readEnd, writeEnd, capacity = pipe
    request.head = None
    _forget(client)
    splice = Splice(request, upstream, left, readEnd, writeEnd, capacity, len(pending))
    if paused:
        # The client's transport paused the backend, its buffer full: it is
        # the splice's to resume once the pipe is empty.
        client.producerPaused = False
        splice.paused = True
    splice.start()
    return True


def _unsent(transport: tcp.Connection, head: bytes | None) -> bytes:
    """
    What the client's transport holds that it has not sent yet, followed by
    the response head not written yet, if any.
    """
    parts = []
    buffered = transport.dataBuffer
    if len(buffered) > transport.offset:
        parts.append(bytes(buffered[transport.offset :]))
    parts.extend(transport._tempDataBuffer)
    if head is not None:
        parts.append(head)
    return b"".join(parts)


def openPipe(pending: bytes) -> tuple[int, int, int] | None:
    """
    A pipe for a splice, non-blocking, of L{PIPE_SIZE} or what the system
    gives, holding C{pending} already: its read end, write end and
    capacity; L{None} when the system gives no pipe.

    @raise OSError: The pipe cannot hold C{pending} (closed again): a later
        try may do.
    """
    try:
        readEnd, writeEnd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.fcntl(writeEnd, _SETPIPE, PIPE_SIZE)
        except OSError:
            pass
        capacity = fcntl.fcntl(writeEnd, _GETPIPE)
        if len(pending) > capacity or (pending and os.write(writeEnd, pending) != len(pending)):
            raise BlockingIOError()
    except OSError:
        os.close(readEnd)
        os.close(writeEnd)
        raise
    return readEnd, writeEnd, capacity


def restoreWriting(transport: tcp.Connection, doWrite) -> None:
    """
    Give C{transport} its own C{doWrite} back, if a splice's C{doWrite}
    stands in for it, and have the reactor watch it for writing as its own
    buffers say: anything written meanwhile (an error page, a close) is the
    transport's own again.
    """
    if transport.__dict__.get("doWrite") != doWrite:
        return
    del transport.doWrite
    if transport.connected:
        if transport._tempDataBuffer or transport.disconnecting:
            transport.startWriting()
        else:
            transport.stopWriting()


def _forget(transport: tcp.Connection) -> None:
    """
    Empty the write buffer of C{transport}, whose contents went into the
    pipe, and stop it waiting to write them.
    """
    transport.dataBuffer = b""
    transport.offset = 0
    transport._tempDataBuffer = []
    transport._tempDataLen = 0
    transport.stopWriting()


class PipedBody:
    """
    What a body on its way through a pipe, either way, keeps: the request
    and its client connection, the backend connection, both transports and
    their descriptors, the pipe's ends and capacity, and the count of bytes.

    @ivar total: The bytes of the body the splice moves.
    @ivar left: Bytes still to read from the side that sends.
    @ivar piped: Bytes in the pipe, not yet taken by the side that receives.
    @ivar paused: Whether the side that sends is not read because the other
        takes nothing.
    """

    def __init__(
        self, request, upstream, left: int, readEnd: int, writeEnd: int, capacity: int, piped: int
    ) -> None:
        self.request = request
        self.connection = request.connection
        self.upstream = upstream
        self.client = request.connection.transport
        self.backend = upstream.transport
        self.total = left
        self.left = left
        self.piped = piped
        self.capacity = capacity
        self.paused = False
        self._readEnd = readEnd
        self._writeEnd = writeEnd
        self._clientFd = self.client.fileno()
        self._backendFd = self.backend.fileno()

    def _closePipe(self) -> None:
        os.close(self._readEnd)
        os.close(self._writeEnd)
        self._readEnd = self._writeEnd = -1


class Splice(PipedBody):
    """
    One response body on its way from a backend socket to a client socket
    through a pipe: C{left} is read from the backend, C{paused} while the
    client takes nothing (through the front end, which counts
    C{send_timeout}).
    """

    def start(self) -> None:
        """
        Take the two transports over and move what can be moved now.
        """
        self.upstream.splice = self
        self.backend.doRead = self._backendReadable
        self.client.doWrite = self._clientWritable
        self.connection._pauseReading(self)
        self._pump()

    # The reactor's calls, as the transports' own.

    def _backendReadable(self):
        self._pump()

    def _clientWritable(self):
        self._pump()

    def _pump(self) -> None:
        """
        Move bytes backend -> pipe -> client until neither side takes more,
        then wait for the one that holds things up.
        """
        readEnd, writeEnd = self._readEnd, self._writeEnd
        clientFd, backendFd = self._clientFd, self._backendFd
        while True:
            moved = False
            if self.piped:
                try:
                    sent = _splice(
                        readEnd, clientFd, self.piped, flags=_FILL | (_MORE if self.left else 0)
                    )
                except BlockingIOError:
                    sent = 0
                except OSError as e:
                    self._clientFailed(e)
                    return
                if sent:
                    self.piped -= sent
                    moved = True
                    if self.paused and not self.piped:
                        self.paused = False
                        self.connection.resumeProducing()
            if self.left and not self.paused and self.piped < self.capacity:
                try:
                    got = _splice(
                        backendFd,
                        writeEnd,
                        min(self.left, self.capacity - self.piped),
                        flags=_FILL,
                    )
                except BlockingIOError:
                    got = -1
                except OSError as e:
                    self._backendFailed(
                        "backend connection lost: " + (e.strerror or errno.errorcode.get(e.errno, str(e)))
                    )
                    return
                if got == 0:
                    self._backendFailed("backend closed the connection mid-response")
                    return
                if got > 0:
                    self.left -= got
                    self.piped += got
                    moved = True
                    self.upstream._armReadTimer()
            if not moved:
                break
        if self.piped:
            # The client takes no more for now: wait until it does, and
            # read no more from the backend meanwhile (the pipe may be full
            # even below its capacity, as each piece of a socket's data
            # takes a page of it).
            self.client.startWriting()
            if not self.paused:
                self.paused = True
                self.connection.pauseProducing()
            return
        self.client.stopWriting()
        if not self.left:
            self._finish()

    # Ending.

    def _finish(self) -> None:
        """
        The whole body went to the client: the transports are theirs again,
        and the response ends as if the backend connection had read it.
        """
        self.cancel()
        self.request.sent += self.total
        self.upstream.bodyPassed(self.total)

    def _clientFailed(self, reason: OSError) -> None:
        """
        The client's socket failed (it went away): the client connection is
        aborted, which abandons the exchange and its backend connection.
        """
        self.cancel()
        self.upstream.pauseProducing()
        self.client.abortConnection()

    def _backendFailed(self, why: str) -> None:
        """
        The backend's socket closed or failed before the body was through:
        the exchange fails as for a short body, and the client connection
        closes.
        """
        self.cancel()
        self.upstream.fail(UpstreamClosed(why, False))

    def cancel(self) -> None:
        """
        Give the transports back as they were and close the pipe, whatever
        is in it.  Called again, it does nothing.
        """
        if self._readEnd < 0:
            return
        self.upstream.splice = None
        backend, client = self.backend, self.client
        if backend.__dict__.get("doRead") == self._backendReadable:
            del backend.doRead
        restoreWriting(client, self._clientWritable)
        self._closePipe()
        self.connection._resumeReading(self)
