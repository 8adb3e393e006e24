"""
Tests for L{manualb.waf}: the attack and ordinary corpora (tests/corpus/),
normalisation, bodies, custom rules and their syntax, modes, and hostile
input.
"""

from __future__ import annotations

import json
import os
from typing import Iterator
from urllib.parse import quote, quote_plus, unquote_to_bytes

from hypothesis import given, strategies as st
from zope.interface.verify import verifyObject

from twisted.trial.unittest import SynchronousTestCase

from manualb import waf
from manualb.config import WAFConfig, WAFRule
from manualb.interfaces import IRequestInspector
from manualb.records import Finding
from manualb.view import RequestView
from manualb.waf import WAF, parseLevel, parseMode, parseRule

from .fuzzing import fuzzSettings

CORPUS = os.path.join(os.path.dirname(__file__), "corpus")
FORM = (b"Content-Type", b"application/x-www-form-urlencoded")
JSON = (b"Content-Type", b"application/json")
BOUNDARY = b"----manualb7MA4YWxk"
MULTIPART = (b"Content-Type", b"multipart/form-data; boundary=" + BOUNDARY)


def corpus(name: str) -> list[str]:
    """
    The payloads of a corpus file: one a line, without blank lines and
    comments.
    """
    with open(os.path.join(CORPUS, name), encoding="utf-8") as lines:
        return [
            line.rstrip("\n")
            for line in lines
            if line.strip() and line.rstrip("\n") != "#" and not line.startswith("# ")
        ]


def view(
    target: bytes = b"/", headers: list[tuple[bytes, bytes]] | tuple = (), method: bytes = b"GET"
) -> RequestView:
    return RequestView(
        "192.0.2.1",
        method=method,
        target=target,
        path=unquote_to_bytes(target.partition(b"?")[0]),
        headers=tuple(headers),
    )


def multipart(*parts: tuple[bytes, bytes | None, bytes]) -> bytes:
    """
    A multipart/form-data body of C{(name, filename, content)} parts.
    """
    body = b""
    for name, fileName, content in parts:
        disposition = b'form-data; name="' + name + b'"'
        if fileName is not None:
            disposition += b'; filename="' + fileName + b'"'
        body += b"--" + BOUNDARY + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        if fileName is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + content + b"\r\n"
    return body + b"--" + BOUNDARY + b"--\r\n"


Case = tuple[str, RequestView, "bytes | None"]


def placements(value: str) -> Iterator[Case]:
    """
    A value placed in each part of a request an attacker controls: a query
    argument, a path segment, a header, a cookie, a form body and a JSON
    body (percent-encoded where the place needs it).
    """
    raw = value.encode("utf-8")
    encoded = quote(raw, safe="").encode("ascii")
    yield "query", view(b"/search?page=1&q=" + encoded), None
    yield "path", view(b"/items/" + encoded + b"/reviews"), None
    yield "header", view(headers=[(b"User-Agent", raw)]), None
    yield "cookie", view(headers=[(b"Cookie", b"sid=abc123; pref=" + encoded)]), None
    form = b"name=x&comment=" + quote_plus(raw, safe="").encode("ascii")
    yield "form", view(b"/comment", [FORM], b"POST"), form
    body = json.dumps({"comment": value, "n": 1}).encode("utf-8")
    yield "json", view(b"/api", [JSON], b"POST"), body


def ordinaryCases(line: str) -> Iterator[Case]:
    """
    The requests of a line of the ordinary corpus (see its header).
    """
    prefix, separator, rest = line.partition(": ")
    if prefix == "url" and separator:
        yield "url", view(rest.encode("utf-8")), None
    elif prefix == "header" and separator:
        name, _, value = rest.partition(": ")
        yield "header", view(headers=[(name.encode(), value.encode("utf-8"))]), None
    elif prefix == "cookie" and separator:
        yield "cookie", view(headers=[(b"Cookie", rest.encode("utf-8"))]), None
    elif prefix == "json" and separator:
        yield "json", view(b"/api", [JSON], b"POST"), rest.encode("utf-8")
    elif prefix == "upload" and separator:
        fileName, content, description = (part.strip() for part in rest.split(" | "))
        data = content.encode("latin-1", "backslashreplace").decode("unicode_escape")
        body = multipart(
            (b"description", None, description.encode("utf-8")),
            (b"file", fileName.encode("utf-8"), data.encode("latin-1", "replace")),
        )
        yield "upload", view(b"/upload", [MULTIPART], b"POST"), body
    else:
        yield from placements(line)


