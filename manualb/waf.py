"""
The web application firewall of the gatekeeper: looks for SQL injection,
cross-site scripting, path traversal, command injection and protocol attacks
in a request's path, query, headers, cookies and the first bytes of a form or
JSON body, before any backend sees it.

Every value is normalised first (percent-decoding repeated against double
and triple encoding, C{%uXXXX}, overlong UTF-8, C{+} as a space in queries
and forms, HTML entities, Unicode compatibility forms, control characters,
case, white space and SQL comments).  SQL injection and XSS are found by
libinjection, which tokenises rather than matches patterns; the other attacks,
and more SQL injection and XSS at the higher sensitivity levels, by the
readable signatures of L{SIGNATURES}.  Levels are Cloud Armor's: 1 raises
the fewest false alarms, 4 catches the most.

The work is bounded whatever the request: at most L{VALUE_LIMIT} bytes of a
value, L{VALUES_LIMIT} values and L{TOTAL_LIMIT} bytes of a request head are
inspected, and of a body what C{bodyLimit} says.
"""

from __future__ import annotations

import itertools
import re
from typing import Callable, Iterator

import attrs
from zope.interface import implementer

try:
    import libinjection
except ImportError:  # The optional extra manualb[waf] is not installed.
    libinjection = None

from manualb.config import WAFConfig, WAFRule
from manualb.interfaces import IRequestInspector
from manualb.records import Finding
from manualb.view import RequestView
from manualb.wafdecode import VALUE_LIMIT, Value, decode, normalise

__all__ = [
    "WAF", "Signature", "SIGNATURES", "MODES", "LEVELS", "FIELDS", "parseRule",
    "parseMode", "parseLevel", "normalise", "decode",
]

#: The modes of the WAF.
MODES = ("block", "detect", "off")
#: The sensitivity levels.
LEVELS = (1, 2, 3, 4)
#: What a custom rule may look at (C{header:}, C{cookie:} and C{arg:} take
#: a name).
FIELDS = ("path", "query", "method", "uri", "remote_addr", "body")
_NAMED_FIELDS = ("header", "cookie", "arg")
_ACTIONS = ("block", "log", "allow")

#: The most values (path, arguments, headers, cookies, body fields)
#: inspected in one request head or body.
VALUES_LIMIT = 1024
#: The most bytes of values inspected in one request head.
TOTAL_LIMIT = 256 * 1024
#: The longest excerpt of a value kept in a finding.
_EXCERPT = 64

#: Headers whose values are not inspected for attacks: the proxy or the
#: backend's HTTP library parses them strictly, or they are opaque
#: credentials.  (C{Cookie} is inspected cookie by cookie.)
_UNINSPECTED = frozenset(
    {
        b"accept", b"accept-encoding", b"accept-language", b"authorization",
        b"cache-control", b"connection", b"content-length", b"cookie", b"date", b"dnt",
        b"if-match", b"if-modified-since", b"if-none-match", b"if-unmodified-since",
        b"pragma", b"priority", b"proxy-authorization", b"te",
        b"upgrade-insecure-requests", b"x-request-id",
    }
)


# Detection.

#: Where a signature looks: the path, query arguments (their names too),
#: header values, cookie values, body fields (their names too).
PATH, ARG, HEADER, COOKIE, BODY = "path", "arg", "header", "cookie", "body"
_EVERYWHERE = frozenset({PATH, ARG, HEADER, COOKIE, BODY})
_NOT_BODY = frozenset({PATH, ARG, HEADER, COOKIE})


@attrs.frozen
class Signature:
    """
    A built-in rule of the WAF.

    @ivar name: Its name in findings, counters and C{allow} exceptions.
    @ivar kind: The class of attack (see L{manualb.records.Finding}).
    @ivar level: The lowest sensitivity level at which it is used.
    @ivar fields: Where it looks (L{PATH}, L{ARG}, L{HEADER}, L{COOKIE},
        L{BODY}).
    @ivar pattern: A compiled expression searched in a value's folded form
        (or its decoded form, when C{decoded}); L{None} for C{detector}.
    @ivar decoded: Whether C{pattern} reads the decoded value, control
        characters and case kept.
    @ivar detector: For libinjection: a function of the clean value that
        says whether it is an attack.
    @ivar needles: Strings of which C{pattern} cannot match without one
        (in the form it reads): a value with none is passed by without
        running the expression, which is most of the cost.
    """

    name: str
    kind: str
    level: int
    fields: frozenset[str]
    pattern: re.Pattern[str] | None = None
    decoded: bool = False
    detector: Callable[[str], bool] | None = None
    needles: tuple[str, ...] = ()

    def match(self, value: Value) -> tuple[str, int] | None:
        """
        Whether this signature matches C{value}: the form it read and where
        in it, or L{None}.
        """
        if self.detector is not None:
            return (value.clean, 0) if self.detector(value.clean) else None
        text = value.decoded if self.decoded else value.folded
        for needle in self.needles:
            if needle in text:
                break
        else:
            if self.needles:
                return None
        found = self.pattern.search(text)  # type: ignore[union-attr]
        return None if found is None else (text, found.start())


