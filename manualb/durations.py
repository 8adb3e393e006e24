"""
nginx-style durations such as C{500ms}, C{10s} or C{1m30s}, and sizes such
as C{512}, C{64k} or C{1m}.

Timeouts in the configuration file are written the way nginx writes them so
that people moving a setup over from nginx can copy the values unchanged.
Internally every duration is a L{float} number of seconds, which is what
Twisted's C{callLater} and endpoint timeouts expect, and every size an
L{int} number of bytes.
"""

from __future__ import annotations

import math
import re

__all__ = ["UNITS", "SIZE_UNITS", "parseDuration", "formatDuration", "parseSize"]

#: Seconds per unit, from the most to the least significant unit.
UNITS: dict[str, float] = {
    "d": 86400.0,
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 0.001,
}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_BARE_NUMBER = re.compile(_NUMBER)
# One "<number><unit>" part, optionally preceded by whitespace.  The unit is
# matched greedily as letters and checked afterwards, for a precise message.
_PART = re.compile(rf"\s*({_NUMBER})([a-zA-Z]*)")
_KNOWN = ", ".join(UNITS)

#: Bytes per unit of a size, as nginx counts them (C{k} is 1024 bytes).  Units
#: are case-insensitive, as in nginx: C{64K} is C{64k}.
SIZE_UNITS: dict[str, int] = {
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
}

# ASCII digits only: \d would accept other scripts' digits.
_SIZE = re.compile(r"([0-9]+)([a-zA-Z]?)")
_KNOWN_SIZE_UNITS = ", ".join(SIZE_UNITS)
_SIZE_EXAMPLES = "512, 64k, 1m"


def parseDuration(text: str) -> float:
    """
    Parse an nginx-style duration into seconds.

    A bare number means seconds (C{"10"}, C{"1.5"}); otherwise the value is
    one or more number-and-unit parts from the most to the least significant
    unit, optionally separated by spaces, as nginx allows (C{"1h 30m"},
    C{"1m30s"}, C{"1.5s"}).  Known units are C{d}, C{h}, C{m}, C{s} and
    C{ms}.

    @raise ValueError: if C{text} is empty, negative or otherwise not a
        duration; the message quotes C{text} and says what is wrong so that
        it can be shown to the user as is.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError("empty duration (expected a value like 500ms, 10s, 1m30s)")
    if stripped.startswith("-"):
        raise ValueError(f"bad duration {text!r}: negative durations are not allowed")
    if _BARE_NUMBER.fullmatch(stripped):
        seconds = float(stripped)
    else:
        seconds = _parseParts(stripped)
    if not math.isfinite(seconds):
        raise ValueError(f"bad duration {text!r}: too large")
    return seconds


def _parseParts(text: str) -> float:
    """
    Add up the number-and-unit parts of C{text}, insisting that units go from
    the most to the least significant (as nginx does) so that typos such as
    C{"1s1m"} are caught instead of silently meaning 61 seconds.
    """
    total = 0.0
    previousRank = -1
    position = 0
    while position < len(text):
        match = _PART.match(text, position)
        if match is None:
            raise ValueError(
                f"bad duration {text!r}: expected a number at "
                f"{text[position:].strip()!r}"
            )
        number, unit = match.groups()
        if not unit and text[match.end() :].lstrip()[:1].isalpha():
            raise ValueError(
                f"bad duration {text!r}: no space allowed between a number "
                f"and its unit"
            )
        if not unit:
            raise ValueError(
                f"bad duration {text!r}: missing unit after {number!r} "
                f"(known units: {_KNOWN})"
            )
        if unit not in UNITS:
            raise ValueError(
                f"bad duration {text!r}: unknown unit {unit!r} "
                f"(known units: {_KNOWN})"
            )
        rank = list(UNITS).index(unit)
        if rank <= previousRank:
            raise ValueError(
                f"bad duration {text!r}: units must go from the largest to "
                f"the smallest, each at most once ({_KNOWN})"
            )
        previousRank = rank
        total += float(number) * UNITS[unit]
        position = match.end()
    return total


def formatDuration(seconds: float) -> str:
    """
    Format C{seconds} the way L{parseDuration} reads it, for messages and
    documentation: C{0.5} gives C{"500ms"}, C{10} gives C{"10s"} and C{90}
    gives C{"1m30s"}.

    The value is rounded to whole milliseconds, the smallest unit there is.

    @raise ValueError: if C{seconds} is negative.
    """
    if seconds < 0:
        raise ValueError(f"negative duration: {seconds!r}")
    remaining = round(seconds * 1000)
    if remaining == 0:
        return "0s"
    parts = []
    for unit, size in UNITS.items():
        unitMilliseconds = round(size * 1000)
        count, remaining = divmod(remaining, unitMilliseconds)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def parseSize(text: str) -> int:
    """
    Parse an nginx-style size into bytes.

    A bare whole number means bytes (C{"512"}); a C{k}, C{m} or C{g} right
    after it means kibibytes, mebibytes or gibibytes (C{"64k"}, C{"1m"},
    C{"1g"}; upper case works too, as in nginx).  Fractions are not sizes.

    @raise ValueError: if C{text} is empty, negative or otherwise not a size;
        the message quotes C{text} and says what is wrong so that it can be
        shown to the user as is.
    """
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"empty size (expected a value like {_SIZE_EXAMPLES})")
    if stripped.startswith("-"):
        raise ValueError(f"bad size {text!r}: negative sizes are not allowed")
    match = _SIZE.fullmatch(stripped)
    if match is None:
        raise ValueError(_sizeProblem(text, stripped))
    number, unit = match.groups()
    if unit and unit.lower() not in SIZE_UNITS:
        raise ValueError(
            f"bad size {text!r}: unknown unit {unit!r} "
            f"(known units: {_KNOWN_SIZE_UNITS})"
        )
    return int(number) * SIZE_UNITS.get(unit.lower(), 1)


def _sizeProblem(text: str, stripped: str) -> str:
    """
    Say what is wrong with C{stripped}, which is not a size, as precisely as
    can be.
    """
    leading = re.match(r"[0-9]*", stripped)
    assert leading is not None
    digits, rest = leading.group(), stripped[leading.end() :]
    if digits and rest[:1] == ".":
        return f"bad size {text!r}: must be a whole number (use a smaller unit)"
    if digits and rest[:1].isspace() and rest.strip().isalpha():
        return f"bad size {text!r}: no space allowed between a number and its unit"
    if digits and rest.isalpha():
        return (
            f"bad size {text!r}: unknown unit {rest!r} "
            f"(known units: {_KNOWN_SIZE_UNITS})"
        )
    return (
        f"bad size {text!r}: expected a whole number of bytes with an optional "
        f"unit ({_KNOWN_SIZE_UNITS}), like {_SIZE_EXAMPLES}"
    )