def check(inspector: WAF, case: Case) -> Finding | None:
    _, request, body = case
    return inspector.inspect(request) or (
        inspector.inspectBody(request, body) if body is not None else None
    )


def blocked(inspector: WAF, cases: list[Case]) -> list[tuple[Case, Finding]]:
    found = []
    for case in cases:
        finding = check(inspector, case)
        if finding is not None and finding.action == "block":
            found.append((case, finding))
    return found


class CorpusTests(SynchronousTestCase):
    """
    The attack corpus is blocked and the ordinary one is not.
    """

    def setUp(self) -> None:
        self.attacks = [case for line in corpus("attacks.txt") for case in placements(line)]
        self.ordinary = [
            case for line in corpus("ordinary.txt") for case in ordinaryCases(line)
        ]

    def test_sizes(self) -> None:
        """
        Each corpus holds at least 150 payloads.
        """
        self.assertGreaterEqual(len(corpus("attacks.txt")), 150)
        self.assertGreaterEqual(len(corpus("ordinary.txt")), 150)

    def test_defaultLevel(self) -> None:
        """
        At the default level (2), at least 95% of the attacks (each in
        every place) are blocked, and no ordinary request is.
        """
        inspector = WAF(WAFConfig(mode="block"))
        self.assertEqual(inspector.level, 2)
        caught = blocked(inspector, self.attacks)
        self.assertGreaterEqual(len(caught) / len(self.attacks), 0.95)
        self.assertEqual(
            [(case[0], case[1].target, finding) for case, finding in
             blocked(inspector, self.ordinary)],
            [],
        )

    def test_levels(self) -> None:
        """
        The rates of every level, printed (only the default's are
        asserted).
        """
        for level in waf.LEVELS:
            inspector = WAF(WAFConfig(mode="block", level=level))
            attacks = len(blocked(inspector, self.attacks))
            ordinary = len(blocked(inspector, self.ordinary))
            print(
                f"WAF level {level}: attacks blocked {attacks}/{len(self.attacks)} "
                f"({attacks / len(self.attacks):.1%}), ordinary requests blocked "
                f"{ordinary}/{len(self.ordinary)} "
                f"({ordinary / len(self.ordinary):.1%})"
            )

    def test_everyKind(self) -> None:
        """
        The attacks caught at the default level are of every kind.
        """
        inspector = WAF(WAFConfig(mode="block"))
        kinds = {finding.kind for _, finding in blocked(inspector, self.attacks)}
        self.assertEqual(kinds, {"sqli", "xss", "traversal", "cmdi", "protocol"})


class ModeTests(SynchronousTestCase):
    """
    The modes: block, detect, off.
    """

    attack = view(b"/search?q=1%27%20or%20%271%27%3D%271")

    def test_interface(self) -> None:
        """
        L{WAF} provides L{IRequestInspector}.
        """
        self.assertTrue(verifyObject(IRequestInspector, WAF(WAFConfig(mode="block"))))

    def test_block(self) -> None:
        """
        In C{block} mode a finding blocks, and says what, where and which
        rule.
        """
        inspector = WAF(WAFConfig(mode="block", body_limit=1000))
        self.assertEqual(inspector.bodyLimit, 1000)
        self.assertEqual(
            inspector.inspect(self.attack),
            Finding("sqli", "sqli", "arg:q", "block", "1' or '1'='1"),
        )
        self.assertIsNone(inspector.inspect(view(b"/search?q=O%27Brien")))

    def test_detect(self) -> None:
        """
        In C{detect} mode a finding only logs, and is counted.
        """
        inspector = WAF(WAFConfig(mode="detect"))
        finding = inspector.inspect(self.attack)
        self.assertEqual((finding.rule, finding.action), ("sqli", "log"))
        body = inspector.inspectBody(view(headers=[FORM]), b"a=%3Cscript%3Ealert(1)")
        self.assertEqual((body.kind, body.action), ("xss", "log"))
        self.assertEqual(inspector.counters, {"sqli": 1, "xss": 1})

    def test_off(self) -> None:
        """
        When C{off}, nothing is inspected and no body is wanted.
        """
        inspector = WAF(WAFConfig(mode="off"))
        self.assertEqual(inspector.bodyLimit, 0)
        self.assertIsNone(inspector.inspect(self.attack))
        self.assertIsNone(inspector.inspectBody(view(headers=[FORM]), b"a=<script>"))
        self.assertEqual(inspector.counters, {})

    def test_counters(self) -> None:
        """
        The counters are kept by rule name, however many different values
        fire.
        """
        inspector = WAF(WAFConfig(mode="block"))
        for number in range(500):
            inspector.inspect(view(b"/?q=%27%20or%20" + b"%d=%d" % (number, number)))
        self.assertEqual(inspector.counters, {"sqli": 500})

    def test_levelsAdd(self) -> None:
        """
        A higher level uses every signature of the lower ones.
        """
        request = view(b"/?next=javascript:alert(1)")
        self.assertIsNone(WAF(WAFConfig(mode="block", level=1)).inspect(request))
        for level in (2, 3, 4):
            finding = WAF(WAFConfig(mode="block", level=level)).inspect(request)
            self.assertEqual(finding.kind, "xss")


