"""
The TLS of manualb's listeners: Twisted's memory BIO TLS protocol
(L{twisted.protocols.tls}) with the costs of its hot path taken out.

Twisted's buffering TLS transport (C{BufferingTLSTransport}) holds every
write for a turn of the event loop (a C{callLater(0)} per response), then
encrypts it and hands the records to the TCP transport, which waits
another turn for the socket to be writable (two C{epoll_ctl} calls) before
it sends them; each received record costs three calls into OpenSSL, two of
which fail with an exception.  L{ServerTLS} instead:

  - sends a write at once when it is a whole response (L{ServerTLS.sendNow},
    which L{manualb.transports.sendNow} calls): encrypted in one go, the
    records read out of OpenSSL in one call and sent to the socket
    straight away when nothing is queued before them
    (L{manualb.transports.sendNow});
  - holds other writes (those of HTTP/2, of twisted.web) until the end of
    the received data that made them, or else for one turn of the event
    loop, as Twisted does, so that small writes still make one record;
  - does not ask OpenSSL for bytes to send after a read that gave
    application data: such a read makes none but for the rare
    post-handshake message (a key update), which the next write carries;
  - counts the whole records received, so as to stop reading when all are
    read rather than when OpenSSL fails to read one more;
  - once the handshake is done, moves application data in and out of
    OpenSSL by calling it directly through the C bindings pyOpenSSL itself
    uses (L{_DirectPath}), into one buffer kept for every connection,
    asking OpenSSL what went wrong only when a call fails: pyOpenSSL's
    methods allocate a buffer and ask after every call.  Where those
    bindings are not found, pyOpenSSL's methods serve (L{_PublicPath}).

Everything else (the handshake, SNI and ALPN, shutdown and abort,
producers, writes held while OpenSSL waits for the peer) is Twisted's.
"""

from __future__ import annotations

from typing import Any

from OpenSSL.SSL import Connection, Error, WantReadError, ZeroReturnError
from twisted.internet.interfaces import IDelayedCall
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from manualb.transports import sendNow

__all__ = ["ServerTLS", "ServerTLSFactory"]

#: The most plaintext one record carries.
_RECORD = 2**14

#: How many received plaintext bytes one call into OpenSSL gives at most.
_READ = 2**16

#: Bytes a record adds to its plaintext at most (header, explicit IV,
#: padding and MAC of the worst cipher suite), for sizing the read of the
#: records a write makes.
_RECORD_OVERHEAD = 128

#: The longest record TLS allows (TLS 1.2's: 16 KiB and 2 KiB of
#: expansion).
_LONGEST = 2**14 + 2048

#: Bytes held before they are written out without waiting for the turn of
#: the event loop (Twisted's own limit).
_HOLD = 64_000


class _PublicPath:
    """
    Application data in and out of a pyOpenSSL connection whose handshake
    is done, by pyOpenSSL's own methods.

    @ivar connection: The connection.
    """

    __slots__ = ("connection",)

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def feed(self, data: bytes) -> None:
        """
        Give OpenSSL the records C{data} received.
        """
        self.connection.bio_write(data)

    def read(self) -> bytes:
        """
        The plaintext of the next record, as pyOpenSSL's C{recv} gives it
        (and raises its errors: L{WantReadError} when no whole record is
        left).
        """
        return self.connection.recv(_READ)

    def write(self, data: bytes) -> int:
        """
        Encrypt C{data} (at most one record, L{_RECORD}); how much of it
        was taken, as pyOpenSSL's C{send}.
        """
        return self.connection.send(data)

    def records(self, size: int) -> bytes:
        """
        At most C{size} bytes of the records OpenSSL made to send; raises
        L{WantReadError} when there are none.
        """
        return self.connection.bio_read(size)


try:
    from OpenSSL.SSL import _ffi, _lib

    _SSL_read = _lib.SSL_read
    _SSL_write = _lib.SSL_write
    _BIO_read = _lib.BIO_read
    _BIO_write = _lib.BIO_write
    _unpack = _ffi.unpack
    #: The buffer every connection reads into: one reactor thread runs
    #: them all, and each read is copied out before the next.
    _BUFFER: Any = _ffi.new("char[]", _READ)
except (ImportError, AttributeError):  # pragma: no cover - other bindings
    _BUFFER = None


