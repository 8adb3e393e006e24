"""
The reading side of an HTTP/2 client connection: header blocks decoded once
for as long as they mean the same.

Clients send near-identical header blocks for their requests: once the
first request has put its fields in the HPACK dynamic table, the next ones
are made of indexed fields only (h2load's are a few bytes, a browser's
mostly so).  Such a block changes nothing in the table, and while the table
is unchanged the same bytes decode to the same header list: L{BlockDecoder}
keeps the lists of the last few such blocks, and the proxy keeps what it
made of each (its checks and its split into pseudo-header and regular
fields) with it.

A block with anything but indexed fields (a literal, which may add to the
table, or a table size update) empties the cache before it is decoded, so
that no list decoded against an older table is ever handed out again.
"""

from __future__ import annotations

from hpack import Decoder
from hpack.exceptions import InvalidTableSizeError, OversizedHeaderListError


class DecodedBlock(tuple):
    """
    The header list of one cached header block (a tuple of C{(name, value)}
    pairs), shared by the requests that sent it.

    @ivar request: What the proxy made of the list (see
        L{manualb.web.http2.ProxyH2Stream}), once it has; L{None} before.
    @ivar size: The list's size as RFC 7541 counts it (32 bytes more for
        each field).
    """

    request = None
    size = 0


def indexedOnly(block: bytes) -> bool:
    """
    Whether C{block} is made of indexed header fields only (RFC 7541,
    section 6.1): fields that change nothing in the dynamic table.
    """
    position = 0
    size = len(block)
    while position < size:
        first = block[position]
        if not first & 0x80:
            return False
        position += 1
        if first & 0x7F == 0x7F:
            # The index goes on in bytes with the high bit set, up to one
            # without.
            while position < size and block[position] & 0x80:
                position += 1
            position += 1
    return position == size


class BlockDecoder(Decoder):
    """
    An HPACK decoder that remembers the header lists of up to
    L{CACHE_SIZE} blocks of indexed fields only, as long as its dynamic
    table does not change (see the module's docstring).

    @ivar last: The cached list that the last block decoded to, or L{None}
        when that block was not one to cache.
    """

    #: How many blocks are remembered.
    CACHE_SIZE = 16
    #: The longest block (bytes) that is remembered.
    MAX_BLOCK = 128
    #: The most fields of a block that is remembered.
    MAX_FIELDS = 48

    last: DecodedBlock | None = None

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self._blocks: dict[bytes, DecodedBlock] = {}

    def decode(self, data, raw: bool = False):
        if not raw:
            self.last = None
            self._blocks.clear()
            return super().decode(data, raw)
        if type(data) is not bytes:
            data = bytes(data)
        blocks = self._blocks
        block = blocks.get(data)
        if block is not None:
            # Limits may have been lowered since it was decoded.
            if block.size > self.max_header_list_size:
                raise OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} has been received"
                )
            if self.header_table_size > self.max_allowed_table_size:
                raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
            self.last = block
            return block
        self.last = None
        if len(data) > self.MAX_BLOCK or not indexedOnly(data):
            # It may change the table: what was decoded before may no
            # longer be what the same bytes mean.
            blocks.clear()
            return super().decode(data, raw)
        headers = super().decode(data, raw)
        if len(headers) > self.MAX_FIELDS:
            return headers
        block = DecodedBlock(headers)
        block.size = sum(32 + len(name) + len(value) for name, value in headers)
        if len(blocks) >= self.CACHE_SIZE:
            blocks.clear()
        blocks[data] = self.last = block
        return block
