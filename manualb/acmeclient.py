"""
The pieces of automatic HTTPS (L{manualb.autotls}) that hold no state:
certificates (the placeholder, the TLS-ALPN-01 one, those in the storage)
and the blocking ACME client (certbot's C{acme} package), whose calls
L{manualb.autotls.AutoTLS} runs in its thread pool.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import os
import tempfile
import time
from collections.abc import Sequence

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.python.failure import Failure

from manualb.config import AcmeConfig

__all__ = [
    "ACMEClient",
    "Stored",
    "alpnChallengeCertificate",
    "fromPEM",
    "keyPEM",
    "newKey",
    "newer",
    "pemOf",
    "placeholderCertificate",
    "readStored",
    "reasonOf",
    "retryAfterOf",
    "retryAfterSeconds",
    "writePrivate",
]

#: The certificate extension that carries the key authorization's digest.
ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
#: How long an order may take, from the first request to the certificate.
ORDER_TIMEOUT = 90


# Certificates.


def newKey() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _selfSigned(name: str, key, extensions=()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


def placeholderCertificate(name: str):
    """
    A self-signed certificate for C{name} and its key, served until the
    real one arrives.
    """
    key = newKey()
    return _selfSigned(name, key), key


def alpnChallengeCertificate(name: str, keyAuthorization: str):
    """
    The certificate of a TLS-ALPN-01 challenge (RFC 8737, section 3) and its
    key: self-signed for C{name}, with the critical C{acmeIdentifier}
    extension holding the SHA-256 digest of the key authorization as a DER
    OCTET STRING.
    """
    digest = hashlib.sha256(keyAuthorization.encode("ascii")).digest()
    value = b"\x04\x20" + digest
    key = newKey()
    extension = x509.UnrecognizedExtension(ACME_IDENTIFIER, value)
    return _selfSigned(name, key, [(extension, True)]), key


def pemOf(certificates: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def keyPEM(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def writePrivate(path: str, data: bytes) -> None:
    """
    Write C{data} to C{path} atomically (a reader finds the old file or the
    new one, whole), readable and writable by the owner only.
    """
    directory = os.path.dirname(path)
    fd, temporary = tempfile.mkstemp(prefix=".", dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


@attrs.frozen
class Stored:
    """
    A certificate of the storage: the leaf, its chain and its key.
    """

    leaf: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: object

    @property
    def notAfter(self) -> float:
        return self.leaf.not_valid_after_utc.timestamp()


def readStored(storage: str, name: str) -> Stored | None:
    """
    The certificate of C{name} in C{storage}, or L{None} when there is none
    (or it cannot be read: it is then obtained again).
    """
    try:
        with open(os.path.join(storage, name + ".crt"), "rb") as f:
            certificates = x509.load_pem_x509_certificates(f.read())
        with open(os.path.join(storage, name + ".key"), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
    except (OSError, ValueError, TypeError):
        return None
    return Stored(certificates[0], tuple(certificates[1:]), key)



def newer(stored: Stored, served: Stored | None) -> bool:
    """
    Whether C{stored} is to be served in place of C{served}.
    """
    return served is None or (stored.leaf != served.leaf and stored.notAfter >= served.notAfter)


def fromPEM(certificate: bytes, key: bytes) -> Stored:
    certificates = x509.load_pem_x509_certificates(certificate)
    return Stored(
        certificates[0], tuple(certificates[1:]), serialization.load_pem_private_key(key, None)
    )


def retryAfterSeconds(value: str | None, now: float) -> float | None:
    """
    The seconds from C{now} (a POSIX time) that an HTTP C{Retry-After}
    value says (a number of seconds or a date), or L{None} when there is
    none or it cannot be read.
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now)


def retryAfterOf(failure: Failure) -> float | None:
    """
    The seconds the ACME server asks to wait, when C{failure} is its
    refusal for a rate limit (C{urn:ietf:params:acme:error:rateLimited})
    with a C{Retry-After} (see L{_Network}).
    """
    error = failure.value
    if getattr(error, "code", None) != "rateLimited":
        return None
    return getattr(error, "retryAfter", None)


# The ACME client.


def _register() -> type:
    """
    The TLS-ALPN-01 challenge as the C{acme} package's messages know
    challenges (it has none of its own), registered once.
    """
    from acme import challenges

    known = challenges.Challenge.TYPES.get("tls-alpn-01")
    if known is not None and issubclass(known, challenges.KeyAuthorizationChallenge):
        return known

    @challenges.ChallengeResponse.register
    class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
        typ = "tls-alpn-01"

    @challenges.Challenge.register
    class TLSALPN01(challenges.KeyAuthorizationChallenge):
        response_cls = TLSALPN01Response
        typ = response_cls.typ

        def validation(self, account_key, **unused):
            return None

    return TLSALPN01


def _network() -> type:
    """
    The C{acme} package's C{ClientNetwork}, whose errors also say the
    server's C{Retry-After} (as C{retryAfter}, in seconds, or L{None}).
    """
    from acme import client, messages

    class _Network(client.ClientNetwork):
        @classmethod
        def _check_response(cls, response, content_type=None):
            try:
                return super()._check_response(response, content_type=content_type)
            except messages.Error as error:
                error.retryAfter = retryAfterSeconds(
                    response.headers.get("Retry-After"), time.time()
                )
                raise

    return _Network


class ACMEClient:
    """
    The blocking side: an account on the ACME server and its orders, run
    in the thread pool.
    """

    def __init__(self, config: AcmeConfig):
        self.config = config
        self._client = None

    def _accountKey(self):
        import josepy
        from cryptography.hazmat.primitives.asymmetric import rsa

        path = os.path.join(self.config.storage, "account.key")
        try:
            with open(path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), None)
        except FileNotFoundError:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            writePrivate(path, keyPEM(key))
        return josepy.JWKRSA(key=key)

    def client(self):
        """
        The ACME client, its account registered (or found again by its
        key) on first use.
        """
        if self._client is not None:
            return self._client
        from acme import client, errors, messages

        _register()
        net = _network()(
            self._accountKey(),
            verify_ssl=self.config.directory_ca or True,
            user_agent="manualb",
            timeout=30,
        )
        directory = client.ClientV2.get_directory(self.config.directory, net)
        acme = client.ClientV2(directory, net)
        registration = messages.NewRegistration.from_data(
            email=self.config.email, terms_of_service_agreed=True
        )
        try:
            net.account = acme.new_account(registration)
        except errors.ConflictError as e:
            net.account = messages.RegistrationResource(
                uri=e.location, body=messages.Registration()
            )
        self._client = acme
        return acme

    def order(self, name: str, key):
        from acme import crypto_util

        csr = crypto_util.make_csr(keyPEM(key), [name])
        return self.client().new_order(csr)

    def answer(self, challenge, response) -> None:
        self.client().answer_challenge(challenge, response)

    def finish(self, order):
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=ORDER_TIMEOUT)
        return self.client().poll_and_finalize(order, deadline)


def reasonOf(failure) -> str:
    """
    One line on why an order failed, as the ACME server says it.
    """
    error = failure.value
    from acme import errors, messages

    if isinstance(error, errors.ValidationError):
        problems = []
        for authorization in error.failed_authzrs:
            for challenge in authorization.body.challenges:
                if challenge.error is not None:
                    problems.append(str(challenge.error))
        return "validation failed: " + ("; ".join(problems) or "no reason given")
    if isinstance(error, messages.Error):
        return str(error)
    return str(error).splitlines()[0] if str(error) else type(error).__name__
