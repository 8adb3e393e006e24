"""
The PROXY protocol (HAProxy's, versions 1 and 2): a header sent to a backend
first on a proxied TCP connection, telling it the client's address and the
address the client connected to, which it cannot see itself.

See U{https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt}.
"""

from __future__ import annotations

import ipaddress
import struct

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress

__all__ = ["SIGNATURE", "v1Header", "v2Header"]

#: The 12 bytes a version 2 header starts with.
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address

# Version 2: the version (2) and the command, high and low nibbles.
_V2_LOCAL = 0x20
_V2_PROXY = 0x21
# Version 2: the address family and the transport protocol (1, STREAM).
_V2_TCP4 = 0x11
_V2_TCP6 = 0x21


def _ip(address: IAddress) -> tuple[_IP, int] | None:
    """
    The IP address and port of a TCP address, or L{None} for any other kind
    (a UNIX socket, say).
    """
    if not isinstance(address, (IPv4Address, IPv6Address)) or address.type != "TCP":
        return None
    try:
        # An IPv6 address may carry its scope (fe80::1%eth0): not sent.
        ip = ipaddress.ip_address(address.host.split("%", 1)[0])
    except ValueError:
        return None
    return ip, address.port


def _endpoints(
    source: IAddress, destination: IAddress
) -> tuple[int, _IP, _IP, int, int] | None:
    """
    The IP version, addresses and ports of a connection, both of one family,
    or L{None} when one of them is not a TCP address.

    Both IPv4-mapped IPv6 addresses (a dual-stack listener's IPv4 client) are
    given as IPv4; an IPv4 address beside an IPv6 one is given IPv4-mapped.
    """
    ends = _ip(source), _ip(destination)
    if ends[0] is None or ends[1] is None:
        return None
    (src, sport), (dst, dport) = ends
    mapped = [
        ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped is not None else ip
        for ip in (src, dst)
    ]
    if mapped[0].version == mapped[1].version == 4:
        src, dst = mapped
    elif src.version != dst.version:
        src, dst = (
            ip if ip.version == 6 else ipaddress.IPv6Address("::ffff:" + str(ip))
            for ip in (src, dst)
        )
    return src.version, src, dst, sport, dport


def v1Header(source: IAddress, destination: IAddress) -> bytes:
    """
    A version 1 (text) header: C{PROXY TCP4 src dst sport dport\\r\\n}, or
    C{PROXY UNKNOWN\\r\\n} when the addresses are not both TCP ones.

    @param source: The client's address (C{transport.getPeer()}).
    @param destination: The address the client connected to
        (C{transport.getHost()}).
    """
    endpoints = _endpoints(source, destination)
    if endpoints is None:
        return b"PROXY UNKNOWN\r\n"
    version, src, dst, sport, dport = endpoints
    return b"PROXY TCP%d %s %s %d %d\r\n" % (
        version,
        str(src).encode("ascii"),
        str(dst).encode("ascii"),
        sport,
        dport,
    )


def v2Header(source: IAddress, destination: IAddress) -> bytes:
    """
    A version 2 (binary) header: the signature, the PROXY command, TCP over
    IPv4 or IPv6, the addresses and the ports; the LOCAL command with no
    address when the addresses are not both TCP ones.

    @param source: The client's address (C{transport.getPeer()}).
    @param destination: The address the client connected to
        (C{transport.getHost()}).
    """
    endpoints = _endpoints(source, destination)
    if endpoints is None:
        return SIGNATURE + struct.pack("!BBH", _V2_LOCAL, 0, 0)
    version, src, dst, sport, dport = endpoints
    family = _V2_TCP4 if version == 4 else _V2_TCP6
    addresses = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    return SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(addresses)) + addresses


#: The header builders by the name C{proxy_protocol} gives them.
HEADERS = {"v1": v1Header, "v2": v2Header}