class NormalisationTests(SynchronousTestCase):
    """
    Values are decoded and normalised before any detection.
    """

    def findIn(self, target: bytes, level: int = 2) -> str | None:
        finding = WAF(WAFConfig(mode="block", level=level)).inspect(view(target))
        return None if finding is None else finding.rule

    def test_decode(self) -> None:
        """
        L{waf.decode} undoes repeated percent-encoding, C{%uXXXX}, HTML
        entities, JavaScript escapes, overlong UTF-8 and full-width forms;
        C{+} is a space only where asked.
        """
        self.assertEqual(waf.decode(b"%25253Cb%25253E"), "<b>")
        self.assertEqual(waf.decode(b"%u003Cb%uFF1E"), "<b>")
        self.assertEqual(waf.decode(b"&lt;b&#x3e;"), "<b>")
        self.assertEqual(waf.decode(b"\\u003cb\\x3e"), "<b>")
        self.assertEqual(waf.decode(b"%c0%ae%c0%af"), "./")
        self.assertEqual(waf.decode(b"a+b"), "a+b")
        self.assertEqual(waf.decode(b"a+b", plus=True), "a b")
        self.assertEqual(waf.decode(b"\xff\xfeok"), "\ufffd\ufffdok")

    def test_decodingIsBounded(self) -> None:
        """
        Percent-decoding stops after four rounds.
        """
        self.assertEqual(waf.decode(b"%2525252541"), "%41")

    def test_normalise(self) -> None:
        """
        L{waf.normalise} drops control characters and folds case, SQL
        comments and white space.
        """
        value = waf.normalise(b"UNION/**/%00SeLeCt\t\t1")
        self.assertEqual(value.decoded, "UNION/**/\x00SeLeCt\t\t1")
        self.assertEqual(value.clean, "UNION/**/SeLeCt\t\t1")
        self.assertEqual(value.folded, "union select 1")
        self.assertEqual(waf.normalise(b"/*!50000union*/").folded, " union ")

    def test_encodings(self) -> None:
        """
        An attack is found however it is encoded.
        """
        for target in [
            b"/?q=%3Cscript%3E",
            b"/?q=%253Cscript%253E",
            b"/?q=%25253Cscript%25253E",
            b"/?q=%u003Cscript%u003E",
            b"/?q=%26lt;script%26gt;",
            b"/?q=<ScRiPt>",
        ]:
            self.assertIn(self.findIn(target), ("xss", "xss-script"), target)
        self.assertEqual(self.findIn(b"/?q=<scr%00ipt>", level=1), "xss")

    def test_plus(self) -> None:
        """
        C{+} is a space in a query, so that C{union+select} is seen.
        """
        self.assertEqual(self.findIn(b"/?q=1+union+select+null,null"), "sqli")

    def test_traversal(self) -> None:
        """
        Path traversal, plain or encoded, in the path or a value.
        """
        for target in [
            b"/static/../../etc/passwd",
            b"/static/%2e%2e/%2e%2e/etc/passwd",
            b"/static/%252e%252e%252fetc",
            b"/?file=..%5c..%5cwindows",
            b"/?file=%c0%ae%c0%ae/secret",
        ]:
            self.assertEqual(self.findIn(target), "traversal", target)

    def test_protocol(self) -> None:
        """
        CR and LF in a decoded value (header injection, response
        splitting) and NUL are protocol attacks.
        """
        self.assertEqual(
            self.findIn(b"/?next=%0d%0aSet-Cookie:%20a=b"), "protocol-header-injection"
        )
        self.assertEqual(
            self.findIn(b"/?x=a%0d%0a%0d%0aHTTP/1.1%20200%20OK"), "protocol-splitting"
        )
        self.assertEqual(self.findIn(b"/?f=x%00.png"), "protocol-nul")
        self.assertIsNone(self.findIn(b"/?f=x%00.png", level=1))

    def test_commands(self) -> None:
        """
        Shell commands after a separator are command injection; ordinary
        words after one are not, at the default level.
        """
        self.assertEqual(self.findIn(b"/?ip=1.2.3.4%3B%20whoami"), "cmdi")
        self.assertEqual(self.findIn(b"/?ip=%24(cat%20x)"), "cmdi-substitution")
        self.assertIsNone(self.findIn(b"/?q=tea%20%7C%20less%20sugar"))
        self.assertEqual(self.findIn(b"/?q=tea%20%7C%20less%20sugar", level=3), "cmdi-word")