class _DirectPath:
    """
    L{_PublicPath} by direct calls into OpenSSL, through the bindings that
    pyOpenSSL's connection itself calls, on the C{SSL} and memory BIOs it
    holds.  A failed call is handed to the connection's own error handling,
    so that it raises what pyOpenSSL's method would.
    """

    __slots__ = ("connection", "_ssl", "_into", "_out")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._ssl = connection._ssl
        self._into = connection._into_ssl
        self._out = connection._from_ssl

    def feed(self, data: bytes) -> None:
        written = _BIO_write(self._into, data, len(data))
        if written <= 0:
            self.connection._handle_bio_errors(self._into, written)

    def read(self) -> bytes:
        size = _SSL_read(self._ssl, _BUFFER, _READ)
        if size > 0:
            return _unpack(_BUFFER, size)
        self.connection._raise_ssl_error(self._ssl, size)
        return b""

    def write(self, data: bytes) -> int:
        if type(data) is not bytes:
            return self.connection.send(data)
        sent = _SSL_write(self._ssl, data, len(data))
        if sent <= 0:
            self.connection._raise_ssl_error(self._ssl, sent)
        return sent

    def records(self, size: int) -> bytes:
        size = _BIO_read(self._out, _BUFFER, min(size, _READ))
        if size > 0:
            return _unpack(_BUFFER, size)
        self.connection._handle_bio_errors(self._out, size)


def dataPath(connection: Connection) -> _PublicPath | _DirectPath:
    """
    The quickest way to move application data through C{connection}.
    """
    if _BUFFER is not None and all(
        hasattr(connection, name)
        for name in ("_ssl", "_into_ssl", "_from_ssl", "_raise_ssl_error", "_handle_bio_errors")
    ):
        return _DirectPath(connection)
    return _PublicPath(connection)


class _Flow:
    """
    What a L{ServerTLS} reads on every read and write of application data,
    kept apart from it: it inherits Twisted's C{ProtocolWrapper.__getattr__},
    and every attribute of an instance of a class with a C{__getattr__} is
    read the slow way, never specialised.

    The framing of the records received: how many whole ones are still to
    be read (L{unread}), counted from the 5-byte header of each (type,
    version, length), so that reading stops when every whole record was
    read, without one more call into OpenSSL to learn that it wants more.
    Each read that gives application data takes at least one record, so
    the count is never short.  Bytes that are not TLS records stop the
    counting for the connection (L{framed} false): reads go on until
    OpenSSL wants more.

    @ivar framed: Whether the records are counted.
    @ivar unread: The whole records received and not read yet.
    @ivar left: The bytes of the last record still to come.
    @ivar partial: The start of the header of the next record.
    @ivar path: How application data goes in and out of OpenSSL
        (L{dataPath}), once the connection has been asked for it.
    @ivar held: Writes not yet encrypted, waiting for the end of the
        received data (while L{receiving}) or for a turn of the event loop.
    @ivar receiving: Whether received data is being handed on.
    """

    __slots__ = ("framed", "unread", "left", "partial", "path", "held", "receiving")

    def __init__(self) -> None:
        self.framed = True
        self.unread = 0
        self.left = 0
        self.partial = b""
        self.path: _PublicPath | _DirectPath | None = None
        self.held: list[bytes] = []
        self.receiving = False

    def count(self, data: bytes) -> None:
        """
        Count the records that C{data} completes into L{unread}.
        """
        size = len(data)
        if (
            not self.left
            and not self.partial
            and 5 <= size <= _LONGEST + 5
            and size == 5 + ((data[3] << 8) | data[4])
            and 20 <= data[0] <= 24
            and data[1] == 3
        ):
            # The usual read: one whole record, a request.
            self.unread += 1
            return
        if self.partial:
            data = self.partial + data
            self.partial = b""
            size = len(data)
        at = self.left
        if at > size:
            self.left = at - size
            return
        unread = self.unread + (1 if at else 0)
        while at + 5 <= size:
            length = (data[at + 3] << 8) | data[at + 4]
            if not 20 <= data[at] <= 24 or data[at + 1] != 3 or length > _LONGEST:
                self.framed = False
                return
            end = at + 5 + length
            if end > size:
                self.left = end - size
                self.unread = unread
                return
            unread += 1
            at = end
        self.left = 0
        self.partial = data[at:]
        self.unread = unread