def _isSQLi(text: str) -> bool:
    result = libinjection.is_sql_injection(text)
    if not result["is_sqli"]:
        return False
    # libinjection reads "if (" as MySQL's IF(): a C-like block in a
    # comment form ("if (a < b && c > d) { ... }") is code, not SQL, which
    # has no braces.  Level 3 takes it as SQL all the same (sqli-code).
    return not (result["fingerprint"].startswith("f(") and "{" in text)


def _isCodeLikeSQLi(text: str) -> bool:
    if "{" not in text:
        return False
    result = libinjection.is_sql_injection(text)
    return bool(result["is_sqli"]) and result["fingerprint"].startswith("f(")


def _isXSS(text: str) -> bool:
    return bool(libinjection.is_xss(text)["is_xss"])


def _signature(name, kind, level, fields, needles, pattern, decoded=False):
    return Signature(name, kind, level, fields, re.compile(pattern), decoded, needles=needles)


# Shell commands an injection runs: unambiguous ones (not English words),
# and, at level 3, the common ones that are also words.
_COMMANDS = (
    r"(?:whoami|uname|wget|curl|ncat|netcat|nc\s+-[a-z]|bash|zsh|ksh|sh\s+-c|"
    r"/bin/\w+|/usr/bin/\w+|powershell|cmd(?:\.exe)?\s*/c|nslookup|ifconfig|"
    r"ipconfig|netstat|mkfifo|busybox|chmod|chown|printenv|python[23]?\s+-c|"
    r"perl\s+-e|ruby\s+-e|php\s+-r|telnet|tftp|xterm|cat\s+[/~.$]|"
    r"ls\s+-|ls\s*$|id\s*$|id\s*[;|&`)]|ping\s+-[a-z]|rm\s+-[a-z]|"
    r"echo\s+[$'\"`]|sleep\s+\d|uname\s+-a|net\s+user|type\s+[a-z]:\\)"
)
_WORD_COMMANDS = (
    r"(?:cat|ls|id|ping|rm|echo|sleep|kill|env|ps|set|more|less|head|tail|"
    r"find|grep|awk|sed|touch|mail|dir|type|net|python|perl|ruby|php|nc)\b"
)
_EVENTS = (
    r"(?:abort|afterprint|animation\w*|beforeprint|beforeunload|blur|"
    r"canplay\w*|change|click|contextmenu|copy|cut|dblclick|drag\w*|drop|"
    r"durationchange|ended|error|focus\w*|hashchange|input|invalid|key\w+|"
    r"load\w*|message|mouse\w+|offline|online|page\w+|paste|pause|play\w*|"
    r"pointer\w+|popstate|progress|readystatechange|reset|resize|scroll|"
    r"search|seek\w+|select|show|start|submit|toggle|touch\w+|transition\w*|"
    r"unload|volumechange|wheel)"
)

