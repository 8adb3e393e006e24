"""
TLS termination (stage 2): TLS ends here, with the certificate of the name
the client asked for.

A C{[tls]} section (L{TLSConfig}) lists certificates by server name.  Each
becomes an OpenSSL context built by Twisted's L{CertificateOptions} (TLS 1.2
or 1.3 at least, modern ciphers, ALPN offering C{h2}, C{http/1.1} and
C{http/1.0}), and an L{SNIContextFactory} picks one by the name the client
sends (SNI): the exact name first, then a wildcard (C{*.api.example.com}
covers C{v1.api.example.com} only: one label, as a certificate's wildcard
does), else the first certificate, which clients that send no name get too.

Listening::

    from manualb.termination import contextFactoryFor, sniEndpoint

    contextFactory = contextFactoryFor(config.tls)    # reads the PEM files
    endpoint = sniEndpoint(reactor, "sni:8443:interface=127.0.0.1", contextFactory)
    endpoint.listen(site)

or, anywhere Twisted takes an endpoint string (the C{sni} plugin in
C{twisted/plugins/manualb_endpoints.py})::

    serverFromString(reactor, "sni:8443:tls=/etc/manualb/lb.ini")

HTTP/2 is offered by ALPN when Twisted's HTTP/2 support (the C{h2} package)
is installed; Twisted's L{twisted.web.server.Site} then speaks it on its own.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Sequence
from functools import partial

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL
from twisted.internet.defer import execute
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IProtocolNegotiationFactory,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from manualb.config import CertificateConfig, ConfigError, TLSConfig
from manualb.hsts import hstsValue, parseCertificateHSTS
from manualb.syntax import Section, hostName, readableFile
from manualb.tlscontexts import (
    TicketRotation,
    configureSessions,
    parseSessionKeys,
    withOpenSSLObjects,
)
from manualb.view import normalizeHost

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_CIPHERS",
    "TLSFileError",
    "SNIContextFactory",
    "SNIServerEndpoint",
    "alpnProtocols",
    "tolerateUnknownALPN",
    "contextFactoryFor",
    "sniEndpoint",
    "SNIArguments",
    "isSNI",
    "isTLS",
    "parseSNIDescription",
    "splitDescription",
    "endpointFromArguments",
    "tlsConfigFromFile",
    "parseTLS",
    "hstsHeader",
]

#: The TLS 1.2 ciphers used when C{[tls] ciphers} is not given: forward
#: secret key exchange (ECDHE) with an AEAD cipher (AES-GCM, ChaCha20-Poly1305)
#: only, as Mozilla's "intermediate" profile.  TLS 1.3 has its own suites,
#: all of them modern, which OpenSSL always offers.
DEFAULT_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

#: The listen backlog of an C{sni:} endpoint (and of every manualb listener)
#: that gives none: nginx's 511, where Twisted's is 50, which a burst of
#: clients connecting at once overflows (the SYNs beyond it are dropped, and
#: sent again 1 s, 3 s, 7 s after the first).
DEFAULT_BACKLOG = 511

_MIN_VERSIONS = {
    "tlsv1.2": TLSVersion.TLSv1_2,
    "tlsv1.3": TLSVersion.TLSv1_3,
}

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


_SUPPORTED_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


class TLSFileError(ConfigError):
    """
    A certificate or key file of the C{[tls]} section cannot be used;
    C{str()} names the file and says why:
    C{/etc/ssl/www.key: cannot load the private key: ...}.

    @ivar path: The file.
    """

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, None, None, message)
        self.path = path


def alpnProtocols() -> list[bytes]:
    """
    The protocols offered by ALPN, as nginx's: C{h2} when Twisted can serve
    HTTP/2 (the C{h2} package is installed), then C{http/1.1} and
    C{http/1.0} (which C{curl --http1.0} offers alone).
    """
    from twisted.web.http import H2_ENABLED

    http1 = [b"http/1.1", b"http/1.0"]
    return [b"h2"] + http1 if H2_ENABLED else http1


def tolerateUnknownALPN(contextFactory, tls: TLSConfig | None = None) -> None:
    """
    Make the TLS server connections of C{contextFactory}, a Twisted
    L{CertificateOptions} (what C{ssl:} endpoint strings build), choose their
    ALPN protocol with L{_alpnSelector}: the first of L{alpnProtocols} that
    the client offers and the site speaks, else none, with the handshake
    going on without ALPN.  Twisted's own selection instead fails the
    handshake with an internal error alert when nothing overlaps (a client
    offering only C{spdy/3}, say).  Sessions resume from the cache as
    C{tls} (else L{TLSConfig}'s defaults) says; not by tickets, which
    Twisted's C{ssl:} parser turns off for good (L{manualb.tlscontexts}).
    Anything else is left as it is.
    """
    if isinstance(contextFactory, CertificateOptions):
        # The context is made once and kept: every connection uses this one.
        context = contextFactory.getContext()
        context.set_alpn_select_callback(_alpnSelector(alpnProtocols()))
        tls = tls or TLSConfig(())
        configureSessions(context, tls.ssl_session_cache, tls.ssl_session_timeout)


@implementer(IOpenSSLServerConnectionCreator)
class SNIContextFactory:
    """
    Makes the OpenSSL server connections of a TLS listener (what
    L{twisted.protocols.tls.TLSMemoryBIOFactory} takes), switching each to
    the context of the server name its client sends.

    Every connection starts with the default context, whose server name
    callback runs during the handshake (C{Connection.set_context}).  The
    settings that matter before that point (protocol versions, ciphers) are
    the default context's, so all contexts should share them, as those of
    L{contextFactoryFor} do.

    @ivar defaultContext: The context of the first certificate, for unknown
        names and clients that send none.
    @ivar names: The names, as given, in order.

    Connections start on the default context, which so holds the session
    cache and ticket keys of all (L{manualb.tlscontexts}); L{rotate} makes
    a new one.
    """

    def __init__(
        self,
        contexts: Sequence[tuple[str, SSL.Context]],
        remake: Callable[[], SSL.Context] | None = None,
        rotation: float | None = None,
    ) -> None:
        """
        @param contexts: C{(name, context)} pairs, the first the default.  A
            name is exact (C{www.example.com}) or a wildcard
            (C{*.example.com}); the first of two equal names wins.
        @param remake: Makes a new context like the default one.
        @param rotation: Seconds between two L{rotate}s, or L{None}.
        """
        if not contexts:
            raise ValueError("at least one certificate is needed")
        self.names = [name for name, _ in contexts]
        self.defaultContext = contexts[0][1]
        self._remake = remake if rotation else None
        self._interval = rotation
        self._rotation: TicketRotation | None = None
        #: Contexts that answer an ACME TLS-ALPN-01 challenge, by name
        #: (see L{manualb.autotls}); they come before every other.  Anything
        #: with a C{get}: automatic HTTPS puts its own, which also finds the
        #: challenges that other processes share.
        self.challenges: dict[bytes, SSL.Context] = {}
        self._exact: dict[bytes, SSL.Context] = {}
        self._wildcards: dict[bytes, SSL.Context] = {}
        for name, context in contexts:
            normal = normalizeHost(name)
            if normal is None:
                raise ValueError(f"bad server name {name!r}")
            if normal.startswith(b"*."):
                self._wildcards.setdefault(normal[2:], context)
            else:
                self._exact.setdefault(normal, context)
        self.defaultContext.set_tlsext_servername_callback(self._serverNameReceived)

    def update(self, other: "SNIContextFactory") -> None:
        """
        Serve the certificates of C{other} from now on, as a reload does:
        new connections get them; those open keep theirs.
        """
        self.names = other.names
        self._exact, self._wildcards = other._exact, other._wildcards
        self.defaultContext = other.defaultContext
        self.defaultContext.set_tlsext_servername_callback(self._serverNameReceived)
        self._remake, self._interval = other._remake, other._interval
        if self._rotation is not None:
            clock, self._rotation = self._rotation.clock, None
            self.rotateWith(clock)

    def rotateWith(self, clock) -> None:
        """
        L{rotate} every rotation interval of C{clock} (the reactor), as
        connections come; the first call counts.
        """
        if self._rotation is None and self._remake is not None and self._interval:
            self._rotation = TicketRotation(clock, self._interval)

    def rotate(self) -> None:
        """
        Serve new connections from a new default context: new ticket keys,
        an empty session cache.  Those open keep theirs.
        """
        if self._remake is None:
            return
        old, new = self.defaultContext, self._remake()
        new.set_tlsext_servername_callback(self._serverNameReceived)
        for table in (self._exact, self._wildcards):
            for name, context in table.items():
                if context is old:
                    table[name] = new
        self.defaultContext = new

    def contextFor(self, serverName: str | bytes | None) -> SSL.Context:
        """
        The context that serves C{serverName}: the exact name's, else the
        wildcard's that covers it, else the default.
        """
        name = normalizeHost(serverName)
        if name is None:
            return self.defaultContext
        context = self._exact.get(name)
        if context is not None:
            return context
        first, dot, parent = name.partition(b".")
        if first and dot and parent:
            context = self._wildcards.get(parent)
            if context is not None:
                return context
        return self.defaultContext

    def _serverNameReceived(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        context = self.challenges.get(normalizeHost(name) or b"") or self.contextFor(name)
        if context is not self.defaultContext:
            connection.set_context(context)

    def serverConnectionForTLS(self, tlsProtocol) -> SSL.Connection:
        """
        A new server connection, on the default context until the client's
        server name is known (after a rotation, if one is due).
        """
        if self._rotation is not None and self._rotation.due():
            self.rotate()
        return SSL.Connection(self.defaultContext, None)


def _readFile(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFileError(path, f"cannot read the {what}: {e.strerror or e}") from None


def _loadCertificates(path: str) -> list[x509.Certificate]:
    """
    The certificates of a PEM file: the server's, then its chain.
    """
    data = _readFile(path, "certificate")
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise TLSFileError(
            path,
            "no certificate in the file (expected PEM: -----BEGIN CERTIFICATE-----)",
        )
    certificates = []
    for number, block in enumerate(blocks, 1):
        try:
            certificates.append(x509.load_pem_x509_certificate(block))
        except ValueError as e:
            raise TLSFileError(
                path, f"certificate {number} of the file cannot be loaded: {e}"
            ) from None
    return certificates


def _loadKey(path: str):
    data = _readFile(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSFileError(
            path, "the private key is encrypted; give an unencrypted PEM key"
        ) from None
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TLSFileError(
            path,
            f"cannot load the private key (expected an unencrypted PEM key): {reason}",
        ) from None
    if not isinstance(key, _SUPPORTED_KEYS):
        raise TLSFileError(
            path,
            f"unsupported private key type {type(key).__name__} "
            f"(RSA, ECDSA, Ed25519 or Ed448 are)",
        )
    return key


def _publicKeyBytes(publicKey) -> bytes:
    return publicKey.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _certificateOptions(certificate: CertificateConfig, makeContext) -> SSL.Context:
    """
    The context of one certificate, its files read and checked, made by
    C{makeContext(leaf, chain, key)}.
    """
    leaf, *chain = _loadCertificates(certificate.certificate)
    key = _loadKey(certificate.key)
    if _publicKeyBytes(key.public_key()) != _publicKeyBytes(leaf.public_key()):
        raise TLSFileError(
            certificate.key,
            f"the private key does not match the certificate in "
            f"{certificate.certificate} (the first one of the file)",
        )
    return makeContext(leaf, chain, key)


def _alpnSelector(protocols: Sequence[bytes]):
    """
    An ALPN selection callback: the first of C{protocols} that the client
    offers and the listener's protocol factory speaks (its
    L{IProtocolNegotiationFactory.acceptableProtocols}, as a
    L{twisted.web.server.Site} has), or none.

    It replaces the one L{CertificateOptions} installs, which offers
    C{protocols} even to a factory that does not speak them (a layer-4 proxy
    would get C{h2}), and which, when nothing matches, fails the handshake
    with an internal error alert.  Here the handshake then goes on without
    ALPN, and an HTTP client falls back to HTTP/1.1.
    """

    def select(connection: SSL.Connection, offered: list[bytes]):
        tlsProtocol = connection.get_app_data()
        factory = getattr(getattr(tlsProtocol, "factory", None), "wrappedFactory", None)
        negotiation = IProtocolNegotiationFactory(factory, None)
        if negotiation is not None:
            spoken = set(negotiation.acceptableProtocols())
            for protocol in protocols:
                if protocol in offered and protocol in spoken:
                    return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def contextFactoryFor(
    tls: TLSConfig,
    source: str = "<config>",
    protocols: Sequence[bytes] | None = None,
    extra: Callable[..., Sequence[tuple[str, SSL.Context]]] | None = None,
) -> SNIContextFactory:
    """
    Read the certificates of C{tls} and build the connection creator that
    serves them by SNI, the first one by default.  The files are read now,
    once; a certificate named twice (for two names) is read once.

    @param source: The configuration file, for messages about C{min_version}
        and C{ciphers}.
    @param protocols: The ALPN protocols, in order of preference; by default
        L{alpnProtocols}.  Only those the listener's protocol factory speaks
        are chosen (see L{_alpnSelector}), so a non-HTTP factory gets none.
    @param extra: Called with C{makeContext(leaf, chain, key)}, gives more
        C{(name, context)} pairs, after those of C{tls}: the certificates
        obtained by ACME (L{manualb.autotls}).  Without it, a C{[tls]} of
        such names only is checked, and L{None} returned.
    @raise TLSFileError: a certificate or key file cannot be read or used, or
        a key does not match its certificate.
    @raise ConfigError: C{min_version} or C{ciphers} is wrong.
    """
    if not tls.certificates and extra is None and not tls.acme:
        raise ConfigError(source, "tls", "certificates", "at least one is needed")
    minimum = _MIN_VERSIONS.get(tls.min_version.strip().lower())
    if minimum is None:
        raise ConfigError(
            source,
            "tls",
            "min_version",
            f"expected TLSv1.2 or TLSv1.3, got {tls.min_version!r}",
        )
    cipherString = tls.ciphers if tls.ciphers is not None else DEFAULT_CIPHERS
    ciphers = AcceptableCiphers.fromOpenSSLCipherString(cipherString)
    if protocols is None:
        protocols = alpnProtocols()
    protocols = list(protocols)
    remakes: dict[int, Callable[[], SSL.Context]] = {}

    def makeContext(leaf, chain, key) -> SSL.Context:
        remake = partial(_keyPairContext, minimum, ciphers, protocols, tls, leaf, chain, key)
        context = remake()
        remakes[id(context)] = remake
        return context

    contexts: list[tuple[str, SSL.Context]] = []
    built: dict[tuple[str, str], SSL.Context] = {}
    for certificate in tls.certificates:
        files = (certificate.certificate, certificate.key)
        if files not in built:
            try:
                built[files] = _certificateOptions(certificate, makeContext)
            except TLSFileError:
                raise
            except ValueError as e:
                # CertificateOptions: the cipher string selects nothing usable.
                raise ConfigError(
                    source, "tls", "ciphers", f"{cipherString!r}: {e}"
                ) from None
            except SSL.Error as e:
                raise TLSFileError(
                    certificate.certificate, f"OpenSSL cannot use it: {e}"
                ) from None
        contexts.append((certificate.name, built[files]))
    if extra is not None:
        contexts.extend(extra(makeContext))
    elif not contexts:
        # Only names obtained by ACME, whose server gives the contexts.
        return None  # type: ignore[return-value]
    rotation = tls.ssl_session_ticket_key_rotation if tls.ssl_session_tickets else None
    return SNIContextFactory(contexts, remakes.get(id(contexts[0][1])), rotation)


def _keyPairContext(minimum, ciphers, protocols, tls, leaf, chain, key) -> SSL.Context:
    """
    The context of a certificate, its chain and its key, offering by ALPN
    what C{protocols} and the listener's factory both speak, and resuming
    sessions as C{tls} says.
    """
    context = withOpenSSLObjects(
        lambda convert: CertificateOptions(
            privateKey=convert.key(key),
            certificate=convert.certificate(leaf),
            extraCertChain=[convert.certificate(each) for each in chain],
            raiseMinimumTo=minimum,
            acceptableCiphers=ciphers,
            acceptableProtocols=protocols,
            enableSessionTickets=tls.ssl_session_tickets,
        )
    )
    context.set_alpn_select_callback(_alpnSelector(protocols))
    configureSessions(context, tls.ssl_session_cache, tls.ssl_session_timeout)
    return context


@implementer(IStreamServerEndpoint)
class SNIServerEndpoint(SSL4ServerEndpoint):
    """
    A TLS listener over TCP whose certificates are chosen by SNI.  The
    connections provide L{twisted.internet.interfaces.ISSLTransport} (so
    C{request.isSecure()}) and report the ALPN protocol
    (C{negotiatedProtocol}), which Twisted's HTTP channel uses to speak
    HTTP/2.

    @ivar contextFactory: The L{SNIContextFactory}.
    @ivar port: The port.
    @ivar interface: The address listened on; C{""} for every IPv4 one, C{"::"}
        for every one.
    @ivar tlsFactory: What wraps the factory listened with in TLS, called
        as L{TLSMemoryBIOFactory} is (Twisted's, unless set to another).
    """

    tlsFactory: Callable[..., IProtocolFactory] = TLSMemoryBIOFactory

    def __init__(
        self,
        reactor,
        port: int,
        contextFactory: SNIContextFactory,
        backlog: int = DEFAULT_BACKLOG,
        interface: str = "",
    ) -> None:
        super().__init__(reactor, port, contextFactory, backlog, interface)
        self.contextFactory = contextFactory
        contextFactory.rotateWith(reactor)
        self.reactor = reactor
        self.port = port
        self.interface = interface
        self.backlog = backlog

    def listen(self, protocolFactory: IProtocolFactory):
        """
        Listen on TCP, each connection in TLS by L{tlsFactory}.
        """
        wrapped = self.tlsFactory(self.contextFactory, False, protocolFactory, self.reactor)
        return execute(
            self.reactor.listenTCP,
            self.port,
            wrapped,
            backlog=self.backlog,
            interface=self.interface,
        )

    def __repr__(self) -> str:
        return (
            f"<SNIServerEndpoint port={self.port} interface={self.interface!r} "
            f"names={self.contextFactory.names!r}>"
        )


@attrs.frozen
class SNIArguments:
    """
    What an C{sni:PORT[:interface=ADDRESS][:backlog=N][:tls=FILE]} string
    says.

    @ivar backlog: The listen backlog, L{DEFAULT_BACKLOG} unless given.
    @ivar tls: The C{tls=} file, or L{None}.
    """

    port: int
    interface: str = ""
    backlog: int = DEFAULT_BACKLOG
    tls: str | None = None


_SNI_SYNTAX = "sni:PORT[:interface=ADDRESS][:tls=FILE], such as sni:443"
_SNI_KEYWORDS = ("interface", "tls", "backlog")


def isSNI(description: str) -> bool:
    """
    Whether C{description} is a C{sni:} endpoint string (types are not case
    sensitive, as Twisted matches endpoint plugins).
    """
    return description.split(":", 1)[0].strip().lower() == "sni"


def isTLS(description: str) -> bool:
    """
    Whether C{description} is an endpoint string whose connections come over
    TLS: C{sni:} or Twisted's C{ssl:}.
    """
    return description.split(":", 1)[0].strip().lower() in ("sni", "ssl")


def _splitFields(description: str, strict: bool = True) -> list[list[str]]:
    """
    Split an endpoint string as Twisted does: C{:} between parameters,
    C{name=value} for keywords (C{[name, value]}, else C{[value]}), C{\\}
    escaping the next character (so C{interface=\\:\\:1}).

    @raise ValueError: it ends with a lone backslash, when C{strict} (else
        the backslash is dropped).
    """
    fields: list[list[str]] = [[""]]
    characters = iter(description)
    for character in characters:
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                if strict:
                    raise ValueError("it ends with a lone backslash")
                break
            fields[-1][-1] += escaped
        elif character == ":":
            fields.append([""])
        elif character == "=" and len(fields[-1]) == 1:
            fields[-1].append("")
        else:
            fields[-1][-1] += character
    return fields


def _sniArguments(fields: Sequence[Sequence[str]]) -> SNIArguments:
    """
    Read the parameters of an C{sni:} endpoint after its prefix: a port (0
    to 65535), then optionally C{interface=ADDRESS}, C{backlog=N} and
    C{tls=FILE}, each once.

    @param fields: As L{_splitFields} gives them.
    @raise ValueError: saying what is wrong.
    """
    if not fields:
        raise ValueError(f"missing port: expected {_SNI_SYNTAX}")
    port = fields[0]
    if len(port) != 1 or not (port[0].isascii() and port[0].isdigit()):
        written = "=".join(port)
        raise ValueError(f"bad port {written!r}: expected {_SNI_SYNTAX}")
    if int(port[0]) > 65535:
        raise ValueError(f"port {int(port[0])} out of range 0..65535")
    given: dict[str, str] = {}
    for field in fields[1:]:
        if len(field) == 1:
            raise ValueError(
                f"unexpected {field[0]!r}: after the port, sni: takes only "
                f"interface=ADDRESS, backlog=N and tls=FILE"
            )
        name, value = field
        if name not in _SNI_KEYWORDS:
            raise ValueError(
                f"unknown argument {name!r}: after the port, sni: takes only "
                f"interface=ADDRESS, backlog=N and tls=FILE"
            )
        if name in given:
            raise ValueError(f"{name} given twice")
        if not value:
            raise ValueError(f"{name} needs a value")
        if name == "backlog" and not (
            value.isascii() and value.isdigit() and int(value) >= 1
        ):
            raise ValueError(f"bad backlog {value!r}: a whole number, at least 1")
        given[name] = value
    return SNIArguments(
        int(port[0]),
        given.get("interface", ""),
        int(given.get("backlog", DEFAULT_BACKLOG)),
        given.get("tls"),
    )


def _twistedArguments(args: Sequence[str], kwargs: dict[str, str]) -> SNIArguments:
    """
    L{_sniArguments} of parameters split by Twisted's endpoint parser, whose
    syntax also takes the port as a keyword (C{sni:port=443}).
    """
    kwargs = dict(kwargs)
    fields = [[arg] for arg in args]
    if "port" in kwargs:
        fields.insert(0, [kwargs.pop("port")])
    return _sniArguments(fields + [[name, value] for name, value in kwargs.items()])


def parseSNIDescription(description: str) -> SNIArguments:
    """
    Check and split an C{sni:} endpoint string without reading any file, as
    a configuration check can (where C{serverFromString} would need
    C{tls=FILE}, and read it): C{sni:PORT[:interface=ADDRESS][:backlog=N]
    [:tls=FILE]}.

    @raise ValueError: it is not an C{sni:} string, or is wrong; the message
        says what is wrong.
    """
    fields = _splitFields(description)
    if not isSNI(description) or len(fields[0]) != 1:
        raise ValueError(f"not an sni: endpoint: {description!r}")
    return _sniArguments(fields[1:])


def endpointFromArguments(
    reactor,
    args: Sequence[str],
    kwargs: dict[str, str],
    tls: TLSConfig | SNIContextFactory | None = None,
) -> SNIServerEndpoint:
    """
    The endpoint of C{sni:PORT[:interface=ADDRESS][:backlog=N][:tls=FILE]},
    already split by Twisted's endpoint parser into C{args} and C{kwargs}
    (what the C{sni} plugin gets).

    @param tls: The certificates to use; when L{None}, they come from the
        C{[tls]} section of the C{tls=FILE} argument, which is then needed.
        When given, C{tls=} is ignored.
    @raise ValueError: a missing or bad argument.
    @raise ConfigError: the C{tls=} file or its certificates are wrong.
    """
    return _endpoint(reactor, _twistedArguments(args, kwargs), tls)


def _endpoint(
    reactor, arguments: SNIArguments, tls: TLSConfig | SNIContextFactory | None
) -> SNIServerEndpoint:
    if tls is None:
        if arguments.tls is None:
            raise ValueError(
                "sni: needs tls=FILE, an INI file with a [tls] section, as in "
                "sni:8443:tls=/etc/manualb/lb.ini"
            )
        tls = contextFactoryFor(tlsConfigFromFile(arguments.tls), arguments.tls)
    elif isinstance(tls, TLSConfig):
        tls = contextFactoryFor(tls)
    return SNIServerEndpoint(
        reactor, arguments.port, tls, arguments.backlog, arguments.interface
    )


def splitDescription(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split an endpoint string as Twisted does: C{:} between parameters,
    C{name=value} for keywords, C{\\} escaping the next character (so
    C{interface=\\:\\:1}).  The prefix is left in C{args}.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for field in _splitFields(description, strict=False):
        if len(field) == 1:
            args.append(field[0])
        else:
            kwargs[field[0]] = field[1]
    return args, kwargs


def sniEndpoint(
    reactor, description: str, tls: TLSConfig | SNIContextFactory
) -> SNIServerEndpoint:
    """
    The endpoint of an C{sni:PORT[:interface=ADDRESS][:backlog=N]} string
    with the certificates of C{tls} (a C{tls=} in the string is ignored).
    Pass one L{SNIContextFactory} (from L{contextFactoryFor}) to several
    listeners to read the files once.

    @raise ValueError: the string is not an C{sni:} one, or is wrong.
    @raise TLSFileError: (given a L{TLSConfig}) see L{contextFactoryFor}.
    """
    args, kwargs = splitDescription(description)
    if not args or not isSNI(description):
        raise ValueError(f"not an sni: endpoint: {description!r}")
    return _endpoint(reactor, _twistedArguments(args[1:], kwargs), tls)


def tlsConfigFromFile(path: str) -> TLSConfig:
    """
    Read the C{[tls]} section of the INI file at C{path} (other sections are
    not looked at)::

        [tls]
        certificates =
            www.example.com   /etc/ssl/www.crt  /etc/ssl/www.key
            *.api.example.com /etc/ssl/api.crt  /etc/ssl/api.key
        min_version = TLSv1.2      ; or TLSv1.3
        ciphers = ECDHE+AESGCM     ; OpenSSL cipher string, for TLS 1.2
        hsts = max-age=31536000    ; Strict-Transport-Security, or off

    Relative paths are relative to the current directory.  Unknown keys
    are ignored; the others are read as in the configuration file
    (L{parseTLS}).

    @raise ConfigError: the file cannot be read, has no C{[tls]} section, or
        its keys are wrong.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigError(path, None, None, f"cannot read file: {reason}") from None
    section = _sectionText(text, "tls")
    if section is None:
        raise ConfigError(path, None, None, "no [tls] section")
    parser = configparser.RawConfigParser(
        interpolation=None,
        strict=False,
        delimiters=("=",),
        comment_prefixes=(";", "#"),
        inline_comment_prefixes=(";", "#"),
    )
    try:
        parser.read_string("[tls]\n" + section, source=path)
    except configparser.Error as e:
        raise ConfigError(path, "tls", None, str(e).splitlines()[0]) from None
    values = dict(parser.items("tls"))
    return parseTLS(
        Section("tls", values, lambda key, message: ConfigError(path, "tls", key, message)),
        os.getcwd(),
    )


def _sectionText(text: str, name: str) -> str | None:
    """
    The lines of section C{[NAME]} of an INI text (up to the next section
    header), or L{None} if it has none.
    """
    lines: list[str] | None = None
    for line in text.splitlines():
        header = re.match(r"\[([^\]]*)\]", line)
        if header:
            if lines is not None:
                break
            if header.group(1).strip().lower() == name:
                lines = []
        elif lines is not None:
            lines.append(line)
    return None if lines is None else "\n".join(lines) + "\n"


def hstsHeader(tls: TLSConfig | None) -> bytes | None:
    """
    The value of C{Strict-Transport-Security} to send on TLS connections,
    or L{None} when there is none (no C{[tls]}, no C{hsts}, or C{off}).

    @raise ValueError: the value cannot be a header value.
    """
    if tls is None or tls.hsts is None:
        return None
    value = tls.hsts.strip()
    if not value or value.lower() == "off":
        return None
    if any(character in value for character in "\r\n\0") or not value.isascii():
        raise ValueError(f"bad hsts value {tls.hsts!r}")
    return value.encode("ascii")


# The syntax of the [tls] section, read by the configuration file reader
# and by tlsConfigFromFile.


def parseTLS(section: Section, directory: str) -> TLSConfig:
    """
    Build the L{TLSConfig} of a C{[tls]} section; C{directory} is where
    relative certificate and key files are.
    """
    return TLSConfig(
        certificates=_parseCertificates(section, directory, acme := []),
        acme=tuple(acme),
        min_version=_parseMinVersion(section),
        ciphers=_parseCiphers(section),
        hsts=_parseHSTS(section),
        **parseSessionKeys(section),  # type: ignore[arg-type]
    )


def _parseCertificates(
    section: Section, directory: str, acme: list[str]
) -> tuple[CertificateConfig, ...]:
    """
    Return the certificates of C{certificates}, one a line:
    C{NAME CERTFILE KEYFILE}, with readable files and no name twice; the
    names of C{NAME acme} lines (obtained by ACME) go to C{acme}.
    """
    lines = section.lines("certificates")
    if lines is None:
        raise section.error("certificates", "missing required key")
    if not lines:
        raise section.error(
            "certificates",
            "needs at least one certificate, such as "
            "www.example.com certs/www.pem certs/www.key",
        )
    certificates: list[CertificateConfig] = []
    seen: set[str] = set()
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[1].lower() == "acme":
            try:
                name = hostName(fields[0], wildcard=False)
            except ValueError as e:
                raise section.error("certificates", f"{e}, in {line!r}") from None
            if name in seen:
                raise section.error("certificates", f"duplicate name {name!r} in {line!r}")
            seen.add(name)
            acme.append(name)
            continue
        if len(fields) != 3 and not (len(fields) == 4 and fields[3].lower().startswith("hsts=")):
            raise section.error(
                "certificates",
                f"expected NAME CERTFILE KEYFILE separated by spaces, such as "
                f"www.example.com certs/www.pem certs/www.key, got {line!r}",
            )
        try:
            name = hostName(fields[0], wildcard=True)
            certificate = readableFile(fields[1], directory)
            key = readableFile(fields[2], directory)
            hsts = parseCertificateHSTS(fields[3]) if len(fields) == 4 else None
        except ValueError as e:
            raise section.error("certificates", f"{e}, in {line!r}") from None
        if name in seen:
            raise section.error(
                "certificates",
                f"duplicate name {name!r} in {line!r} (each name has one "
                f"certificate)",
            )
        seen.add(name)
        certificates.append(CertificateConfig(name, certificate, key, hsts))
    return tuple(certificates)


_TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
_OLD_VERSIONS = ("sslv2", "sslv3", "tlsv1", "tlsv1.0", "tlsv1.1")


def _parseMinVersion(section: Section) -> str:
    """
    Return C{min_version}: C{TLSv1.2} (the default) or C{TLSv1.3}, in any
    case; older versions are refused.
    """
    text = section.single("min_version")
    if text is None:
        return attrs.fields(TLSConfig).min_version.default
    for version in _TLS_VERSIONS:
        if text.lower() == version.lower():
            return version
    if text.lower() in _OLD_VERSIONS:
        raise section.error(
            "min_version",
            f"{text!r} is not allowed: TLS 1.0 and 1.1 (and SSL) are insecure "
            f"and deprecated (RFC 8996); use TLSv1.2 or TLSv1.3",
        )
    raise section.error("min_version", f"expected TLSv1.2 or TLSv1.3, got {text!r}")


def _parseCiphers(section: Section) -> str | None:
    """
    Return C{ciphers}, an OpenSSL cipher string for TLS 1.2, checked by
    giving it to OpenSSL; L{None} if absent.
    """
    text = section.single("ciphers")
    if text is None:
        return None
    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(text.encode("utf-8"))
    except SSL.Error as e:
        reasons = [
            problem[-1]
            for problem in (e.args[0] if e.args and isinstance(e.args[0], list) else [])
            if isinstance(problem, tuple) and problem
        ]
        reason = ", ".join(reasons) or str(e)
        message = f"OpenSSL refuses {text!r}: {reason}"
        if "TLS_" in text:
            message += (
                " (ciphers sets the TLS 1.2 ciphers; TLS 1.3 suites such as "
                "TLS_AES_128_GCM_SHA256 are not set here)"
            )
        raise section.error("ciphers", message) from None
    return text


def _parseHSTS(section: Section) -> str | None:
    """
    Return C{hsts}, a C{Strict-Transport-Security} value (L{hstsValue});
    L{None} if absent or C{off}.
    """
    text = section.single("hsts")
    if text is None or text.lower() == "off":
        return None
    try:
        return hstsValue(text)
    except ValueError as e:
        raise section.error("hsts", str(e)) from None