class BodyTests(SynchronousTestCase):
    """
    Bodies are inspected by their type, up to the limit.
    """

    def setUp(self) -> None:
        self.inspector = WAF(WAFConfig(mode="block", body_limit=4096))

    def inspectBody(self, contentType: bytes, body: bytes) -> Finding | None:
        return self.inspector.inspectBody(
            view(b"/", [(b"Content-Type", contentType)], b"POST"), body
        )

    def test_form(self) -> None:
        """
        Form fields are decoded (C{+} a space) and inspected, their names
        too.
        """
        finding = self.inspectBody(
            b"application/x-www-form-urlencoded; charset=utf-8",
            b"name=Bob&q=1+union+select+null,null",
        )
        self.assertEqual((finding.rule, finding.field), ("sqli", "body:q"))
        finding = self.inspectBody(b"application/x-www-form-urlencoded", b"%3Cscript%3E=1")
        self.assertEqual(finding.kind, "xss")
        self.assertIsNone(
            self.inspectBody(b"application/x-www-form-urlencoded", b"name=O%27Brien&a=1")
        )

    def test_json(self) -> None:
        """
        The string values and keys of JSON are inspected, escapes undone,
        however deep.
        """
        body = json.dumps({"a": [{"b": {"c": "<script>alert(1)</script>"}}]}).encode()
        finding = self.inspectBody(b"application/json", body)
        self.assertEqual((finding.kind, finding.field), ("xss", "body:c"))
        finding = self.inspectBody(b"application/json", b'{"\\u0027 or 1=1--": 1}')
        self.assertEqual(finding.kind, "sqli")
        finding = self.inspectBody(b"application/vnd.api+json", b'["x\\u003cscript>"]')
        self.assertEqual(finding.kind, "xss")
        self.assertIsNone(
            self.inspectBody(b"application/json", b'{"name": "O\'Brien", "n": 5}')
        )

    def test_truncatedJSON(self) -> None:
        """
        JSON cut at the body limit is read as far as it goes.
        """
        body = b'{"a": "<script>alert(1)</script>", "b": "' + b"x" * 10000
        self.assertEqual(self.inspectBody(b"application/json", body).kind, "xss")

    def test_multipart(self) -> None:
        """
        The fields of a multipart form are inspected, and a file's name, but
        not a file's content.
        """
        contentType = MULTIPART[1]
        upload = multipart(
            (b"title", None, b"My page"),
            (b"file", b"page.html", b"<script>alert(1)</script>' or 1=1--"),
        )
        self.assertIsNone(self.inspectBody(contentType, upload))
        field = multipart((b"title", None, b"<svg onload=alert(1)>"))
        self.assertEqual(self.inspectBody(contentType, field).kind, "xss")
        name = multipart((b"file", b"../../etc/passwd", b"data"))
        self.assertEqual(self.inspectBody(contentType, name).kind, "traversal")

    def test_otherTypes(self) -> None:
        """
        Other bodies are not inspected.
        """
        for contentType in (b"text/plain", b"application/octet-stream", b""):
            self.assertIsNone(self.inspectBody(contentType, b"<script>alert(1)</script>"))

    def test_limit(self) -> None:
        """
        Only the first C{body_limit} bytes are inspected.
        """
        body = b"a=" + b"x" * 5000 + b"&b=%3Cscript%3E"
        self.assertIsNone(self.inspectBody(FORM[1], body))
        self.assertIsNotNone(self.inspectBody(FORM[1], body[-20:]))