#: The built-in rules, in the order they are tried.
SIGNATURES: tuple[Signature, ...] = (
    # Protocol attacks: read the decoded value, before control characters
    # and white space are folded away.
    _signature("protocol-header-injection", "protocol", 1, _NOT_BODY, ("\r", "\n"),
        r"[\r\n]\s*(?i:set-cookie|location|content-(?:type|length)|"
        r"transfer-encoding|host|x-[\w-]+|refresh|access-control-[\w-]+)\s*:",
        decoded=True),
    _signature("protocol-splitting", "protocol", 1, _NOT_BODY, ("\r", "\n"),
        r"[\r\n]\s*(?:(?i:http)/\d|(?i:get|post|head|put|delete|options|trace|"
        r"connect|patch) +\S+ +(?i:http)/)",
        decoded=True),
    _signature("protocol-nul", "protocol", 2, _NOT_BODY, ("\x00",),
        r"\x00", decoded=True),
    _signature("protocol-crlf", "protocol", 3, _EVERYWHERE, ("\r", "\n"),
        r"[\r\n]\s*[\w-]+\s*:", decoded=True),
    _signature("protocol-newline", "protocol", 4, _NOT_BODY, ("\r", "\n"),
        r"[\r\n]", decoded=True),
    # Path traversal and file access.
    _signature("traversal", "traversal", 1, _EVERYWHERE, ("..",),
        r"(?:^|[/\\])\.\.(?:;[^/\\]*)?(?:[/\\]|$)"),
    _signature(
        "traversal-file", "traversal", 2, _EVERYWHERE,
        ("/etc/", "/proc/", ":\\", "win.ini", "boot.ini", "system32", ".htpasswd"),
        r"(?:(?<![\w.~-])/etc/(?:passwd|shadow|group|hosts|issue|sudoers)\b|"
        r"/proc/self/|[a-z]:\\(?:windows|winnt|boot\.ini)|\\win\.ini\b|"
        r"\bboot\.ini\b|/windows/win\.ini\b|\\system32\\|\.htpasswd\b)"),
    _signature("traversal-dots", "traversal", 3, _EVERYWHERE, ("..",),
        r"\.{2,}[/\\]"),
    _signature(
        "protocol-body-injection", "protocol", 2, frozenset({BODY}), ("\r", "\n"),
        r"[\r\n]\s*(?:(?i:set-cookie|transfer-encoding|content-length)\s*:|"
        r"(?i:http)/\d\.\d \d{3}\b|(?i:get|post|head) +/\S* +(?i:http)/)",
        decoded=True),
    _signature("protocol-body-nul", "protocol", 2, frozenset({BODY}), ("\x00",),
        r"\x00", decoded=True),
    # Command injection.
    _signature("cmdi-shellshock", "cmdi", 1, _EVERYWHERE, ("()",),
        r"\(\) ?\{[^}]{0,64}\} ?;"),
    _signature("cmdi", "cmdi", 2, _EVERYWHERE, (";", "|", "`", "&", "$"),
        r"(?:[;|`\n&]|\$\(|\$\{ifs\})\s*" + _COMMANDS),
    _signature("cmdi-substitution", "cmdi", 2, _EVERYWHERE, ("$", "`"),
        r"(?:\$\(\s*|`\s*)" + _WORD_COMMANDS + r"|\$\{ifs\}|\$ifs\$9"),
    _signature("cmdi-word", "cmdi", 3, _EVERYWHERE, (";", "|", "`", "&"),
        r"(?:[;|`]|&&?|\|\|)\s*" + _WORD_COMMANDS
    ),
    _signature("cmdi-backtick", "cmdi", 4, _EVERYWHERE, ("`", "$("),
        r"`[^`]{1,64}`|\$\("),
    # SQL injection and XSS by libinjection.
    Signature("sqli", "sqli", 1, _EVERYWHERE, detector=_isSQLi),
    Signature("xss", "xss", 1, _EVERYWHERE, detector=_isXSS),
    Signature("sqli-code", "sqli", 3, _EVERYWHERE, detector=_isCodeLikeSQLi),
    # More SQL injection.
    _signature("sqli-union", "sqli", 2, _EVERYWHERE, ("union",),
        r"\bunion(?: all| distinct)? ?\(? ?select\b ?(?:null\b|\d|@@|\*|"
        r"[\w.`\"'\[\]]+ ?(?:,|\bfrom\b)|\w+\()"),
    _signature("sqli-tautology", "sqli", 2, _EVERYWHERE, ("'", '"', ")"),
        r"['\"\)] ?(?:or|and|\|\||&&) ?\(? ?['\"]?(\w+)['\"]? ?(?:=|<>|!=|like)"
        r" ?\(? ?['\"]?\1\b"),
    _signature(
        "sqli-time", "sqli", 2, _EVERYWHERE,
        ("sleep", "benchmark", "waitfor", "dbms_pipe"),
        r"(?:['\")]|\b(?:and|or|select|if)\b|;|\|\|)\s*\(? ?(?:pg_)?sleep ?\( ?\d|"
        r"\bbenchmark ?\( ?\d+ ?,|\bwaitfor delay ?'|\bdbms_pipe\.receive_message"),
    _signature("sqli-stacked", "sqli", 2, _EVERYWHERE, (";",),
        r"; ?(?:drop (?:table|database)|delete from|insert into|update \w+ set|"
        r"truncate table|shutdown\b|exec(?:ute)? (?:xp_|sp_|master)|"
        r"declare @|create (?:table|user)|alter (?:table|user)|select \S+ from)"),
    _signature(
        "sqli-functions", "sqli", 2, _EVERYWHERE,
        ("information_schema", "@@version", "load_file", "into", "xp_cmdshell",
         "pg_read_file", "utl_http", "sysobjects", "msysaccessobjects"),
        r"\binformation_schema\b|@@version\b|\bload_file ?\(|"
        r"\binto (?:out|dump)file\b|\bxp_cmdshell\b|\bpg_read_file ?\(|"
        r"\butl_http\.|\bsysobjects\b|\bmsysaccessobjects\b"),
    _signature("sqli-quote-comment", "sqli", 2, _EVERYWHERE, ("'", '"'),
        r"['\"] ?\)* ?;? ?(?:--(?:[ +-]|$)|#(?: |$)|/\*)"),
    _signature("sqli-comment", "sqli", 3, _EVERYWHERE, ("'", '"', "or ", "and "),
        r"['\"] ?\)* ?(?:--|#|;)|\b(?:or|and) \d+ ?(?:=|<|>) ?\d+"),
    _signature(
        "sqli-keywords", "sqli", 4, _EVERYWHERE,
        ("select", "union", "insert", "delete", "drop", "sleep", "char", "concat", "0x"),
        r"\b(?:select\b.{1,100}\bfrom|union\b.{0,40}\bselect|insert\b.{1,40}\binto|"
        r"delete\b.{1,20}\bfrom|drop (?:table|database)|sleep ?\(|"
        r"char ?\( ?\d|concat ?\(|0x[0-9a-f]{8,})\b"),
    # More XSS.
    _signature("xss-script", "xss", 2, _EVERYWHERE, ("script",),
        r"<\s*/?\s*script\b"),
    _signature("xss-handler", "xss", 2, _EVERYWHERE, ("on",),
        r"<[a-z!/][^>]{0,512}?[\s\"'/;]on" + _EVENTS + r"\s*=|"
        r"[\"'] ?[\s/]?on" + _EVENTS + r" ?="),
    _signature("xss-uri", "xss", 2, _EVERYWHERE, ("script", "data"),
        r"\b(?:java|vb|live)\s*script\s*:\S|"
        r"data\s*:\s*text/html|\bdata:[\w/+-]+;base64,"),
    _signature("xss-tag", "xss", 2, _EVERYWHERE, ("<",),
        r"<\s*(?:svg|iframe|frame|object|embed|applet|meta|base|math|"
        r"marquee|isindex|xss|template|details|video|audio|body|img|image|"
        r"input|form|link|style)\b[^>]{0,512}?(?:[\s/]on|src|href|data|"
        r"action|http-equiv|>|$)"),
    _signature(
        "xss-attribute", "xss", 2, _EVERYWHERE,
        ("srcdoc", "expression", "formaction", "xlink:href", "-moz-binding", "behavior"),
        r"\bsrcdoc\s*=|\bexpression\s*\(|\bformaction\s*=|"
        r"\bxlink:href\s*=|-moz-binding|\bbehavior\s*:\s*url"),
    _signature("xss-script-uri", "xss", 3, _EVERYWHERE, ("script",),
        r"\b(?:java|vb|live)\s*script\s*:"),
    _signature(
        "xss-dom", "xss", 3, _EVERYWHERE,
        ("document", "window", "alert", "prompt", "confirm", "eval", "fromcharcode"),
        r"\b(?:document\s*\.\s*(?:cookie|domain|write)|window\s*\.\s*location|"
        r"alert\s*\(|prompt\s*\(|confirm\s*\(|eval\s*\(|fromcharcode)"),
    _signature("xss-angle", "xss", 4, _EVERYWHERE, ("<", "on"),
        r"<[a-z/!?][^>]{0,512}>|\bon" + _EVENTS + r"\s*="),
)

