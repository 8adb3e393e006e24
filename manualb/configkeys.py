"""
How the data model declares the keys of the configuration file once
(L{key}, L{Key}, L{keys}), and the one error a wrong file gives
(L{ConfigError}); re-exported by L{manualb.config}.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["KEY", "Key", "key", "keys", "ConfigError"]

#: The entry of an attrs field's metadata that holds its L{Key}.
KEY = "manualb.key"


@attrs.frozen
class Key:
    """
    How a field of the data model is written in the configuration file:
    the key of the same name in its section (or an option of the same name
    in a value, for L{ServerConfig} and L{HealthCheckConfig}).

    @ivar default: The value when the key is absent (the field's default);
        L{attrs.NOTHING} when the key is required.
    @ivar kind: How the file reader reads a simple value:
        C{"duration"}, C{"integer"}, C{"size"}, C{"flag"} or C{"text"} (see
        L{manualb.syntax.parseValue}); L{None} when the stage that owns the
        key reads it with a syntax of its own.
    @ivar minimum: The smallest value allowed: for a duration, 0 allows
        zero (else it must be more than zero); for a size, 1 refuses zero;
        for an integer, the minimum (0 when L{None}).
    @ivar nginx: The nginx directive (or parameter) this key follows, or
        L{None}.
    @ivar doc: What it is, in one line.
    @ivar example: A value to show in messages, such as C{30s}; L{None}
        when there is no need.
    """

    default: Any
    kind: str | None = None
    minimum: float | None = None
    nginx: str | None = None
    doc: str = ""
    example: str | None = None


def key(
    default: Any = attrs.NOTHING,
    *,
    kind: str | None = None,
    minimum: float | None = None,
    nginx: str | None = None,
    doc: str = "",
    example: str | None = None,
    **field: Any,
) -> Any:
    """
    Declare a field that is a key of the configuration file: an
    L{attrs.field} with C{default} (none when not given: the key is
    required) and the L{Key} made of the other arguments in its metadata.

    @param field: Further arguments of L{attrs.field}, such as C{converter}.
    """
    return attrs.field(
        default=default,
        metadata={KEY: Key(default, kind, minimum, nginx, doc, example)},
        **field,
    )


def keys(cls: type) -> dict[str, Key]:
    """
    The keys of an attrs class of the data model, by name, in the order
    they are declared (the order messages list them in).
    """
    return {
        field.name: field.metadata[KEY]
        for field in attrs.fields(cls)
        if KEY in field.metadata
    }


class ConfigError(Exception):
    """
    The configuration file is wrong; C{str()} of this error is the single
    message to show the user.

    @ivar source: The file name (or C{"<string>"}).
    @ivar section: The section header as written (without brackets), or
        L{None} when the problem is not inside one section.
    @ivar key: The key, or L{None} when the problem is not about one key.
    @ivar message: What is wrong, without the location.
    @ivar line: The line number, when configparser reported one, else
        L{None}.
    """

    def __init__(
        self,
        source: str,
        section: str | None,
        key: str | None,
        message: str,
        line: int | None = None,
    ) -> None:
        super().__init__(source, section, key, message, line)
        self.source = source
        self.section = section
        self.key = key
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f", line {self.line}"
        place = ""
        if self.section is not None:
            place = f"[{self.section}]"
        if self.key is not None:
            place = f"{place} {self.key}" if place else self.key
        if place:
            return f"{where}: {place}: {self.message}"
        return f"{where}: {self.message}"