class CustomRuleTests(SynchronousTestCase):
    """
    Custom rules run first, in order.
    """

    def test_block(self) -> None:
        """
        A custom rule that blocks gives a custom finding.
        """
        inspector = WAF(
            WAFConfig(mode="block", rules=(parseRule("no-admin path ~ ^/admin block"),))
        )
        self.assertEqual(
            inspector.inspect(view(b"/admin/users")),
            Finding("no-admin", "custom", "path", "block", "/admin/users"),
        )
        self.assertIsNone(inspector.inspect(view(b"/Admin/users")))
        self.assertEqual(inspector.counters, {"no-admin": 1})

    def test_caseless(self) -> None:
        """
        C{~*} matches in any case; C{in} compares in any case.
        """
        inspector = WAF(
            WAFConfig(
                mode="block",
                rules=(
                    parseRule("bots header:User-Agent ~* sqlmap|nikto block"),
                    parseRule("verbs method in TRACE, track block"),
                ),
            )
        )
        bot = view(headers=[(b"user-agent", b"SQLMap/1.7")])
        self.assertEqual(inspector.inspect(bot).rule, "bots")
        self.assertEqual(inspector.inspect(view(method=b"TRACK")).rule, "verbs")
        self.assertIsNone(inspector.inspect(view(method=b"GET")))

    def test_fields(self) -> None:
        """
        Rules read cookies, arguments, the query, the URI and the client
        address.
        """
        cases = [
            ("r cookie:role ~ ^admin$ block", view(headers=[(b"Cookie", b"a=1; role=admin")])),
            ("r arg:debug in 1,true block", view(b"/x?a=2&debug=true")),
            ("r query ~ a=2&b block", view(b"/x?a=2&b=3")),
            ("r uri ~ ^/x\\?a block", view(b"/x?a=2")),
            ("r remote_addr in 192.0.2.1 block", view()),
        ]
        for line, request in cases:
            inspector = WAF(WAFConfig(mode="block", rules=(parseRule(line),)))
            self.assertEqual(inspector.inspect(request).rule, "r", line)

    def test_log(self) -> None:
        """
        A rule that logs does not stop the inspection: a later finding that
        blocks wins, else the log finding is returned.
        """
        inspector = WAF(
            WAFConfig(mode="block", rules=(parseRule("watch path ~ ^/api log"),))
        )
        logged = inspector.inspect(view(b"/api/x"))
        self.assertEqual((logged.rule, logged.action), ("watch", "log"))
        attack = inspector.inspect(view(b"/api/x?q=%3Cscript%3E"))
        self.assertEqual((attack.kind, attack.action), ("xss", "block"))
        self.assertEqual(inspector.counters, {"watch": 2, "xss": 1})

    def test_logThenAllow(self) -> None:
        """
        A rule that logs still logs when a later one allows the request.
        """
        inspector = WAF(
            WAFConfig(
                mode="block",
                rules=(parseRule("watch path ~ ^/api log"), parseRule("ok path ~ ^/ allow")),
            )
        )
        logged = inspector.inspect(view(b"/api/x?q=%3Cscript%3E"))
        self.assertEqual((logged.rule, logged.action), ("watch", "log"))

    def test_allowNamed(self) -> None:
        """
        An C{allow} rule excepts the request from the rules or kinds it
        names, and only from those.
        """
        inspector = WAF(
            WAFConfig(
                mode="block",
                rules=(parseRule("cms path ~ ^/cms/ allow xss,xss-script,sqli-union"),),
            )
        )
        self.assertIsNone(inspector.inspect(view(b"/cms/save?html=%3Cscript%3E")))
        self.assertEqual(inspector.inspect(view(b"/cms/save?q=%27%20or%201=1--")).kind, "sqli")
        self.assertEqual(inspector.inspect(view(b"/blog?html=%3Cscript%3E")).kind, "xss")
        kind = WAF(WAFConfig(mode="block", rules=(parseRule("k path ~ ^/ allow sqli"),)))
        self.assertIsNone(kind.inspect(view(b"/?q=1%27%20union%20select%201,2--")))

    def test_allowAll(self) -> None:
        """
        An C{allow} rule without names excepts the request from every rule
        after it, custom ones too, and its body from inspection.
        """
        inspector = WAF(
            WAFConfig(
                mode="block",
                rules=(
                    parseRule("office remote_addr ~ ^192\\.0\\.2\\. allow"),
                    parseRule("never path ~ . block"),
                ),
            )
        )
        request = view(b"/?q=%3Cscript%3E", [FORM])
        self.assertIsNone(inspector.inspect(request))
        self.assertIsNone(inspector.inspectBody(request, b"a=%3Cscript%3E"))

    def test_allowCustom(self) -> None:
        """
        An C{allow} rule can except from a custom rule.
        """
        inspector = WAF(
            WAFConfig(
                mode="block",
                rules=(
                    parseRule("health path ~ ^/health$ allow no-get"),
                    parseRule("no-get method in GET block"),
                ),
            )
        )
        self.assertIsNone(inspector.inspect(view(b"/health")))
        self.assertEqual(inspector.inspect(view(b"/other")).rule, "no-get")

    def test_bodyRules(self) -> None:
        """
        C{body} and C{arg:NAME} rules read the body in C{inspectBody}.
        """
        inspector = WAF(
            WAFConfig(
                mode="block",
                rules=(
                    parseRule("big body ~ secret block"),
                    parseRule("role arg:role in admin block"),
                ),
            )
        )
        self.assertIsNone(inspector.inspect(view(b"/", [FORM])))
        self.assertEqual(
            inspector.inspectBody(view(b"/", [FORM]), b"a=1&role=Admin").rule, "role"
        )
        self.assertEqual(
            inspector.inspectBody(view(b"/", [JSON]), b'{"role": "admin"}').rule, "role"
        )
        self.assertEqual(
            inspector.inspectBody(view(b"/", [JSON]), b'{"x": "top secret"}').rule, "big"
        )