_SIGNATURE_NAMES = frozenset(signature.name for signature in SIGNATURES)
_KINDS = frozenset(signature.kind for signature in SIGNATURES) | {"custom"}

_WORD = re.compile(rb"\w*", re.ASCII)
#: A value to inspect: where, field, name, raw value, "+" as a space (see
#: L{WAF._scan}).
_Field = tuple[str, str, "bytes | None", bytes, bool]
#: Values repeat from request to request (a user agent, a session
#: cookie...): what was found in the last few thousand short ones is kept.
_CACHED = 4096
_CACHED_LENGTH = 256
_UNSEEN = object()
#: What no custom rule excepts (L{WAF._scan} only reads it).
_NOTHING_EXCEPTED: frozenset[str] = frozenset()

#: A path of only these characters is read as a whole; another one segment
#: by segment too (libinjection reads a value from its start).
_PLAIN = re.compile(rb"[A-Za-z0-9_\-~/.,]*")


def _excerpt(text: str, start: int) -> str:
    start = max(0, min(start, len(text) - _EXCERPT))
    piece = text[start : start + _EXCERPT * 2]
    printable = "".join(c if " " <= c <= "~" else "." for c in piece)
    return printable[:_EXCERPT]


# Custom rules.


@attrs.frozen
class _Custom:
    """
    A custom rule made ready to run.
    """

    rule: WAFRule
    kind: str
    name: str
    pattern: re.Pattern[str] | None
    values: frozenset[str]

    def matches(self, text: str) -> bool:
        if self.pattern is not None:
            return self.pattern.search(text) is not None
        return text.lower() in self.values


def _compileRule(rule: WAFRule) -> _Custom:
    kind, _, name = rule.field.partition(":")
    pattern = None
    if rule.pattern is not None:
        try:
            pattern = re.compile(rule.pattern)
        except re.error as error:
            raise ValueError(
                f"bad regular expression {rule.pattern!r} in WAF rule {rule.name!r}: {error}"
            ) from None
    return _Custom(
        rule, kind, name.lower(), pattern,
        frozenset(value.lower() for value in rule.values),
    )


#: What C{waf = block} needs and is missing, in words.
UNAVAILABLE = (
    "needs the libinjection-python package, which is not installed: "
    "pip install 'manualb[waf]'"
)


def parseMode(text: str) -> str:
    """
    Read a WAF mode (C{waf = block | detect | off}).

    @raise ValueError: For anything else, or for C{block} and C{detect}
        when libinjection is not installed.
    """
    mode = text.strip().lower()
    if mode not in MODES:
        raise ValueError(
            f"unknown WAF mode {text.strip()!r}: expected block, detect or off"
        )
    if mode != "off" and libinjection is None:
        raise ValueError(f"waf = {mode} {UNAVAILABLE}")
    return mode


def parseLevel(text: str) -> int:
    """
    Read a WAF sensitivity level (C{waf_level = 1..4}).

    @raise ValueError: For anything else.
    """
    try:
        level = int(text.strip())
    except ValueError:
        level = 0
    if level not in LEVELS:
        raise ValueError(
            f"bad WAF level {text.strip()!r}: expected 1 (fewest false "
            f"alarms) to 4 (most attacks caught)"
        )
    return level


_ALLOW = re.compile(r"\sallow\s", re.IGNORECASE)
_NAMES = re.compile(r"[\w.-]+(?:\s*,\s*[\w.-]+|\s+[\w.-]+)*\s*,?\s*")


