"""
How the web application firewall reads a value before it looks for attacks
in it (L{normalise}): percent-decoding repeated against double and triple
encoding, C{%uXXXX}, overlong UTF-8, C{+} as a space in queries and forms,
HTML entities and JavaScript escapes, Unicode compatibility forms, control
characters, case, white space and SQL comments.

This module imports nothing of manualb's.
"""

from __future__ import annotations

import html
import re
import unicodedata

__all__ = ["VALUE_LIMIT", "Value", "decode", "normalise"]

#: The most bytes of one value inspected.
VALUE_LIMIT = 64 * 1024
#: How often a value is percent-decoded at most (double and triple
#: encoding).
_DECODINGS = 4

_PERCENT = re.compile(rb"%(?:[uU]([0-9a-fA-F]{4})|([0-9a-fA-F]{2}))")
_OVERLONG = re.compile(rb"[\xc0\xc1][\x80-\xbf]")
_JS_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|x([0-9a-fA-F]{2}))")
_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"\s+")


def _unpercent(match: re.Match[bytes]) -> bytes:
    wide, byte = match.groups()
    if byte is not None:
        return bytes((int(byte, 16),))
    return chr(int(wide, 16)).encode("utf-8", "replace")


def _unescapeJS(match: re.Match[str]) -> str:
    code = int(match.group(1) or match.group(2), 16)
    # A lone surrogate is no character (and libinjection cannot take one).
    return "\ufffd" if 0xD800 <= code <= 0xDFFF else chr(code)


def _overlong(match: re.Match[bytes]) -> bytes:
    first, second = match.group()
    return bytes((((first & 0x1F) << 6) | (second & 0x3F),))


def decode(raw: bytes, plus: bool = False) -> str:
    """
    Decode a value as a server could: percent-decoded up to four times
    (C{%uXXXX} too), C{+} as a space when C{plus} (queries and forms),
    overlong UTF-8 forms of ASCII as ASCII, invalid UTF-8 replaced, HTML
    entities and JavaScript escapes (C{\\u003c}) decoded, Unicode
    compatibility forms (full-width C{＜}) folded.  Control characters are
    kept.
    """
    value = raw[:VALUE_LIMIT]
    if plus:
        value = value.replace(b"+", b" ")
    for _ in range(_DECODINGS):
        # find(), not "in": bytes' "in" first tries its operand as an
        # integer, which raises and clears an error each time.
        if value.find(b"%") == -1:
            break
        decoded = _PERCENT.sub(_unpercent, value)
        if decoded == value:
            break
        value = decoded
    if value.find(b"\xc0") != -1 or value.find(b"\xc1") != -1:
        value = _OVERLONG.sub(_overlong, value)
    text = value.decode("utf-8", "replace")
    if "&" in text:
        text = html.unescape(text)
    if "\\" in text:
        text = _JS_ESCAPE.sub(_unescapeJS, text)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return text


def _stripComments(text: str) -> str:
    """
    Replace SQL block comments with a space (C{union/**/select}); keep the
    content of MySQL's executable comments (C{/*!50000union*/}).  Linear in
    the length of C{text}.
    """
    parts = []
    start = 0
    while True:
        opening = text.find("/*", start)
        if opening == -1:
            break
        closing = text.find("*/", opening + 2)
        if closing == -1:
            break
        parts.append(text[start:opening])
        if text.startswith("/*!", opening):
            inner = text[opening + 3 : closing].lstrip("0123456789")
            parts.append(" " + inner + " ")
        else:
            parts.append(" ")
        start = closing + 2
    if not parts:
        return text
    parts.append(text[start:])
    return "".join(parts)


class Value:
    """
    A value in its three forms.

    @ivar decoded: As L{decode} gives it, control characters kept (for the
        protocol signatures).
    @ivar clean: Without control characters other than white space (for
        libinjection).
    @ivar folded: Lower case, SQL comments and runs of white space as one
        space (for the other signatures).
    """

    __slots__ = ("decoded", "clean", "folded")

    def __init__(self, decoded: str, clean: str, folded: str) -> None:
        self.decoded = decoded
        self.clean = clean
        self.folded = folded


#: Printable ASCII that needs no decoding (no "%", "+", "&", "\\").
_PRINTABLE = re.compile(rb"[ !\"#$'()*,\-./0-9:;<=>?@A-Z\[\]^_`a-z{|}~]*")


def normalise(raw: bytes, plus: bool = False) -> Value:
    """
    Normalise a raw value (see L{decode}) into the forms the detectors
    read.
    """
    if _PRINTABLE.fullmatch(raw) and len(raw) <= VALUE_LIMIT:
        decoded = raw.decode("ascii")
        folded = decoded.lower()
        if "/*" in folded:
            folded = _stripComments(folded)
        if "  " in folded:
            folded = _SPACES.sub(" ", folded)
        return Value(decoded, decoded, folded)
    decoded = decode(raw, plus)
    clean = _CONTROLS.sub("", decoded) if _CONTROLS.search(decoded) else decoded
    folded = clean.lower()
    if "/*" in folded:
        folded = _stripComments(folded)
    folded = _SPACES.sub(" ", folded)
    return Value(decoded, clean, folded)