class ServerTLS(TLSMemoryBIOProtocol):
    """
    A server's TLS connection that writes straight through.

    @ivar _flow: The framing of what it received, its data path, and the
        writes it holds.
    @ivar _heldSize: The length of the writes held.
    @ivar _call: The turn of the event loop that writes them, if any.
    """

    _call: IDelayedCall | None = None

    def __init__(self, factory, wrappedProtocol, _connectWrapped=True):
        super().__init__(factory, wrappedProtocol, _connectWrapped)
        self._heldSize = 0
        self._flow = _Flow()

    # Writing.

    def write(self, data: bytes) -> None:
        """
        Hold C{data} with the writes before it until the received data is
        handed on, or for one turn of the event loop, or until enough is
        held.
        """
        if self.disconnecting and self._producer is None:
            return
        # A copy of anything but bytes, which the writer may change; and
        # a TypeError now for what is not bytes at all.
        self._hold(data + b"")
        flow = self._flow
        if self._call is None and flow.held and not flow.receiving:
            self._call = self.factory._clock.callLater(0, self._due)

    def writeSequence(self, iovec) -> None:
        self.write(b"".join(iovec))

    def sendNow(self, data: bytes) -> None:
        """
        Send C{data}, a whole response or a part of its body that should
        not wait, at once, after any writes held before it (or with the
        answers to the received data being handed on).
        """
        if self.disconnecting and self._producer is None:
            return
        flow = self._flow
        if flow.receiving:
            self._hold(data)
        elif flow.held:
            flow.held.append(data)
            self._release()
        else:
            self._write(data)

    def _hold(self, data: bytes) -> None:
        self._flow.held.append(data)
        self._heldSize += len(data)
        if self._heldSize > _HOLD:
            self._release()

    def _due(self) -> None:
        self._call = None
        self._release()

    def _release(self) -> None:
        """
        Encrypt and send the held writes.
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        flow = self._flow
        held = flow.held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        flow.held = []
        self._heldSize = 0
        self._write(data)

    def _drop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self._flow.held = []
        self._heldSize = 0

    def _write(self, data: bytes) -> None:
        if self._lostTLSConnection:
            return
        if self._appSendBuffer or not self._handshakeDone:
            # OpenSSL waits for the peer; Twisted holds the writes until
            # it has spoken, in order.
            if self._appSendBuffer:
                self._bufferedWrite(data)
            else:
                super()._write(data)
            return
        path = self._flow.path or self._newPath()
        size = len(data)
        sent = 0
        try:
            if size <= _RECORD:
                sent = path.write(data)
            if sent < size:
                view = memoryview(data)
                while sent < size:
                    sent += path.write(view[sent : sent + _RECORD])
        except WantReadError:
            self._bufferedWrite(data[sent:])
            return
        except Error:
            self._tlsShutdownFinished(Failure())
            return
        self._flushSendBIO(size + (size // _RECORD + 1) * _RECORD_OVERHEAD)

    def _flushSendBIO(self, expected: int = _READ) -> None:
        """
        Send what OpenSSL has to send, read out in one call when it is no
        more than C{expected} bytes, straight to the socket when nothing
        is queued before it.
        """
        path = self._flow.path or self._newPath()
        expected = min(expected, _READ)
        try:
            records = path.records(expected)
        except WantReadError:
            return
        if len(records) == expected:
            more = [records]
            while True:
                try:
                    more.append(path.records(_READ))
                except WantReadError:
                    break
            records = b"".join(more)
        sendNow(self.transport, records)

    def _newPath(self) -> _PublicPath | _DirectPath:
        path = self._flow.path = dataPath(self._tlsConnection)
        return path

    # Reading.

    def dataReceived(self, data: bytes) -> None:
        flow = self._flow
        flow.receiving = True
        try:
            if flow.framed:
                flow.count(data)
            if self._handshakeDone:
                self._receive(data, flow)
            else:
                super().dataReceived(data)
                # Read until OpenSSL wanted more: no whole record is left.
                flow.unread = 0
        finally:
            flow.receiving = False
        if flow.held and not self._lostTLSConnection:
            self._release()

    def _receive(self, data: bytes, flow: _Flow) -> None:
        """
        Hand on the application data in C{data}, once the handshake is
        done.
        """
        path = flow.path or self._newPath()
        path.feed(data)
        if self._appSendBuffer:
            self._unbufferPendingWrites()
        # None: no record to read; False: none gave application data.
        delivered: bool | None = None
        deliver = self.wrappedProtocol.dataReceived
        while flow.unread > 0 or not flow.framed:
            if self._lostTLSConnection:
                break
            if delivered is None:
                delivered = False
            try:
                received = path.read()
            except WantReadError:
                flow.unread = 0
                break
            except ZeroReturnError:
                # The client's close_notify: TLS is shut down.
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except Error:
                self._tlsShutdownFinished(Failure())
            else:
                delivered = True
                flow.unread -= 1
                if not self._aborted:
                    deliver(received)
        if delivered is False and not self._lostTLSConnection:
            # A handshake message (a key update) may want an answer.
            self._flushSendBIO()

    # Closing.

    def loseConnection(self) -> None:
        if self._flow.held and not self.disconnecting:
            self._release()
        super().loseConnection()

    def unregisterProducer(self) -> None:
        if self._flow.held and self._producer is not None:
            self._release()
        super().unregisterProducer()

    def abortConnection(self) -> None:
        self._drop()
        super().abortConnection()

    def connectionLost(self, reason) -> None:
        self._drop()
        super().connectionLost(reason)
        # Twisted lets go of the OpenSSL connection, which refers back to
        # this protocol: so does the data path.
        self._flow.path = None

    def _tlsShutdownFinished(self, reason: Failure | None) -> None:
        if reason is not None:
            # Its traceback holds the frames that hold it (and this
            # protocol): without it, all are freed once done with, not by
            # the cycle collector.
            reason.cleanFailure()
        super()._tlsShutdownFinished(reason)


class ServerTLSFactory(TLSMemoryBIOFactory):
    """
    Wraps the protocols of a TLS listener in L{ServerTLS}; made as
    L{TLSMemoryBIOFactory} is.
    """

    protocol = ServerTLS