class ParseTests(SynchronousTestCase):
    """
    The syntax of C{waf}, C{waf_level} and C{waf_rule}.
    """

    def test_rules(self) -> None:
        """
        Each form of a rule.
        """
        self.assertEqual(
            parseRule("no-admin path ~ ^/admin( |/) block"),
            WAFRule("no-admin", "path", pattern="^/admin( |/)", action="block"),
        )
        self.assertEqual(
            parseRule("bots header:User-Agent ~* (sqlmap|nikto) log"),
            WAFRule("bots", "header:User-Agent", pattern="(?i)(sqlmap|nikto)", action="log"),
        )
        self.assertEqual(
            parseRule("verbs METHOD in TRACE,TRACK, CONNECT Block"),
            WAFRule("verbs", "method", values=("TRACE", "TRACK", "CONNECT"), action="block"),
        )
        self.assertEqual(
            parseRule("upload path ~ ^/upload allow sqli, xss"),
            WAFRule("upload", "path", pattern="^/upload", action="allow", excepts=("sqli", "xss")),
        )
        self.assertEqual(
            parseRule("office remote_addr ~ ^10\\. allow"),
            WAFRule("office", "remote_addr", pattern="^10\\.", action="allow"),
        )

    def test_badRules(self) -> None:
        """
        Bad rules are refused with a message that says what is wrong.
        """
        for line, message in [
            ("r path ~", "expected NAME FIELD"),
            ("r path ~ (unclosed block", "bad regular expression"),
            ("r pth ~ x block", "unknown WAF rule field 'pth'"),
            ("r header: ~ x block", "unknown WAF rule field"),
            ("r path ~ x deny", "must end with an action"),
            ("r path like x block", "unknown operator 'like'"),
            ("r path in , block", "no values"),
            ("sqli path ~ x block", "taken by a built-in rule"),
            ("r/1 path ~ x block", "bad WAF rule name"),
        ]:
            with self.assertRaises(ValueError) as raised:
                parseRule(line)
            self.assertIn(message, str(raised.exception), line)

    def test_badRuleInConfig(self) -> None:
        """
        A configuration with a rule whose expression is bad is refused.
        """
        rule = WAFRule("r", "path", pattern="(")
        with self.assertRaises(ValueError) as raised:
            WAF(WAFConfig(mode="block", rules=(rule,)))
        self.assertIn("bad regular expression '(' in WAF rule 'r'", str(raised.exception))

    def test_modeAndLevel(self) -> None:
        """
        C{parseMode} and C{parseLevel} read the mode and the level.
        """
        self.assertEqual(parseMode(" Detect "), "detect")
        self.assertEqual(parseLevel("4"), 4)
        for bad in ("on", ""):
            self.assertRaises(ValueError, parseMode, bad)
        for bad in ("0", "5", "high"):
            self.assertRaises(ValueError, parseLevel, bad)


