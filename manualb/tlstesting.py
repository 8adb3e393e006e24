"""
Certificates made at test time: a certificate authority, server
certificates signed by it, and the PEM files a C{[tls]} section names.

Nothing here is secret or kept: every key is new, made in memory and
written only to the temporary directories of tests (C{self.mktemp()}), so
no key pair is ever committed.

Example, in a trial test::

    ca = makeCA("manualb test CA")
    directory = self.mktemp()
    caPath = writeCA(directory, ca)
    certPath, keyPath = writeTLSFiles(directory, ca, ["www.example.com"])
    tls = TLSConfig([CertificateConfig("www.example.com", certPath, keyPath)])

    # or, one certificate per entry, the first the default:
    tls = makeTLSConfig(directory, ca, [["www.example.com"], ["*.api.example.com"]])

Clients trust C{caPath} (C{ssl.create_default_context(cafile=caPath)}).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from manualb.config import CertificateConfig, TLSConfig

__all__ = [
    "CA",
    "makeCA",
    "makeCertificate",
    "writeCA",
    "writeTLSFiles",
    "makeTLSConfig",
]

#: A certificate authority: its certificate and private key.
CA = tuple[x509.Certificate, "ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey"]

_ONE_DAY = datetime.timedelta(days=1)


def _newKey(keyType: str):
    if keyType == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if keyType == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"unknown key type {keyType!r} (ec or rsa)")


def _name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def makeCA(name: str, issuer: CA | None = None, keyType: str = "ec") -> CA:
    """
    Make a certificate authority valid from yesterday for ten years.

    @param name: Its common name.
    @param issuer: The CA that signs it, making it an intermediate CA; or
        L{None} for a self-signed root.
    @param keyType: C{"ec"} (P-256) or C{"rsa"} (2048 bits).
    @return: C{(certificate, privateKey)}, L{cryptography} objects.
    """
    key = _newKey(keyType)
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = _name(name)
    if issuer is None:
        issuerName, signingKey = subject, key
    else:
        issuerName, signingKey = issuer[0].subject, issuer[1]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuerName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _ONE_DAY)
        .not_valid_after(now + 3650 * _ONE_DAY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()),
            critical=False,
        )
    return builder.sign(signingKey, hashes.SHA256()), key


def makeCertificate(
    ca: CA,
    names: Sequence[str],
    keyType: str = "ec",
    days: int = 30,
) -> tuple[bytes, bytes]:
    """
    Make a server certificate signed by C{ca}.

    @param names: Its subject alternative names: host names and wildcards
        (C{*.api.example.com}) become DNS names, IP addresses (C{127.0.0.1},
        C{::1}) become IP addresses.  The first one is also the common name.
    @param keyType: C{"ec"} (P-256) or C{"rsa"} (2048 bits).
    @param days: How long it is valid from now (it is valid from yesterday
        on); a negative number makes a certificate that has expired.
    @return: C{(certificatePEM, keyPEM)}: the certificate alone (not the CA's)
        and its unencrypted PKCS#8 key.
    """
    if not names:
        raise ValueError("a certificate needs at least one name")
    key = _newKey(keyType)
    now = datetime.datetime.now(datetime.timezone.utc)
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    caCertificate, caKey = ca
    notAfter = now + days * _ONE_DAY
    notBefore = min(now - _ONE_DAY, notAfter - _ONE_DAY)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(caCertificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )
    keyPEM = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), keyPEM


def _fileName(names: Sequence[str]) -> str:
    """
    A file name for a certificate of C{names}: C{*.api.example.com} gives
    C{_.api.example.com}.
    """
    return re.sub(r"[^A-Za-z0-9_.-]", "_", names[0])


def writeCA(directory: str, ca: CA, basename: str = "ca") -> str:
    """
    Write the certificate of C{ca} to C{directory/BASENAME.pem} (creating the
    directory), for clients to trust; return the path.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, basename + ".pem")
    with open(path, "wb") as f:
        f.write(ca[0].public_bytes(serialization.Encoding.PEM))
    return path


def writeTLSFiles(
    directory: str,
    ca: CA,
    names: Sequence[str],
    basename: str | None = None,
    chain: Sequence[x509.Certificate] = (),
    keyType: str = "ec",
    days: int = 30,
) -> tuple[str, str]:
    """
    Make a certificate for C{names} signed by C{ca} (L{makeCertificate}) and
    write it and its key to C{directory} (created if need be).

    @param basename: The files are C{BASENAME.crt} and C{BASENAME.key};
        by default the first name, with C{*} made C{_}.
    @param chain: Intermediate CA certificates written after the server
        certificate, in order, as a C{[tls]} certificate file holds its chain
        (for a C{ca} that is itself an intermediate: C{[ca[0]]}).
    @return: C{(certificatePath, keyPath)}.
    """
    os.makedirs(directory, exist_ok=True)
    if basename is None:
        basename = _fileName(names)
    certificatePEM, keyPEM = makeCertificate(ca, names, keyType=keyType, days=days)
    certificatePath = os.path.join(directory, basename + ".crt")
    keyPath = os.path.join(directory, basename + ".key")
    with open(certificatePath, "wb") as f:
        f.write(certificatePEM)
        for intermediate in chain:
            f.write(intermediate.public_bytes(serialization.Encoding.PEM))
    descriptor = os.open(keyPath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as f:
        f.write(keyPEM)
    return certificatePath, keyPath


def makeTLSConfig(
    directory: str,
    ca: CA,
    certificates: Sequence[Sequence[str]],
    chain: Sequence[x509.Certificate] = (),
    **options: str | None,
) -> TLSConfig:
    """
    A L{TLSConfig} with one new certificate for each entry of
    C{certificates}, each a list of names, the first of which is the
    certificate's C{name} in the C{[tls]} section; the first certificate is
    the default.  C{options} are the other fields of L{TLSConfig}
    (C{min_version="TLSv1.3"}, C{hsts="max-age=60"}...).
    """
    configs = []
    for names in certificates:
        certificatePath, keyPath = writeTLSFiles(directory, ca, names, chain=chain)
        configs.append(CertificateConfig(names[0].lower(), certificatePath, keyPath))
    return TLSConfig(configs, **options)