def _splitAction(rest: str, text: str) -> tuple[str, str, tuple[str, ...]]:
    """
    Split the end of a rule into what comes before its action, the action
    and the names an C{allow} excepts (C{allow sqli, xss-script}).
    """
    before, last = rest.rsplit(None, 1)
    if last.lower() in _ACTIONS:
        return before, last.lower(), ()
    for found in reversed(list(_ALLOW.finditer(rest))):
        names = rest[found.end() :]
        if _NAMES.fullmatch(names):
            excepts = tuple(names.replace(",", " ").split())
            return rest[: found.start()].rstrip(), "allow", excepts
    raise ValueError(
        f"bad WAF rule {text.strip()!r}: it must end with an action, "
        f"block, log, allow or allow RULE,RULE..."
    )


_RULE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def parseRule(text: str) -> WAFRule:
    """
    Read a custom rule (C{waf_rule = ...}): C{NAME FIELD ~ REGEX ACTION},
    C{NAME FIELD ~* REGEX ACTION} (any case) or C{NAME FIELD in V1,V2
    ACTION}, where C{FIELD} is C{path}, C{query}, C{method}, C{uri},
    C{remote_addr}, C{body}, C{header:NAME}, C{cookie:NAME} or C{arg:NAME}
    and C{ACTION} is C{block}, C{log}, C{allow} (every rule) or
    C{allow RULE,RULE...} (the rules, or kinds of rule, named).

    @raise ValueError: With a message that says what is wrong.
    """
    example = "NAME FIELD ~ REGEX block|log|allow [RULE,...]"
    words = text.split(None, 3)
    if len(words) < 4:
        raise ValueError(f"bad WAF rule {text.strip()!r}: expected {example}")
    name, field, operator, rest = words
    if not _RULE_NAME.fullmatch(name):
        raise ValueError(
            f"bad WAF rule name {name!r}: letters, digits, '.', '_' and '-' only"
        )
    if name in _SIGNATURE_NAMES or name in _KINDS:
        raise ValueError(f"WAF rule name {name!r} is taken by a built-in rule")
    kind, colon, fieldName = field.partition(":")
    kind = kind.lower()
    if colon:
        if kind not in _NAMED_FIELDS or not _FIELD_NAME.fullmatch(fieldName):
            raise ValueError(
                f"unknown WAF rule field {field!r}: expected one of "
                f"{', '.join(FIELDS)}, header:NAME, cookie:NAME or arg:NAME"
            )
        field = f"{kind}:{fieldName}"
    elif kind not in FIELDS:
        raise ValueError(
            f"unknown WAF rule field {field!r}: expected one of "
            f"{', '.join(FIELDS)}, header:NAME, cookie:NAME or arg:NAME"
        )
    else:
        field = kind
    if len(rest.split()) < 2:
        raise ValueError(f"bad WAF rule {text.strip()!r}: expected {example}")
    body, action, excepts = _splitAction(rest, text)
    if not body:
        raise ValueError(f"bad WAF rule {text.strip()!r}: expected {example}")
    if operator in ("~", "~*"):
        try:
            re.compile(body, re.IGNORECASE if operator == "~*" else 0)
        except re.error as error:
            raise ValueError(
                f"bad regular expression {body!r} in WAF rule {name!r}: {error}"
            ) from None
        pattern = body if operator == "~" else "(?i)" + body
        return WAFRule(name, field, pattern=pattern, action=action, excepts=excepts)
    if operator.lower() == "in":
        values = tuple(value.strip() for value in body.split(",") if value.strip())
        if not values:
            raise ValueError(f"bad WAF rule {text.strip()!r}: no values after 'in'")
        return WAFRule(name, field, values=values, action=action, excepts=excepts)
    raise ValueError(
        f"unknown operator {operator!r} in WAF rule {name!r}: expected ~, ~* or in"
    )


# The request.


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


def _label(raw: bytes) -> str:
    """
    A name (of an argument, header, cookie) fit for a finding.
    """
    return _excerpt(decode(raw[:_EXCERPT], True), 0)


def _rawPath(target: bytes) -> bytes:
    path = target.partition(b"?")[0].partition(b"#")[0]
    if path[:1] != b"/":
        scheme, separator, rest = path.partition(b"://")
        path = b"/" + rest.partition(b"/")[2] if separator else path
    return path


def _arguments(raw: bytes) -> Iterator[tuple[bytes, bytes]]:
    for pair in raw.split(b"&", VALUES_LIMIT)[:VALUES_LIMIT]:
        if pair:
            name, _, value = pair.partition(b"=")
            yield name, value


def _cookies(view: RequestView) -> Iterator[tuple[bytes, bytes]]:
    return _splitCookies(view.header(b"cookie"))