#: Bytes made of the pieces that decoding and detection look at.
tricky = st.lists(
    st.sampled_from(
        [b"%", b"%u", b"%25", b"\\u", b"\\x", b"&#x", b"&lt;", b";", b"d800", b"ff1c",
         b"00", b"0d", b"0a", b"<", b">", b"'", b'"', b" or ", b"/*", b"*/", b"/*!", b"..",
         b"/", b"+", b"\xc0", b"\xae", b"\xff", b"=", b"&", b"?", b"{", b"}", b"[", b"]",
         b":", b",", b"--", b"boundary=", b"\r\n", b"Content-Disposition: form-data; name=\"a\""]
    ),
    max_size=40,
).map(b"".join)


class HostileTests(SynchronousTestCase):
    """
    Whatever it is given, the WAF answers, within bounds, and never raises.
    """

    def setUp(self) -> None:
        self.inspector = WAF(WAFConfig(mode="block", level=4, body_limit=64 * 1024))

    def test_hugeValues(self) -> None:
        """
        Huge values and many of them are inspected only up to the limits.
        """
        huge = b"<a" * (5 * 1024 * 1024)
        self.inspector.inspect(view(b"/?q=" + b"/*" * 1024 * 1024))
        self.inspector.inspect(view(b"/?q=" + huge))
        self.inspector.inspect(view(b"/?" + b"a=%3C&" * 500000))
        self.inspector.inspect(view(headers=[(b"X-A", huge)] * 50))
        self.inspector.inspect(view(headers=[(b"Cookie", b"a=b;" * 1000000)]))
        self.inspector.inspectBody(view(headers=[JSON]), b'"' + b"\\u" * 5000000)
        self.inspector.inspectBody(view(headers=[FORM]), b"&" * 5000000)

    def test_valuesAfterTheLimit(self) -> None:
        """
        Values past the limits are not looked at.
        """
        many = b"&".join(b"a%d=x" % number for number in range(waf.VALUES_LIMIT))
        self.assertIsNone(self.inspector.inspect(view(b"/?" + many + b"&q=%3Cscript%3E")))

    def test_deepJSON(self) -> None:
        """
        JSON nested deep is read as any other.
        """
        body = b"[" * 100000 + b'"<script>alert(1)</script>"' + b"]" * 100000
        inspector = WAF(WAFConfig(mode="block", body_limit=1024 * 1024))
        self.assertEqual(inspector.inspectBody(view(headers=[JSON]), body).kind, "xss")
        self.assertIsNone(inspector.inspectBody(view(headers=[JSON]), b"[" * 1000000))

    def test_invalidUTF8(self) -> None:
        """
        Invalid UTF-8, and escapes of lone surrogates, are replaced, and the
        attack around them still found.
        """
        for escape in (b"%5Cud800", b"%25ud800", b"%26%23xd800;", b"%ed%a0%80"):
            finding = self.inspector.inspect(view(b"/?q=" + escape + b"%27%20or%201=1--"))
            self.assertEqual(finding.kind, "sqli", escape)
        self.assertEqual(
            self.inspector.inspectBody(view(headers=[JSON]), b'["\\ud800<script>"]').kind,
            "xss",
        )
        self.assertEqual(
            self.inspector.inspect(view(b"/?q=%ff%fe%3Cscript%3E")).kind, "xss"
        )
        self.assertEqual(
            self.inspector.inspect(view(headers=[(b"Referer", b"\xff<script>\xc0")])).kind,
            "xss",
        )

    @given(
        target=st.binary(max_size=200) | tricky.map(lambda value: b"/?q=" + value),
        header=st.binary(max_size=200) | tricky,
        body=st.binary(max_size=400) | tricky,
        contentType=st.sampled_from(
            [FORM[1], JSON[1], MULTIPART[1], b"multipart/form-data", b"text/plain"]
        ),
        level=st.sampled_from(waf.LEVELS),
    )
    @fuzzSettings(300)
    def test_neverRaises(
        self, target: bytes, header: bytes, body: bytes, contentType: bytes, level: int
    ) -> None:
        """
        Any bytes anywhere give a finding or L{None}, never an exception.
        """
        inspector = WAF(
            WAFConfig(
                mode="block",
                level=level,
                rules=(
                    parseRule("r arg:a ~ x log"),
                    parseRule("s cookie:c ~ y allow xss"),
                    parseRule("t body ~ z log"),
                ),
            )
        )
        request = view(
            target,
            [(b"Content-Type", contentType), (b"X-Data", header), (b"Cookie", header)],
        )
        for result in (inspector.inspect(request), inspector.inspectBody(request, body)):
            self.assertTrue(result is None or isinstance(result, Finding))

    def test_headersAfterTheLimit(self) -> None:
        """
        Header values past L{waf.TOTAL_LIMIT} bytes are not looked at, with
        a plain path as with any other.
        """
        filler = (b"X-Filler", b"a" * waf.VALUE_LIMIT * 2)
        attack = (b"X-Data", b"<script>alert(1)</script>")
        fits = waf.TOTAL_LIMIT // waf.VALUE_LIMIT - 1
        for target in (b"/", b"/a/%2e", b"/?a=b"):
            self.assertEqual(
                self.inspector.inspect(view(target, [filler] * fits + [attack])).kind, "xss"
            )
            self.assertIsNone(self.inspector.inspect(view(target, [filler] * (fits + 1) + [attack])))

    @given(
        target=st.sampled_from([b"/", b"/a/b.c", b"/a%2Fb", b"/x?y=1", b"/" + b"p" * 300])
        | st.binary(max_size=40),
        headers=st.lists(
            st.tuples(
                st.sampled_from(
                    [b"Host", b"User-Agent", b"Cookie", b"cookie", b"Accept", b"X-Data", b"Referer"]
                ),
                st.sampled_from([b"", b"bench", b"a=b; c", b"<script>", b"1' or '1'='1", b"x" * 300])
                | st.binary(max_size=30),
            ),
            max_size=6,
        ),
    )
    @fuzzSettings(300)
    def test_headAsEveryValue(self, target: bytes, headers: list) -> None:
        """
        The head of a request gives what inspecting its values one by one
        in order gives (L{WAF._headFields}), the first time and from the
        cache.
        """
        request = view(target, headers)
        inspector, reference = WAF(WAFConfig(mode="block")), WAF(WAFConfig(mode="block"))
        expected = reference._scan(reference._headFields(request), frozenset())
        self.assertEqual(inspector.inspect(request), expected)
        self.assertEqual(inspector.inspect(request), expected)
        self.assertEqual(inspector.counters, {} if expected is None else {expected.rule: 2})

    @given(st.text(max_size=60))
    @fuzzSettings(200)
    def test_cachedAsFresh(self, text: str) -> None:
        """
        A value gives the same answer the second time, from the cache, as
        the first.
        """
        inspector = WAF(WAFConfig(mode="block"))
        request = view(b"/?q=" + quote(text, safe="").encode("ascii"))
        self.assertEqual(inspector.inspect(request), inspector.inspect(request))

    @given(
        st.lists(
            st.sampled_from(
                ["union", "select", "or", "and", "1", "0", "e1", "sleep", "null",
                 "char", "if", "0x41", "_", "x", "version", "from", "where"]
            ),
            min_size=1,
            max_size=6,
        ).map("".join)
    )
    @fuzzSettings(200)
    def test_wordsAreNotSQL(self, word: str) -> None:
        """
        A single word is never SQL injection to libinjection, which is why
        the WAF does not ask it about one.
        """
        self.assertFalse(waf._isSQLi(word) or waf._isXSS(word))


