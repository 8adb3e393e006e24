"""
Configuration composed of several files, with values from the environment.

C{include = conf.d/*.ini} in C{[manualb]} (nginx's C{include}) names more
files, a glob relative to the directory of the file that says it, one
pattern a line; the files each pattern matches are read in sorted order
after the including file, and their sections join its sections.  A section
may be defined in one file only: given twice across files, it is an error
naming both files and lines.  A file included again while it is being read
(a loop), and a file named without glob characters that does not exist,
are errors too; a glob that matches nothing is not (an empty C{conf.d/}).
An included file starts with a section header, and may itself include
others from its own C{[manualb]} section.

C{${NAME}} in a value is replaced by the environment variable C{NAME}, so
that secrets and per-environment values stay out of the file; a variable
that is not set is an error naming it, the file and the line.  C{$${}
writes a literal C{${}.  nginx's C{$variables} of C{log_format} and
C{hash}, which have no braces, are left alone, and comments are not read.

L{compose} reads the files into one text for the file reader, and
L{Composed.place} turns a line of that text back into the file and line
that an error should name.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping

from manualb.config import ConfigError
from manualb.syntax import SECTION_HEADER

__all__ = ["Composed", "compose", "substitute", "INCLUDE"]

#: The key of C{[manualb]} that names more files.
INCLUDE = "include"

# A comment line, or the start of an inline comment, as configparser reads
# them with the file reader's settings.
_COMMENT = re.compile(r"^\s*[;#]|\s[;#]")
_REFERENCE = re.compile(r"\$(\$?)\{([^}\n]*)(\}?)")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_GLOB = re.compile(r"[*?\[]")


class Composed:
    """
    The text of a configuration composed of several files, and where each
    of its lines comes from.

    @ivar text: The files one after the other, each after a blank line,
        with C{${NAME}} replaced and the C{include} keys blanked out (the
        file reader has nothing to do with them).
    @ivar sources: Every file read, the first one first.
    """

    def __init__(self) -> None:
        self.text = ""
        self.sources: list[str] = []
        self._pieces: list[tuple[int, str, int]] = []
        self._lines = 0

    def _append(self, source: str, text: str) -> None:
        if self._lines:
            # A blank line ends a value that continues at the end of the
            # previous file.
            self.text += "\n"
            self._lines += 1
        count = text.count("\n") + (0 if text.endswith("\n") else 1)
        self._pieces.append((self._lines + 1, source, count))
        self.text += text if text.endswith("\n") else text + "\n"
        self._lines += count
        self.sources.append(source)

    def origin(self, line: int) -> tuple[str, int]:
        """
        The file and the line in it of line C{line} of L{text}.
        """
        for first, source, count in reversed(self._pieces):
            if line >= first:
                return source, min(line - first + 1, count)
        return self._pieces[0][1], line

    def place(self, error: ConfigError) -> ConfigError:
        """
        Make C{error}, about a line of L{text}, name the file and line that
        line comes from.  An error about no line is left as it is.
        """
        if error.line is not None and len(self._pieces) > 1:
            error.source, error.line = self.origin(error.line)
        return error


def compose(path: str, environ: Mapping[str, str] | None = None) -> Composed:
    """
    Read the configuration file at C{path} and the files it includes.

    @param environ: The environment that C{${NAME}} reads; L{os.environ}
        unless given.

    @raise ConfigError: a file cannot be read, a variable is not set, a
        section is given in two files, an include is missing or loops.
    """
    composed = Composed()
    headers: dict[str, tuple[str, int]] = {}
    _read(composed, path, os.environ if environ is None else environ, headers, [])
    return composed


def _read(
    composed: Composed,
    path: str,
    environ: Mapping[str, str],
    headers: dict[str, tuple[str, int]],
    reading: list[str],
) -> None:
    text = readText(path)
    included = bool(reading)
    lines = substitute(text, path, environ).split("\n")
    includes: list[tuple[int, str]] = []
    section: str | None = None
    inInclude = False
    for index, line in enumerate(lines):
        number = index + 1
        comment = _COMMENT.search(line)
        content = (line[: comment.start()] if comment else line).strip()
        if not content:
            inInclude = False
            continue
        if line[:1].isspace() and inInclude:
            includes.append((number, content))
            lines[index] = ""
            continue
        inInclude = False
        header = SECTION_HEADER.match(content)
        if header:
            section = header.group("header")
            first = headers.get(section)
            if first is not None and first[0] != path:
                raise ConfigError(
                    path,
                    section,
                    None,
                    f"section defined twice: in {first[0]}, line {first[1]}, and here",
                    number,
                )
            headers.setdefault(section, (path, number))
            continue
        if section is None:
            if included:
                raise ConfigError(
                    path,
                    None,
                    None,
                    f"{content!r} comes before any section header (an included "
                    f"file starts with a section, such as [upstream NAME])",
                    number,
                )
            continue
        key, equals, value = content.partition("=")
        if equals and section == "manualb" and key.strip().lower() == INCLUDE:
            inInclude = True
            lines[index] = ""
            if value.strip():
                includes.append((number, value.strip()))
    composed._append(path, "\n".join(lines))
    reading = [*reading, os.path.realpath(path)]
    directory = os.path.dirname(os.path.abspath(path))
    for number, pattern in includes:
        for name in _matches(path, number, directory, pattern):
            if os.path.realpath(name) in reading:
                raise ConfigError(
                    path,
                    "manualb",
                    INCLUDE,
                    f"{name} includes itself (through {' -> '.join(reading)})",
                    number,
                )
            _read(composed, name, environ, headers, reading)


def _matches(path: str, number: int, directory: str, pattern: str) -> list[str]:
    """
    The files that the include C{pattern} of line C{number} of C{path}
    names, relative to C{directory}, in sorted order.
    """
    full = os.path.join(directory, os.path.expanduser(pattern))
    if not _GLOB.search(pattern):
        if not os.path.isfile(full):
            reason = "no such file" if not os.path.exists(full) else "not a file"
            raise ConfigError(
                path, "manualb", INCLUDE, f"cannot include {full}: {reason}", number
            )
        return [full]
    return sorted(name for name in glob.glob(full) if os.path.isfile(name))


def readText(path: str) -> str:
    """
    The text of the configuration file at C{path}.

    @raise ConfigError: It cannot be read, or is not UTF-8, naming the file
        and the reason.
    """
    try:
        # utf-8-sig: tolerate the byte order mark some Windows editors add.
        with open(path, encoding="utf-8-sig") as configFile:
            return configFile.read()
    except OSError as e:
        reason = e.strerror or str(e)
        raise ConfigError(path, None, None, f"cannot read file: {reason}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            path, None, None, f"not UTF-8 text (bad byte at offset {e.start})"
        ) from None


def substitute(text: str, source: str, environ: Mapping[str, str]) -> str:
    """
    C{text} with each C{${NAME}} outside comments replaced by the variable
    C{NAME} of C{environ}, and each C{$${} by C{${}.

    @raise ConfigError: naming C{source}, the line, its section and key,
        when a variable is not set, its value spans lines, or a reference is
        malformed.
    """
    if "${" not in text:
        return text
    lines = text.split("\n")
    section: str | None = None
    key: str | None = None
    for index, line in enumerate(lines):
        comment = _COMMENT.search(line)
        end = comment.start() if comment else len(line)
        content = line[:end].strip()
        if not content:
            continue
        header = SECTION_HEADER.match(content)
        if header:
            section, key = header.group("header"), None
            continue
        if not line[:1].isspace() and "=" in content:
            key = content.partition("=")[0].strip().lower()
        if "${" not in line[:end]:
            continue

        def replace(match: re.Match, number: int = index + 1) -> str:
            escaped, name, closed = match.groups()
            if escaped:
                return "${" + name + closed
            if not closed or not _NAME.fullmatch(name):
                raise ConfigError(
                    source,
                    section,
                    key,
                    f"bad reference {match.group(0)!r}: write ${{NAME}} for the "
                    f"environment variable NAME, or $${{ for a literal ${{",
                    number,
                )
            value = environ.get(name)
            if value is None:
                raise ConfigError(
                    source,
                    section,
                    key,
                    f"environment variable {name} is not set (write $${{ for a "
                    f"literal ${{)",
                    number,
                )
            if "\n" in value or "\r" in value:
                raise ConfigError(
                    source,
                    section,
                    key,
                    f"environment variable {name} holds a line break",
                    number,
                )
            return value

        lines[index] = _REFERENCE.sub(replace, line[:end]) + line[end:]
    return "\n".join(lines)
