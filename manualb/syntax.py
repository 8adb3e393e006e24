"""
Value syntax of the configuration file, shared by every stage that reads a
key: nginx-style durations such as C{500ms}, C{10s} or C{1m30s} and sizes
such as C{512}, C{64k} or C{1m}; whole numbers, C{on}/C{off} flags, host
names, ports, server addresses and the C{name=value} options of a server
line; the gatekeeper's networks (C{10.0.0.0/8 2001:db8::/32}) and request
rates (C{10r/s burst=20 nodelay}); and L{Section}, one section's keys handed out as checked values.
L{IniLines} finds the line of a section or key, which configparser does not
keep, and L{closest} the known name a misspelt one was meant to be.

Timeouts in the configuration file are written the way nginx writes them so
that people moving a setup over from nginx can copy the values unchanged.
Internally every duration is a L{float} number of seconds, which is what
Twisted's C{callLater} and endpoint timeouts expect, and every size an
L{int} number of bytes.

This module is a leaf: it imports nothing of manualb, so that the data
model, the stages and the file reader can all use it.  Its functions raise
L{ValueError} with a message to show as is; L{Section} turns them into the
error its owner asks for (the file reader's names the file, section and
key).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

__all__ = [
    "UNITS",
    "SIZE_UNITS",
    "DEFAULT_PORTS",
    "parseDuration",
    "formatDuration",
    "parseSize",
    "parseValue",
    "durationValue",
    "integerValue",
    "readableFile",
    "hostName",
    "canonicalHost",
    "parseServerAddress",
    "parseOptions",
    "parseNetworks",
    "SimpleKey",
    "Section",
    "SECTION_HEADER",
    "IniLines",
    "closest",
]

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


# ASCII digits only, with an optional sign (a negative number gets the
# minimum's message, not a syntax one).
_INTEGER = re.compile(r"[+-]?[0-9]+")


def durationValue(text: str, allowZero: bool = False) -> float:
    """
    Return the duration C{text} in seconds, which must be positive unless
    C{allowZero}.

    @raise ValueError: with a message quoting C{text}.
    """
    seconds = parseDuration(text)
    if seconds <= 0 and not allowZero:
        raise ValueError(f"must be greater than zero, got {text!r}")
    return seconds


def integerValue(text: str, minimum: int) -> int:
    """
    Return C{text} as a whole number of at least C{minimum}.

    @raise ValueError: with a message quoting C{text}.
    """
    if not _INTEGER.fullmatch(text):
        raise ValueError(f"bad integer {text!r}")
    value = int(text)
    if value < minimum:
        raise ValueError(f"must be at least {minimum}, got {value}")
    return value


def workersValue(text: str) -> int:
    """
    Return the number of worker processes C{text} asks for: a whole number
    from 1, or C{auto} (in any case) for one a CPU.

    @raise ValueError: with a message quoting C{text}.
    """
    if text.lower() == "auto":
        return os.cpu_count() or 1
    if not _INTEGER.fullmatch(text) or int(text) < 1:
        raise ValueError(f"expected a number of processes from 1, or auto, got {text!r}")
    return int(text)


def _flagValue(text: str) -> bool:
    """
    Return C{on} as C{True} and C{off} as C{False}, in any case.
    """
    value = text.lower()
    if value not in ("on", "off"):
        raise ValueError(f"expected on or off, got {text!r}")
    return value == "on"


def parseValue(text: str, kind: str, minimum: float | None = None) -> object:
    """
    Read the value of a simple key, as the data model declares it.

    @param kind: C{"duration"} (seconds, more than zero unless C{minimum} is
        0), C{"integer"} (at least C{minimum}, 0 when L{None}), C{"size"}
        (bytes, more than zero when C{minimum} is 1), C{"flag"} (C{on} or
        C{off}), C{"text"} (as written), C{"workers"} (L{workersValue}) or
        C{"front_end"} (C{lean} or C{twisted}).

    @raise ValueError: with a message quoting C{text}.
    """
    if kind == "duration":
        return durationValue(text, allowZero=minimum == 0)
    if kind == "integer":
        return integerValue(text, int(minimum or 0))
    if kind == "size":
        size = parseSize(text)
        if minimum and size < minimum:
            raise ValueError(f"must be more than {int(minimum) - 1}")
        return size
    if kind == "flag":
        return _flagValue(text)
    if kind == "text":
        return text
    if kind == "workers":
        return workersValue(text)
    if kind == "front_end":
        if text.lower() not in ("lean", "twisted"):
            raise ValueError(f"expected lean or twisted, got {text!r}")
        return text.lower()
    raise ValueError(f"unknown kind of value {kind!r}")


def readableFile(text: str, directory: str) -> str:
    """
    Return the absolute path of the file C{text}, relative to C{directory}
    unless absolute, after checking that it is a file that can be read.

    @raise ValueError: with a message quoting C{text} (and the path looked
        at, when that is another).
    """
    path = os.path.abspath(os.path.join(directory, text))
    shown = repr(text) if path == text else f"{text!r} ({path})"
    if not os.path.exists(path):
        raise ValueError(f"no such file {shown}")
    if not os.path.isfile(path):
        raise ValueError(f"not a file: {shown}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"cannot read {shown}: permission denied")
    return path


# One label of a host name, once lower-cased (route hosts, certificate names,
# tls_name): stricter than _HOSTNAME, as these are matched against names.
_HOST_LABEL = re.compile(r"[a-z0-9-]+")


def hostName(text: str, wildcard: bool) -> str:
    """
    Return the host name C{text} in lower case, after checking it: labels of
    letters, digits and C{-}, separated by dots, and no port; when
    C{wildcard}, one leading C{*.} is allowed, as in C{*.example.com}.

    @raise ValueError: with a message quoting C{text}.
    """
    name = text.lower()
    labels = name[2:] if wildcard and name.startswith("*.") else name
    if "*" in labels:
        if wildcard:
            raise ValueError(
                f"a wildcard is allowed only as one leading '*.', such as "
                f"*.example.com, got {text!r}"
            )
        raise ValueError(f"expected a host name without wildcard, got {text!r}")
    host, colon, port = labels.rpartition(":")
    if colon and host and ":" not in host and port.isascii() and port.isdigit():
        raise ValueError(f"a host name has no port, got {text!r}")
    if not labels.isascii() or not all(
        _HOST_LABEL.fullmatch(label) for label in labels.split(".")
    ):
        example = "www.example.com"
        if wildcard:
            example += " or *.example.com"
        raise ValueError(
            f"bad host name {text!r} (expected letters, digits and '-' in "
            f"labels separated by dots, such as {example})"
        )
    return name


def canonicalHost(host: str) -> str:
    """
    Return a spelling of C{host} that is equal for equal hosts, so that
    C{A:80} and C{a:80}, or C{[::1]} and C{[0::1]}, count as duplicates.
    """
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host.lower()


#: The port of a server address that gives none, by scheme; the schemes a
#: server address may use.
DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}

_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+")


def parseServerAddress(text: str) -> tuple[str, int, str]:
    """
    Parse one entry of C{servers}: C{host:port}, C{[v6addr]:port}, C{host}
    (the scheme's default port, 80 for http and 443 for https) or any of
    those behind C{http://} or C{https://}.

    @return: C{(host, port, scheme)}, the host of an IPv6 address without
        brackets.

    @raise ValueError: with a message quoting C{text}, if it is not a
        supported server address.
    """
    scheme = "http"
    rest = text
    if "://" in text:
        scheme, rest = text.split("://", 1)
        scheme = scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError(
                f"unsupported scheme {scheme!r} in {text!r} "
                f"(supported: {', '.join(DEFAULT_PORTS)})"
            )
        if "/" in rest.rstrip("/"):
            raise ValueError(
                f"unexpected path in {text!r}; give only scheme://host:port"
            )
        rest = rest.rstrip("/")
    host, portText = _splitHostPort(rest, text)
    port = DEFAULT_PORTS[scheme] if portText is None else _parsePort(portText, text)
    return host, port, scheme


def _splitHostPort(hostPort: str, text: str) -> tuple[str, str | None]:
    """
    Split C{host:port} or C{[v6addr]:port} into host and port text (L{None}
    if there is no port), checking the host.
    """
    if hostPort.startswith("["):
        address, bracket, after = hostPort[1:].partition("]")
        if not bracket:
            raise ValueError(f"missing ']' in {text!r}")
        if after and not after.startswith(":"):
            raise ValueError(f"unexpected {after!r} after ']' in {text!r}")
        _checkIPv6(address, text)
        return address, (after[1:] if after else None)
    if hostPort.count(":") > 1:
        raise ValueError(f"IPv6 address needs brackets, like [::1]:8080, in {text!r}")
    host, colon, portText = hostPort.partition(":")
    if not host:
        raise ValueError(f"empty host in {text!r}")
    if not _HOSTNAME.fullmatch(host):
        raise ValueError(f"bad host {host!r} in {text!r}")
    return host, (portText if colon else None)


def _checkIPv6(address: str, text: str) -> None:
    """
    Insist that C{address}, found between brackets, is an IPv6 address.
    """
    if not address:
        raise ValueError(f"empty host in {text!r}")
    try:
        ipaddress.IPv6Address(address)
    except ValueError:
        raise ValueError(f"bad IPv6 address {address!r} in {text!r}") from None


def _parsePort(portText: str, text: str) -> int:
    """
    Return C{portText} as a TCP port number, 1..65535.
    """
    # isdigit() alone would accept non-ASCII digits such as "٨٠".
    if not (portText.isascii() and portText.isdigit()):
        raise ValueError(f"bad port {portText!r} in {text!r}")
    port = int(portText)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} out of range 1..65535 in {text!r}")
    return port


def parseOptions(
    words: list[str],
    known: Mapping[str, tuple[Callable[[str], object], str] | None],
    context: str,
) -> dict[str, object]:
    """
    Read options written as nginx writes a C{server}'s parameters: bare
    C{name} flags and C{name=value} pairs, neither with spaces inside.

    @param words: The options, already split on whitespace.
    @param known: How to read each option, by name, in the order messages
        list them: L{None} for a flag (which becomes C{True} when given),
        else the function that reads its value (raising L{ValueError}) and an
        example such as C{weight=3}.
    @param context: The text that messages quote: the whole line or value.

    @return: The value of each option given, by name.

    @raise ValueError: for an unknown option, an option given twice, a flag
        given a value, a missing value or a bad one.
    """
    names = ", ".join(known)
    hasFlags = None in known.values()
    options: dict[str, object] = {}
    for word in words:
        name, equals, value = word.partition("=")
        if name not in known:
            meant = closest(name, known)
            suggestion = "" if meant is None else f"; did you mean {meant!r}?"
            if not equals and not hasFlags:
                raise ValueError(
                    f"expected name=value, got {word!r} in {context!r} "
                    f"(known names: {names}){suggestion}"
                )
            raise ValueError(
                f"unknown option {name!r} in {context!r} (known options: {names})"
                f"{suggestion}"
            )
        if name in options:
            raise ValueError(f"option {name!r} given twice in {context!r}")
        reader = known[name]
        if reader is None:
            if equals:
                raise ValueError(
                    f"option {name!r} takes no value, got {word!r} in {context!r}"
                )
            options[name] = True
            continue
        read, example = reader
        if not value:
            raise ValueError(
                f"option {name!r} needs a value, such as {example}, in {context!r}"
            )
        try:
            options[name] = read(value)
        except ValueError as e:
            raise ValueError(f"bad {name} in {context!r}: {e}") from None
    return options


# The gatekeeper's values: networks and request rates.



def parseNetworks(lines: Iterable[str]) -> tuple[str, ...]:
    """
    Read a list of networks: CIDRs, IPv4 or IPv6, separated by spaces,
    commas or lines; a bare address is a network of one; C{all} is every
    address of both versions (nginx's C{allow all}); C{none} alone is no
    network (for a route to drop the gatekeeper's list).

    @return: Each network as C{ipaddress} writes it (C{10.0.0.0/8}).

    @raise ValueError: for anything that is not a network, or one whose
        address has bits beyond its prefix (C{10.0.0.1/8}).
    """
    words = [word for line in lines for word in line.replace(",", " ").split()]
    if not words:
        raise ValueError("empty value (write none for no network)")
    if [word.lower() for word in words] == ["none"]:
        return ()
    networks: list[str] = []
    for word in words:
        if word.lower() == "all":
            found = ["0.0.0.0/0", "::/0"]
        elif word.lower() == "none":
            raise ValueError("none stands alone, for no network at all")
        else:
            try:
                network = ipaddress.ip_network(word)
            except ValueError:
                try:
                    loose = ipaddress.ip_network(word, strict=False)
                except ValueError:
                    raise ValueError(
                        f"bad network {word!r} (expected an address or a CIDR such "
                        f"as 192.0.2.0/24 or 2001:db8::/32, or all)"
                    ) from None
                raise ValueError(
                    f"bad network {word!r}: bits set beyond the prefix "
                    f"(did you mean {loose.with_prefixlen}?)"
                ) from None
            found = [network.with_prefixlen]
        networks.extend(network for network in found if network not in networks)
    return tuple(networks)


class SimpleKey(Protocol):
    """
    How a simple key is declared: L{manualb.config.Key}.
    """

    kind: str
    minimum: float | None
    default: object


class Section:
    """
    The keys of one section of an INI file, handed out as checked values;
    every mistake becomes the error of C{makeError}, which names the key.

    @ivar header: The section header as written, without brackets.
    """

    def __init__(
        self,
        header: str,
        values: Mapping[str, str],
        makeError: Callable[[str | None, str], Exception],
    ) -> None:
        """
        @param values: The raw value of each key given, by key.
        @param makeError: Makes the error to raise, from the key (or L{None}
            for the section as a whole) and the message.
        """
        self.header = header
        self._values = values
        self._makeError = makeError

    def error(self, key: str | None, message: str) -> Exception:
        """
        Make the error about C{key} of this section (L{None} for the whole
        section).
        """
        return self._makeError(key, message)

    def lines(self, key: str) -> list[str] | None:
        """
        Return the non-empty lines of a value, or L{None} if the key is
        absent.
        """
        value = self._values.get(key)
        if value is None:
            return None
        return [line.strip() for line in value.splitlines() if line.strip()]

    def single(self, key: str, required: bool = False) -> str | None:
        """
        Return a one-line value, or L{None} if the optional key is absent.

        @raise Exception: (the owner's error) if the value is empty or spans
            several lines, or if C{required} and the key is absent.
        """
        lines = self.lines(key)
        if lines is None:
            if required:
                raise self.error(key, "missing required key")
            return None
        if not lines:
            raise self.error(key, "empty value")
        if len(lines) > 1:
            raise self.error(key, f"expected a single value, got {len(lines)} lines")
        return lines[0]

    def value(
        self, key: str, kind: str, default: object, minimum: float | None = None
    ) -> object:
        """
        Return the value of a simple key (see L{parseValue} for C{kind} and
        C{minimum}), or C{default} if absent.
        """
        text = self.single(key)
        if text is None:
            return default
        try:
            return parseValue(text, kind, minimum)
        except ValueError as e:
            raise self.error(key, str(e)) from None

    def read(self, key: str, spec: SimpleKey) -> object:
        """
        Return the value of the simple key C{key} as C{spec} declares it:
        its kind, its minimum, and its default when absent.
        """
        return self.value(key, spec.kind, spec.default, spec.minimum)

    def file(self, key: str, directory: str) -> str | None:
        """
        Return the absolute path of a readable file (L{readableFile}), or
        L{None} if absent.
        """
        text = self.single(key)
        if text is None:
            return None
        try:
            return readableFile(text, directory)
        except ValueError as e:
            raise self.error(key, str(e)) from None


def closest(word: str, known: Iterable[str]) -> str | None:
    """
    The name of C{known} that C{word} most likely misspells (by
    L{difflib.get_close_matches}), or L{None} when none is close, for the
    "did you mean" of a message about an unknown name.
    """
    matches = difflib.get_close_matches(word.lower(), list(known), n=1)
    return matches[0] if matches else None


#: A section header as the file reader's configparser reads it, stricter
#: than configparser's own pattern, which silently ignores anything after
#: the closing bracket ("[route a] b").  Comments are already removed.
SECTION_HEADER = re.compile(r"\[(?P<header>[^\]]+)\]$")

_COMMENT = re.compile(r"^\s*[;#]|\s[;#]")


class IniLines:
    """
    Where each section header and key of an INI text is, and each line of
    a value spanning several: found by one scan that reads the text as the
    file reader's configparser does (C{=} between key and value, C{;} and
    C{#} comments, indented continuation lines that a blank or comment line
    ends, keys in lower case), since configparser keeps no line numbers.
    """

    def __init__(self, text: str) -> None:
        self._sections: dict[str, int] = {}
        self._keys: dict[tuple[str, str], list[tuple[int, str]]] = {}
        section: str | None = None
        lines: list[tuple[int, str]] | None = None
        # configparser reads a StringIO, which splits on "\n" only.
        for number, line in enumerate(text.split("\n"), 1):
            comment = _COMMENT.search(line)
            content = (line[: comment.start()] if comment else line).strip()
            if not content:
                lines = None
            elif line[:1].isspace() and lines is not None:
                lines.append((number, content))
            elif header := SECTION_HEADER.match(content):
                section = header.group("header")
                self._sections.setdefault(section, number)
                lines = None
            elif section is not None and "=" in content:
                key, _, value = content.partition("=")
                lines = [(number, value.strip())]
                self._keys.setdefault((section, key.strip().lower()), lines)
            else:
                lines = None

    def locate(self, section: str | None, key: str | None, message: str = "") -> int | None:
        """
        The line of key C{key} of section C{[section]}, or of the section's
        header when the key is L{None} or not in the file (a required key
        that is missing), or L{None} when there is no such section.

        @param message: The message about the key: when it quotes one line
            of a value spanning several (C{'10.0.0.1:80 max_fail=3'}), that
            line is the one meant.
        """
        if section is None:
            return None
        lines = self._keys.get((section, key.lower())) if key is not None else None
        if not lines:
            return self._sections.get(section)
        for number, text in lines:
            if text and repr(text) in message:
                return number
        return lines[0][0]


def anyPort(description: str) -> bool:
    """
    Whether a TCP-like endpoint string asks for port 0.
    """
    fields = description.split(":")
    return len(fields) > 1 and fields[1].strip() == "0"