class HeadOrderTests(SynchronousTestCase):
    """
    The head is inspected in one order, whatever order its lines come in:
    the path, the query, the headers, then the cookies of every C{Cookie}
    line.
    """

    def setUp(self) -> None:
        self.inspector = WAF(WAFConfig(mode="block"))

    def test_cookiesAfterHeaders(self) -> None:
        """
        An attack in a cookie and one in a header after it: the header's
        is found, since cookies come last.
        """
        finding = self.inspector.inspect(
            view(headers=[(b"Cookie", b"a=<script>alert(1)</script>"), (b"X-Data", b"' or 1=1 --")])
        )
        self.assertEqual(finding.field, "header:x-data")

    def test_everyCookieLine(self) -> None:
        """
        Every C{Cookie} line is inspected, in any case, among other headers.
        """
        finding = self.inspector.inspect(
            view(
                headers=[
                    (b"cookie", b"a=1"),
                    (b"Accept", b"*/*"),
                    (b"COOKIE", b"b=2; c=<script>alert(1)</script>"),
                ]
            )
        )
        self.assertEqual(finding.field, "cookie:c")

    def test_queryOnlyWithQuestionMark(self) -> None:
        """
        A target's query is inspected, an empty one too; a target without
        one has only its path inspected.
        """
        self.assertEqual(
            self.inspector.inspect(view(b"/a?q=%27%20or%201%3D1%20--")).field, "arg:q"
        )
        self.assertIsNone(self.inspector.inspect(view(b"/a?")))
        self.assertIsNone(self.inspector.inspect(view(b"/a")))