def _splitCookies(headers: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """
    The cookies of the C{Cookie} lines C{headers}: C{(name, value)}, or
    C{(b"", text)} for one without C{=}.
    """
    for header in headers:
        for cookie in header.split(b";", VALUES_LIMIT)[:VALUES_LIMIT]:
            name, separator, value = cookie.strip().partition(b"=")
            if separator:
                yield name, value
            elif name:
                yield b"", name


def _formFields(body: bytes) -> Iterator[tuple[bytes, bytes, bool]]:
    for name, value in _arguments(body):
        yield name, value, True
        if not _WORD.fullmatch(name):
            yield b"", name, True


_JSON_STRING = re.compile(rb'"([^"\\]*(?:\\.[^"\\]*)*)"\s*(:?)', re.DOTALL)
_JSON_ESCAPE = re.compile(rb'\\(?:u([0-9a-fA-F]{4})|(.))', re.DOTALL)
_JSON_SIMPLE = {b"n": "\n", b"r": "\r", b"t": "\t", b"b": "\b", b"f": "\f"}


def _jsonString(raw: bytes) -> bytes:
    """
    The content of a JSON string literal, its escapes undone, as UTF-8
    (C{\\u003c} as C{<}; a lone surrogate as C{?}).
    """
    # find(), not "in": bytes' "in" first tries its operand as an integer,
    # which raises and clears an error each time.
    if raw.find(b"\\") == -1:
        return raw

    def unescape(match: re.Match[bytes]) -> bytes:
        wide, simple = match.groups()
        if wide is not None:
            return chr(int(wide, 16)).encode("utf-8", "replace")
        return _JSON_SIMPLE.get(simple, simple.decode("latin-1")).encode("utf-8")

    return _JSON_ESCAPE.sub(unescape, raw)


def _jsonFields(body: bytes) -> Iterator[tuple[bytes, bytes]]:
    """
    The string keys and values of a JSON text, or of its beginning: read by
    its string literals, without building it, so that a document cut at the
    body limit, or nested a million deep, is read as well as any.  A key is
    yielded as the name of an empty value, and a value with the key before
    it.
    """
    key = b""
    for content, colon in _JSON_STRING.findall(body):
        content = _jsonString(content)
        if colon:
            key = content
            yield b"", content
        else:
            yield key, content


_BOUNDARY = re.compile(rb'boundary="?([^";]{1,200})"?', re.IGNORECASE)
_DISPOSITION_NAME = re.compile(rb'\bname="([^"]*)"', re.IGNORECASE)
_DISPOSITION_FILE = re.compile(rb'\bfilename\*?="?([^";\r\n]*)', re.IGNORECASE)


def _multipartFields(body: bytes, contentType: bytes) -> Iterator[tuple[bytes, bytes]]:
    """
    The form fields of a C{multipart/form-data} body (or its beginning): a
    field's name and value, a file's name (as the value of a field named
    C{filename}), not a file's content.
    """
    found = _BOUNDARY.search(contentType)
    if found is None:
        return
    delimiter = b"--" + found.group(1)
    for part in body.split(delimiter, VALUES_LIMIT)[1:VALUES_LIMIT]:
        head, separator, content = part.partition(b"\r\n\r\n")
        if not separator:
            head, separator, content = part.partition(b"\n\n")
            if not separator:
                continue
        name = _DISPOSITION_NAME.search(head)
        fileName = _DISPOSITION_FILE.search(head)
        fieldName = name.group(1) if name is not None else b""
        if fileName is not None:
            yield b"filename", fileName.group(1)
            continue
        if content.endswith(b"\r\n"):
            content = content[:-2]
        elif content.endswith(b"\n"):
            content = content[:-1]
        yield fieldName, content


@implementer(IRequestInspector)
class WAF:
    """
    The web application firewall (see the module).

    @ivar mode: C{block}, C{detect} or C{off}.
    @ivar level: The sensitivity, 1 to 4.
    @ivar bodyLimit: How many bytes of a body L{inspectBody} wants (0 when
        the WAF is off).
    @ivar counters: How often each rule fired, by its name (built-in and
        custom rule names only, so it stays small).
    """

    def __init__(self, config: WAFConfig) -> None:
        if config.mode != "off" and libinjection is None:
            raise ValueError(f"waf = {config.mode} {UNAVAILABLE}")
        self.mode = config.mode
        self._off = config.mode == "off"
        self.level = config.level
        self.bodyLimit = config.body_limit if config.mode != "off" else 0
        self.counters: dict[str, int] = {}
        self._rules = tuple(_compileRule(rule) for rule in config.rules)
        self._headRules = tuple(rule for rule in self._rules if rule.kind != "body")
        self._bodyRules = tuple(
            rule for rule in self._rules if rule.kind in ("body", "arg")
        )
        self._allowRules = tuple(
            rule for rule in self._headRules if rule.rule.action == "allow"
        )
        self._signatures = tuple(s for s in SIGNATURES if s.level <= config.level)
        self._cache: dict[tuple[str, bytes, bool], tuple[Signature, str] | None] = {}
        # Short targets found to be a plain path in which no signature
        # matched (see _scanHead).
        self._cleanTargets: set[bytes] = set()

    def _finding(self, rule: str, kind: str, field: str, action: str, excerpt: str) -> Finding:
        self.counters[rule] = self.counters.get(rule, 0) + 1
        if self.mode == "detect" and action == "block":
            action = "log"
        return Finding(rule, kind, field, action, excerpt)

    # Custom rules.

    def _headValues(self, view: RequestView, custom: _Custom) -> Iterator[str]:
        kind = custom.kind
        if kind == "path":
            yield decode(view.path)
        elif kind == "query":
            yield decode(view.query, True)
        elif kind == "method":
            yield _text(view.method)
        elif kind == "uri":
            yield decode(view.target)
        elif kind == "remote_addr":
            yield view.clientAddress
        elif kind == "header":
            for value in view.header(custom.name.encode("latin-1", "replace")):
                yield decode(value)
        elif kind == "cookie":
            wanted = custom.name
            for name, value in _cookies(view):
                if _text(name).lower() == wanted:
                    yield decode(value)
        elif kind == "arg":
            wanted = custom.name
            for name, value in _arguments(view.query):
                if decode(name, True).lower() == wanted:
                    yield decode(value, True)

    def _exceptions(self, view: RequestView, rules: tuple[_Custom, ...], count: bool):
        """
        Run the custom rules C{rules} on the head of C{view}.

        @return: C{(finding, excepted)}: the finding of the first rule that
            blocks (or the first that logs when none blocks), and the names
            excepted by the C{allow} rules that matched (L{None} for every
            rule).
        """
        excepted: set[str] | None = set()
        logged = None
        for custom in rules:
            if excepted is not None and custom.rule.name in excepted:
                continue
            for text in self._headValues(view, custom):
                if custom.matches(text):
                    break
            else:
                continue
            rule = custom.rule
            if rule.action == "allow":
                if count:
                    self.counters[rule.name] = self.counters.get(rule.name, 0) + 1
                if not rule.excepts:
                    return logged, None
                assert excepted is not None
                excepted.update(rule.excepts)
            elif count:
                finding = self._finding(
                    rule.name, "custom", rule.field, rule.action, _excerpt(text, 0)
                )
                if finding.action == "block":
                    return finding, excepted
                logged = logged or finding
        return logged, excepted

    # Built-in rules.

    def _scan(
        self, values: Iterator[_Field], excepted: set[str], count: int = 0, total: int = 0
    ):
        """
        Run the signatures on C{values}: C{(where, field, name, raw, plus)}
        tuples, where C{where} is one of L{PATH}, L{ARG}..., C{field} and
        C{name} what a finding calls it (C{field:name}, or C{field} when
        C{name} is L{None}), C{raw} the value and C{plus} whether a C{+} in
        it is a space.  C{count} values of C{total} bytes were inspected
        before these (see L{_scanHead}).
        """
        signatures = self._signatures
        if excepted:
            signatures = tuple(
                s for s in signatures if s.name not in excepted and s.kind not in excepted
            )
        cache = None if excepted else self._cache
        for count, (where, field, name, raw, plus) in enumerate(values, count):
            if count >= VALUES_LIMIT or total >= TOTAL_LIMIT:
                return None
            raw = raw[:VALUE_LIMIT]
            total += len(raw)
            if not raw:
                continue
            key = (where, raw, plus)
            found = cache.get(key, _UNSEEN) if cache is not None else _UNSEEN
            if found is _UNSEEN:
                found = self._match(where, raw, plus, signatures)
                if cache is not None and len(raw) <= _CACHED_LENGTH:
                    if len(cache) >= _CACHED:
                        cache.clear()
                    cache[key] = found
            if found is not None:
                signature, excerpt = found
                if name is not None:
                    field = field + ":" + _label(name)
                return self._finding(
                    signature.name, signature.kind, field, "block", excerpt
                )
        return None

    def _match(self, where: str, raw: bytes, plus: bool, signatures):
        """
        The first of C{signatures} that looks at C{where} and matches the
        value C{raw}, with an excerpt of the value, or L{None}.
        """
        value = normalise(raw, plus)
        # A single word (letters, digits, "_") is one token, which
        # libinjection never takes for an attack.
        word = _WORD.fullmatch(raw) is not None
        for signature in signatures:
            if where not in signature.fields or (word and signature.detector):
                continue
            found = signature.match(value)
            if found is not None:
                return signature, _excerpt(*found)
        return None

    def _scanHead(self, view: RequestView):
        """
        What C{self._scan(self._headFields(view), _NOTHING_EXCEPTED)} finds,
        the usual head (a plain path without a query) read without making
        a tuple of each value and a generator of them all: the path and
        header values found in the cache are passed by here, the others
        are left to L{_scan}, with the count of values and bytes read so
        far.
        """
        target = view.target
        cache = self._cache
        size = len(target)
        if target not in self._cleanTargets:
            if target[:1] != b"/" or _PLAIN.fullmatch(target) is None:
                # A query, or a path read segment by segment.
                return self._scan(self._headFields(view), _NOTHING_EXCEPTED)
            # The path, plain: the value of the target alone, the first one
            # read.
            if size > _CACHED_LENGTH or cache.get((PATH, target, False), _UNSEEN) is not None:
                found = self._scan(((PATH, "path", None, target, False),), _NOTHING_EXCEPTED)
                if found is not None:
                    return found
                if size > VALUE_LIMIT:
                    size = VALUE_LIMIT
            if size <= _CACHED_LENGTH:
                cleanTargets = self._cleanTargets
                if len(cleanTargets) >= _CACHED:
                    cleanTargets.clear()
                cleanTargets.add(target)
        count = 1
        total = size
        headers = view.headers
        if len(headers) >= VALUES_LIMIT:
            return self._scan(self._headFields(view), _NOTHING_EXCEPTED)
        # Fewer values than VALUES_LIMIT: only TOTAL_LIMIT can stop the
        # headers.
        cookies = None
        for name, value in headers:
            lower = name.lower()
            if lower in _UNINSPECTED:
                if lower == b"cookie":
                    cookies = [value] if cookies is None else cookies + [value]
                continue
            if total >= TOTAL_LIMIT:
                return None
            size = len(value)
            if size > _CACHED_LENGTH or cache.get((HEADER, value, False), _UNSEEN) is not None:
                found = self._scan(
                    ((HEADER, "header", lower, value, False),), _NOTHING_EXCEPTED
                )
                if found is not None:
                    return found
                if size > VALUE_LIMIT:
                    size = VALUE_LIMIT
            count += 1
            total += size
        if cookies is None:
            return None
        return self._scan(self._cookieFields(cookies), _NOTHING_EXCEPTED, count, total)

    def _cookieFields(self, cookies: list[bytes]) -> Iterator[_Field]:
        for name, value in _splitCookies(cookies):
            yield COOKIE, "cookie", name, value, False
            if not _WORD.fullmatch(name):
                yield COOKIE, "cookie", name, name, False

    def _headFields(self, view: RequestView) -> Iterator[_Field]:
        target = view.target
        path = _rawPath(target)
        yield PATH, "path", None, path, False
        if not _PLAIN.fullmatch(path):
            # Each segment alone too: libinjection reads a value best from
            # its start.
            for segment in path.split(b"/", VALUES_LIMIT)[1:VALUES_LIMIT]:
                yield PATH, "path", None, segment, False
        if target.find(b"?") != -1:
            for name, value in _arguments(view.query):
                yield ARG, "arg", name, value, True
                if not _WORD.fullmatch(name):
                    yield ARG, "query", None, name, True
        # The Cookie lines, found in the same pass, are inspected last.
        cookies = None
        for name, value in view.headers:
            lower = name.lower()
            if lower not in _UNINSPECTED:
                yield HEADER, "header", lower, value, False
            elif lower == b"cookie":
                cookies = [value] if cookies is None else cookies + [value]
        if cookies is not None:
            yield from self._cookieFields(cookies)

    def inspect(self, view: RequestView) -> Finding | None:
        """
        Inspect the path, the query, the header values and the cookies of
        C{view}.

        @return: What fired first (a blocking custom rule, else the first
            signature found), or a custom rule that only logs; L{None} for
            nothing (or in C{off} mode).
        """
        if self._off:
            return None
        if not self._headRules:
            return self._scanHead(view)
        logged, excepted = self._exceptions(view, self._headRules, True)
        if excepted is None or (logged is not None and logged.action == "block"):
            return logged
        return self._scan(self._headFields(view), excepted) or logged

    def inspectBody(self, view: RequestView, body: bytes) -> Finding | None:
        """
        Inspect the beginning of C{view}'s body (up to L{bodyLimit}) as its
        C{Content-Type} says: the fields of a form, the string keys and
        values of JSON, the fields (not the files) of a multipart form.
        Other bodies are not inspected.
        """
        if self.mode == "off" or not body:
            return None
        body = body[: self.bodyLimit]
        contentType = (view.header(b"content-type") or [b""])[0]
        mediaType = contentType.partition(b";")[0].strip().lower()
        if mediaType == b"application/x-www-form-urlencoded":
            fields = _formFields(body)
        elif mediaType == b"application/json" or mediaType.endswith(b"+json"):
            fields = ((name, value, False) for name, value in _jsonFields(body))
        elif mediaType == b"multipart/form-data":
            fields = (
                (name, value, False)
                for name, value in _multipartFields(body, contentType)
            )
        else:
            return None
        fields = list(itertools.islice(fields, VALUES_LIMIT))
        _, excepted = self._exceptions(view, self._allowRules, False)
        if excepted is None:
            return None
        logged = None
        for custom in self._bodyRules:
            if custom.rule.name in excepted:
                continue
            matched = self._bodyRuleMatch(custom, body, fields)
            if matched is None:
                continue
            rule = custom.rule
            if rule.action == "allow":
                self.counters[rule.name] = self.counters.get(rule.name, 0) + 1
                if not rule.excepts:
                    return logged
                excepted.update(rule.excepts)
                continue
            finding = self._finding(rule.name, "custom", rule.field, rule.action, matched)
            if finding.action == "block":
                return finding
            logged = logged or finding
        values = (
            (BODY, "body", name or None, value, plus)
            for name, value, plus in fields
            if value and (name or not _WORD.fullmatch(value))
        )
        return self._scan(values, excepted) or logged

    def _bodyRuleMatch(
        self, custom: _Custom, body: bytes, fields: list[tuple[bytes, bytes, bool]]
    ) -> str | None:
        if custom.kind == "body":
            text = decode(body)
            return _excerpt(text, 0) if custom.matches(text) else None
        for name, value, plus in fields:
            if decode(name, plus).lower() == custom.name:
                text = decode(value, plus)
                if custom.matches(text):
                    return _excerpt(text, 0)
        return None
