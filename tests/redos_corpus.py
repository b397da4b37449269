"""A corpus of real, published Python-``re`` regexes: ReDoS-vulnerable ones and safe ones.

Each entry is a pattern exactly as published (flags and call style as the
project called it), where it comes from, and — for advisories that printed
one — the published attack. Pairs are a vulnerable pattern and the version
its project shipped as the fix.

The *label* of each entry is not taken from the publication but measured:
``bench/label_redos_corpus.py`` times CPython's own ``re`` on every known
attack for the entry (the published one, the paired pattern's, regexploit's
when installed, and guardpool's) and records in
``tests/data/redos_labels.json`` whether any of them grows exponentially or at
least cubically, with the attack that showed it. A "fix" that is still slow
is therefore labelled vulnerable, and a published "vulnerability" that no
attack makes slow is labelled safe. ``tests/test_redos_corpus.py`` re-times a
sample of the stored attacks, so a label that stops being true fails the suite.

Sources (all public):
- regexploit's test suite: github.com/doyensec/regexploit tests/test_redos.py
- uap-core ReDoS fixes (CVE-2020-5243, GHSA-cmcx-xhr8-3w9p, GHSA-p4pj-mg4r-x6v4):
  github.com/ua-parser/uap-core commits e9a1c74 7d92a38 dd279cf a679b13 43db37e 24f0d5c 6e65445
- wheel CVE-2022-40898: github.com/pypa/wheel commit 88f02bc
- httplib2 CVE-2021-21240: github.com/httplib2/httplib2 commit bd9ee25 (regexes removed)
- python-markdown2 (CVE-2021-26813 and later): github.com/trentm/python-markdown2
  commits 7b65126 d6a56f4 96fab52 034d126 1fc5201
- CPython: CVE-2020-8492 (urllib.request AbstractBasicAuthHandler, commit 0b297d4),
  bpo-38804 (http.cookiejar LOOSE_HTTP_DATE_RE), bpo-40480 (fnmatch), difflib IS_LINE_JUNK
- Django CVE-2019-14232 (django.utils.text.Truncator), CVE-2018-7536 (urlize)
- OWASP "Regular expression Denial of Service" page and regexlib.com classics
- safe, widely used reference patterns: semver.org, PEP 440 (packaging), RFC 4122 UUID,
  the WHATWG HTML e-mail pattern
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

M, S, X, I_ = re.MULTILINE, re.DOTALL, re.VERBOSE, re.IGNORECASE

REGEXPLOIT = "github.com/doyensec/regexploit tests/test_redos.py"
UAP = "github.com/ua-parser/uap-core commit "
MD2 = "github.com/trentm/python-markdown2 commit "

_COOKIEJAR_OLD = r"""^
    (\d\d?)            # day
       (?:\s+|[-\/])
    (\w+)              # month
        (?:\s+|[-\/])
    (\d+)              # year
    (?:
          (?:\s+|:)    # separator before clock
       (\d\d?):(\d\d)  # hour:min
       (?::(\d\d))?    # optional seconds
    )?                 # optional clock
       \s*
    ([-+]?\d{2,4}|(?![APap][Mm]\b)[A-Za-z]+)? # timezone
       \s*
    (?:\(\w+\))?       # ASCII representation of timezone in parens.
       \s*$"""

_COOKIEJAR_NEW = r"""^
    (\d\d?)            # day
       (?:\s+|[-\/])
    (\w+)              # month
        (?:\s+|[-\/])
    (\d+)              # year
    (?:
          (?:\s+|:)    # separator before clock
       (\d\d?):(\d\d)  # hour:min
       (?::(\d\d))?    # optional seconds
    )?                 # optional clock
       \s*
    (?:
       ([-+]?\d{2,4}|(?![APap][Mm]\b)[A-Za-z]+) # timezone
       \s*
    )?
    (?:
       \(\w+\)         # ASCII representation of timezone in parens.
       \s*
    )?$"""

_HTTPLIB2_STRICT = (
    r"^(?:\s*(?:,\s*)?([^\0-\x1f\x7f-\xff()<>@,;:\\\"/[\]?={} \t]+)\s*=\s*\"?((?<=\")"
    r"(?:[^\0-\x08\x0A-\x1f\x7f-\xff\\\"]|\\[\0-\x7f])*?(?=\")|(?<!\")"
    r"[^\0-\x1f\x7f-\xff()<>@,;:\\\"/[\]?={} \t]+(?!\"))\"?)(.*)$"
)
_HTTPLIB2_RELAXED = (
    r"^(?:\s*(?:,\s*)?([^ \t\r\n=]+)\s*=\s*\"?((?<=\")(?:[^\\\"]|\\.)*?(?=\")|(?<!\")"
    r"[^ \t\r\n,]+(?!\"))\"?)(.*)$"
)

# (id, pattern, flags, call, source, published attack (prefix, pump, suffix) or None)
Entry = tuple[str, str, int, str, str, tuple[str, str, str] | None]

ENTRIES: list[Entry] = [
    # -- regexploit's test suite: patterns it reports, and the false positives it guards
    ("rx-simple-repeat1", r"abd\w*[def]+\w+[de]!", 0, "search", REGEXPLOIT, None),
    ("rx-simple-repeat2", r"\w*x0*\d*\.?\d\.?\d+4", 0, "search", REGEXPLOIT, None),
    ("rx-best-repeat", r"\d*0*\d*x?\dx?\d+4", 0, "search", REGEXPLOIT, None),
    ("rx-backtrack", r"[abc]+\w+[ab]+a", 0, "search", REGEXPLOIT, None),
    ("rx-dollar", r"^a+(b*b*b*)$", 0, "search", REGEXPLOIT, None),
    ("rx-cpython-cve", r"(,*,)*(,+)[ \t]", 0, "search", REGEXPLOIT, None),
    ("rx-ssri", r"^([A-Za-z0-9+/=]{4})(\?[\x21-\x7E]*)*$", 0, "search", REGEXPLOIT, None),
    (
        "rx-pillow-pdf",
        r"t[\011\012\015\040]*\<\<(.*?\>\>)[\011\012\015\040]*[\r\n]+[\011\012\015\040]*s",
        0,
        "search",
        REGEXPLOIT + " (Pillow CVE-2021-25292)",
        None,
    ),
    (
        "rx-markdown",
        r"\(\s*(<)?([\s\S]*?)(?(2)>)(?:\s+'([\s\S]*?)')?\s*\)",
        0,
        "search",
        REGEXPLOIT,
        None,
    ),
    ("rx-backtrack-repeated", r"#\s*\s*\s*([^ \t]+)(.*)$", 0, "search", REGEXPLOIT, None),
    ("rx-groupref-a", r"(a+)(a+)\1(a+)b", 0, "search", REGEXPLOIT, None),
    ("rx-groupref-b", r"(a(aa)+a)(a+)\1(a+)b", 0, "search", REGEXPLOIT, None),
    ("rx-groupref-c", r"(a*)(a+)\1(a+)b", 0, "search", REGEXPLOIT, None),
    ("rx-groupref-not-starry", r"(a+)(a+)\1b", 0, "search", REGEXPLOIT, None),
    ("rx-codemirror", r"^([*\-_])(?:\s*\1){2,}\s*$", 0, "search", REGEXPLOIT, None),
    (
        "rx-uap-cfnetwork",
        r"(\d+).?(\d+)?.?(\d+)?.?(\d+)?C",
        0,
        "search",
        REGEXPLOIT + " (ua-parser CFNetwork)",
        None,
    ),
    (
        "rx-negative-lookahead",
        r"[abc]+(?!c)[abc]+(?!b)([abc]+[abc])(?!c)[abc]*x",
        0,
        "search",
        REGEXPLOIT,
        None,
    ),
    ("rx-regexlib-seq1", r"(a?b+)+c", 0, "search", REGEXPLOIT, None),
    ("rx-regexlib-seq2", r"(x*[ab]*x?[bc]*x?)*c", 0, "search", REGEXPLOIT, None),
    ("rx-regexlib-seq3", r"(x?[ab]+x?[bc]+\w*x?)*c", 0, "search", REGEXPLOIT, None),
    ("rx-dt-branch", r"a(z|\w*b)*d", 0, "search", REGEXPLOIT, None),
    ("rx-node-forge", r"\s*([^=]*)=?([^;]*)(;|$)", 0, "search", REGEXPLOIT, None),
    ("rx-ruby-maruku", r"(\S.*\S)*\s*", 0, "search", REGEXPLOIT, None),
    ("rx-editorconfig", r"\s*(.*?)\s*([#;].*)?$", 0, "search", REGEXPLOIT, None),
    ("rx-no-repeats", r"aaaaa[abc](\w[\wz]){1,7}X[^x]", 0, "search", REGEXPLOIT, None),
    (
        "rx-markdown2-fence",
        r"\s*?([\w+-]+)?\s*?\n(.*?)^```",
        0,
        "search",
        REGEXPLOIT + " (python-markdown2)",
        None,
    ),
    # -- httplib2 CVE-2021-21240: both WWW-Authenticate parsers (the fix dropped regexes)
    ("httplib2-relaxed", _HTTPLIB2_RELAXED, 0, "search", "httplib2 bd9ee25^", None),
    ("httplib2-strict", _HTTPLIB2_STRICT, 0, "search", "httplib2 bd9ee25^", None),
    # -- CPython
    (
        "cpython-basic-auth-old",
        "(?:.*,)*[ \t]*([^ \t]+)[ \t]+realm=([\"']?)([^\"']*)\\2",
        I_,
        "search",
        "CPython CVE-2020-8492, urllib.request AbstractBasicAuthHandler.rx before 0b297d4",
        ("", ",", ""),
    ),
    (
        "cpython-basic-auth-fixed",
        "(?:^|,)[ \t]*([^ \t,]+)[ \t]+realm=([\"']?)([^\"']*)\\2",
        I_,
        "search",
        "CPython CVE-2020-8492 fix, commit 0b297d4",
        None,
    ),
    (
        "cpython-difflib-junk-old",
        r"\s*#?\s*$",
        0,
        "match",
        "CPython difflib.IS_LINE_JUNK before bpo-? fix (gh-issue: quadratic/cubic)",
        ("", " ", "!"),
    ),
    (
        "cpython-difflib-junk-fixed",
        r"\s*(?:#\s*)?$",
        0,
        "match",
        "CPython difflib.IS_LINE_JUNK after the fix",
        None,
    ),
    (
        "cpython-cookiejar-old",
        _COOKIEJAR_OLD,
        X,
        "search",
        "CPython bpo-38804 http.cookiejar LOOSE_HTTP_DATE_RE (as in regexploit's tests)",
        ("1-c-1", " ", "!"),
    ),
    (
        "cpython-cookiejar-fixed",
        _COOKIEJAR_NEW,
        X | re.ASCII,
        "search",
        "CPython bpo-38804 fix",
        None,
    ),
    (
        "cpython-fnmatch-old",
        "(?s:" + ".*a" * 12 + ")\\Z",
        0,
        "match",
        "CPython bpo-40480: fnmatch.translate('*a' * 12) before the fix",
        ("", "a", "b"),
    ),
    (
        "cpython-fnmatch-fixed",
        fnmatch.translate("*a" * 12),
        0,
        "match",
        "CPython bpo-40480 fix: fnmatch.translate('*a' * 12) today",
        None,
    ),
    # -- wheel CVE-2022-40898
    (
        "wheel-info-old",
        r"""^(?P<namever>(?P<name>.+?)-(?P<ver>.+?))(-(?P<build>\d[^-]*))?
     -(?P<pyver>.+?)-(?P<abi>.+?)-(?P<plat>.+?)\.whl$""",
        X,
        "match",
        "wheel CVE-2022-40898, pypa/wheel 88f02bc^",
        ("x", "-", ""),
    ),
    (
        "wheel-info-fixed",
        r"""^(?P<namever>(?P<name>[^-]+?)-(?P<ver>[^-]+?))(-(?P<build>\d[^-]*))?
     -(?P<pyver>[^-]+?)-(?P<abi>[^-]+?)-(?P<plat>[^.]+?)\.whl$""",
        X,
        "match",
        "wheel CVE-2022-40898 fix, pypa/wheel 88f02bc",
        None,
    ),
    # -- python-markdown2
    (
        "md2-fence-old",
        r"^```\s{0,2}([\w+-]+)?\s*?\n(.*?)^```[ \t]*\n",
        M | S,
        "search",
        MD2 + "7b65126^ (CVE-2021-26813)",
        None,
    ),
    (
        "md2-fence-fixed",
        r"^```\s{0,99}([\w+-]+)?\s{0,99}\n(.*?)^```[ \t]*\n",
        M | S,
        "search",
        MD2 + "7b65126",
        None,
    ),
    ("md2-setext-old", r"^(.+)[ \t]*\n(=+|-+)[ \t]*\n+", M, "search", MD2 + "d6a56f4^", None),
    (
        "md2-setext-fixed",
        r"^(.+)[ \t]{0,99}\n(=+|-+)[ \t]*\n+",
        M,
        "search",
        MD2 + "d6a56f4",
        None,
    ),
    (
        "md2-pyshell-old",
        r"^([ ]{0,3})>>>[ ].*\n^(\1.*\S+.*\n)*^\n",
        M,
        "search",
        MD2 + "96fab52^",
        None,
    ),
    (
        "md2-pyshell-fixed",
        r"^([ ]{0,3})>>>[ ].*\n^(\1[^\S\n]*\S.*\n)*^\n",
        M,
        "search",
        MD2 + "96fab52",
        None,
    ),
    (
        "md2-strong-old",
        r"(\*\*|__)(?=\S)(.+?[*_]*)(?<=\S)\1",
        S,
        "search",
        MD2 + "1fc5201^",
        None,
    ),
    (
        "md2-html-attr-old",
        r"""<(/?)([a-z0-9]+)(?:\s+(?:[^\t<>"'=/]+:)?[^<>"'=/]+=(?:".*?"|'.*?'|[^<>"'=/\s]+))*\s*/?>""",
        I_,
        "search",
        MD2 + "034d126^ (tag tokenizer, attribute part)",
        None,
    ),
    (
        "md2-html-attr-fixed",
        r"""<(/?)([a-z0-9]+)(?:\s+(?:[^\t<>"'=/]+:)?[^<>"'=/]+=(?:"[^"]*?"|'[^']*?'|[^<>"'=/\s]+))*\s*/?>""",
        I_,
        "search",
        MD2 + "034d126",
        None,
    ),
    # -- Django
    (
        "django-truncator-words-old",
        r"<.*?>|((?:\w[-\w]*|&.*?;)+)",
        re.U | S,
        "finditer",
        "Django CVE-2019-14232, django.utils.text.Truncator re_words before the fix",
        None,
    ),
    (
        "django-truncator-words-fixed",
        r"<[^>]+?>|([^<>\s]+)",
        S,
        "finditer",
        "Django CVE-2019-14232 fix",
        None,
    ),
    (
        "django-truncator-tag-old",
        r"<(/)?([^ ]+?)(?:(\s*/)| .*?)?>",
        S,
        "match",
        "Django CVE-2019-14232, Truncator re_tag before the fix",
        None,
    ),
    (
        "django-truncator-tag-fixed",
        r"<(/)?(\S+?)(?:(\s*/)|\s.*?)?>",
        S,
        "match",
        "Django CVE-2019-14232 fix",
        None,
    ),
    (
        "django-urlize-email-old",
        r"^\S+@\S+\.\S+$",
        0,
        "match",
        "Django CVE-2018-7536, urlize simple_email_re (removed by the fix)",
        None,
    ),
    # -- OWASP ReDoS page / regexlib classics
    ("owasp-nested-plus", r"^(a+)+$", 0, "search", "OWASP ReDoS page", None),
    ("owasp-alpha-star", r"^([a-zA-Z]+)*$", 0, "search", "OWASP ReDoS page", None),
    ("owasp-a-or-aa", r"^(a|aa)+$", 0, "search", "OWASP ReDoS page", None),
    ("owasp-a-or-a-opt", r"^(a|a?)+$", 0, "search", "OWASP ReDoS page", None),
    ("owasp-dot-a-x", r"^(.*a){12}$", 0, "search", "OWASP ReDoS page ((.*a){x}, x > 10)", None),
    (
        "regexlib-email",
        r"^([a-zA-Z0-9])(([\-.]|[_]+)?([a-zA-Z0-9]+))*(@){1}[a-z0-9]+[.]{1}"
        r"(([a-z]{2,3})|([a-z]{2,3}[.]{1}[a-z]{2,3}))$",
        0,
        "match",
        "regexlib.com e-mail validator (OWASP ReDoS page)",
        None,
    ),
    (
        "regexlib-java-classname",
        r"^(([a-z])+.)+[A-Z]([a-z])+$",
        0,
        "match",
        "regexlib.com Java class name (OWASP ReDoS page)",
        None,
    ),
    (
        "regexlib-person-name",
        r"^[a-zA-Z]+(([\'\,\.\- ][a-zA-Z ])?[a-zA-Z]*)*$",
        0,
        "match",
        "regexlib.com person name",
        None,
    ),
    # -- safe reference patterns
    (
        "semver-org",
        r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
        r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
        r"(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
        r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$",
        0,
        "match",
        "semver.org suggested regular expression",
        None,
    ),
    (
        "uuid-rfc4122",
        r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$",
        I_,
        "match",
        "RFC 4122 UUID",
        None,
    ),
    (
        "whatwg-email",
        r"^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
        r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*$",
        0,
        "match",
        "WHATWG HTML valid e-mail address",
        None,
    ),
    ("ipv4-dotted", r"^(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)$", 0,
     "match", "IPv4 dotted quad", None),
    ("iso-date", r"^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)?$",
     0, "match", "ISO 8601 date-time", None),
]


def _pep440() -> Entry:
    # packaging.version.VERSION_PATTERN, as PEP 440 appendix B publishes it.
    pattern = r"""
    v?
    (?:
        (?:(?P<epoch>[0-9]+)!)?                           # epoch
        (?P<release>[0-9]+(?:\.[0-9]+)*)                  # release segment
        (?P<pre>                                          # pre-release
            [-_\.]?
            (?P<pre_l>(a|b|c|rc|alpha|beta|pre|preview))
            [-_\.]?
            (?P<pre_n>[0-9]+)?
        )?
        (?P<post>                                         # post release
            (?:-(?P<post_n1>[0-9]+))
            |
            (?:
                [-_\.]?
                (?P<post_l>post|rev|r)
                [-_\.]?
                (?P<post_n2>[0-9]+)?
            )
        )?
        (?P<dev>                                          # dev release
            [-_\.]?
            (?P<dev_l>dev)
            [-_\.]?
            (?P<dev_n>[0-9]+)?
        )?
    )
    (?:\+(?P<local>[a-z0-9]+(?:[-_\.][a-z0-9]+)*))?       # local version
"""
    return (
        "pep440-version",
        r"^\s*" + pattern + r"\s*$",
        X | I_,
        "search",
        "PEP 440 appendix B / packaging.version.VERSION_PATTERN",
        None,
    )


ENTRIES.append(_pep440())


def _uap() -> list[Entry]:
    """uap-core's ReDoS fixes: each regex before and after, from regexes.yaml."""
    pairs = [
        (
            "e9a1c74",
            r"(HbbTV)/[0-9]+\.[0-9]+\.[0-9]+ \([^;]*; *(?:CUS:([^;]*)|([^;]+)) *; *([^;]*) *;.*;",
            r"(HbbTV)/[0-9]+\.[0-9]+\.[0-9]+ \([^;]{0,30}; {0,1}(?:CUS:([^;]*)|([^;]+)) {0,1};"
            r" {0,1}([^;]{0,30})",
        ),
        (
            "7d92a38",
            r"(HbbTV)/[0-9]+\.[0-9]+\.[0-9]+ \([^;]*; *(LG)E *; *([^;]*) *;[^;]*;[^;]*;\)",
            r"(HbbTV)/[0-9]+\.[0-9]+\.[0-9]+ \( {0,1};(LG)E {0,1};([^;]{0,30})",
        ),
        (
            "dd279cf",
            r"; *([^;/]+) Build[/ ]Huawei(MT1-U06|[A-Z]+\d+[^\);]+)[^\);]*\)",
            r"; *([^;/]+) Build[/ ]Huawei(MT1-U06|[A-Z]+\d+[^\);]+)\)",
        ),
        (
            "a679b13",
            r"\bSmartWatch *\( *([^;]+) *; *([^;]+) *;",
            r"\bSmartWatch {0,2}\( {0,2}([^;]+) {0,2}; {0,2}([^;]+) {0,2};",
        ),
        (
            "43db37e",
            r"(?:\/[A-Za-z0-9\.]+|) *([A-Za-z0-9 \-_\!\[\]:]*(?:[Aa]rchiver|[Ii]ndexer|[Ss]craper"
            r"|[Bb]ot|[Ss]pider|[Cc]rawl[a-z]*))/(\d+)(?:\.(\d+)(?:\.(\d+)|)|)",
            r"(?:\/[A-Za-z0-9\.]+|) {0,5}([A-Za-z0-9 \-_\!\[\]:]{0,50}(?:[Aa]rchiver|[Ii]ndexer"
            r"|[Ss]craper|[Bb]ot|[Ss]pider|[Cc]rawl[a-z]{0,50}))[/ ](\d+)(?:\.(\d+)(?:\.(\d+)|)|)",
        ),
        (
            "43db37e-2",
            r"((?:[A-z0-9]+|[A-z\-]+ ?|)(?: the |)(?:[Ss][Pp][Ii][Dd][Ee][Rr]|[Ss]crape"
            r"|[A-Za-z0-9-]*(?:[^C][^Uu])[Bb]ot|[Cc][Rr][Aa][Ww][Ll])[A-z0-9]*)"
            r"(?:(?:[ /]| v)(\d+)(?:\.(\d+)|)(?:\.(\d+)|)|)",
            r"((?:[A-z0-9]{1,50}|[A-z\-]{1,50} ?|)(?: the |)(?:[Ss][Pp][Ii][Dd][Ee][Rr]|[Ss]crape"
            r"|[Cc][Rr][Aa][Ww][Ll])[A-z0-9]{0,50})(?:(?:[ /]| v)(\d+)(?:\.(\d+)|)(?:\.(\d+)|)|)",
        ),
        (
            "24f0d5c",
            r"(tvOS)(?:/| )(\d+).(\d+)(?:\.(\d+))?",
            r"(tvOS)(?:/| )(\d+).(\d+)(?:\.(\d+)|)",
        ),
        (
            "6e65445-cfnetwork",
            r"^(.*)/(\d+)(?:\.(\d+)|)(?:\.(\d+)|)(?:\.(\d+)|) CFNetwork",
            r"^(.{0,200})/(\d+)(?:\.(\d+)|)(?:\.(\d+)|)(?:\.(\d+)|) CFNetwork",
        ),
        (
            "6e65445-creativecloud",
            r"AppleWebKit/\d+\.\d+.* Safari.* (CreativeCloud)/(\d+)\.(\d+).(\d+)",
            r"AppleWebKit/\d{1,10}\.\d{1,10}.{0,200} Safari.{0,200}"
            r" (CreativeCloud)/(\d+)\.(\d+).(\d+)",
        ),
        (
            "6e65445-instagram",
            r"Mozilla.*Mobile.*(Instagram).(\d+)\.(\d+)\.(\d+)",
            r"Mozilla.{1,200}Mobile.{1,100}(Instagram).(\d+)\.(\d+)\.(\d+)",
        ),
        (
            "6e65445-opera-mobi",
            r"(Opera)/.+Opera Mobi.+Version/(\d+)\.(\d+)",
            r"(Opera)/.{1,100}Opera Mobi.{1,100}Version/(\d+)\.(\d+)",
        ),
        (
            "6e65445-gsa",
            r"Mozilla.+Android.+(GSA)/(\d+)\.(\d+)\.(\d+)",
            r"Mozilla.{1,200}Android.{1,200}(GSA)/(\d+)\.(\d+)\.(\d+)",
        ),
        (
            "6e65445-iphone-safari",
            r"(iPod|iPhone|iPad).+Version/(\d+)\.(\d+)(?:\.(\d+)|).*[ +]Safari",
            r"(iPod|iPhone|iPad).{1,200}Version/(\d+)\.(\d+)(?:\.(\d+)|).{1,200}[ +]Safari",
        ),
        (
            "6e65445-applenews",
            r"(iPod|iPod touch|iPhone|iPad);.*CPU.*OS[ +](\d+)_(\d+)(?:_(\d+)|)"
            r".* AppleNews\/\d+\.\d+\.\d+?",
            r"(iPod|iPod touch|iPhone|iPad);.{0,30}CPU.{0,30}OS[ +](\d+)_(\d+)(?:_(\d+)|).{0,30}"
            r" AppleNews\/\d+\.\d+(?:\.\d+|)",
        ),
        (
            "6e65445-hbbtv-year",
            r"HbbTV/\d+\.\d+\.\d+ \(.*; ?([a-zA-Z]+) ?;.*(201[1-9]).*\)",
            r"HbbTV/\d+\.\d+\.\d+ \(.{0,30}; ?([a-zA-Z]+) ?;.{0,30}(201[1-9]).{0,30}\)",
        ),
        (
            "6e65445-foobar",
            r"^(foobar)\S+/([^.\s]+)\.([^.\s]+|)\.?([^.\s]+|)",
            r"^(foobar)\S{1,10}/(\d+)\.(\d+|)\.?([\da-z]+|)",
        ),
        (
            "6e65445-citrix",
            r"(x86_64|aarch64)\ (\d+)\.(\d+)\.(\d+).*Chrome.*(?:CitrixChromeApp)$",
            r"(x86_64|aarch64)\ (\d+)\.(\d+)\.(\d+).{0,100}Chrome.{0,100}(?:CitrixChromeApp)$",
        ),
        (
            "6e65445-macosx",
            r"\w+\s+Mac OS X\s+\w+\s+(\d+).(\d+).(\d+).*",
            r"Mac OS X\s.{1,50}\s(\d+).(\d+).(\d+)",
        ),
        (
            "6e65445-iphone-macosx",
            r"(iPhone|iPad|iPod).*Mac OS X.*Version/(\d+)\.(\d+)",
            r"(iPhone|iPad|iPod).{0,100}Mac OS X.{0,100}Version/(\d+)\.(\d+)",
        ),
        (
            "6e65445-arcgis",
            r"ArcGIS\.?(iOS|Android)-\d+\.\d+(?:\.\d+|)(?:[^\/]+|)\/(\d+)(?:\.(\d+)(?:\.(\d+)|)|)",
            r"ArcGIS\.?(iOS|Android)-\d+\.\d+(?:\.\d+|)(?:[^\/]{1,50}|)\/(\d+)(?:\.(\d+)(?:\.(\d+)|)|)",
        ),
        (
            "6e65445-juc",
            r"^(JUC).*; ?U; ?(?:Android|)(\d+)\.(\d+)(?:[\.\-]([a-z0-9]+)|)",
            r"^(JUC).{0,200}; ?U; ?(?:Android|)(\d+)\.(\d+)(?:[\.\-]([a-z0-9]{1,100})|)",
        ),
        (
            "6e65445-fbav",
            r"\[FB.*;(FBAV)/(\d+)(?:\.(\d+)|)(?:\.(\d+)|)",
            r"\[FB.{0,300};(FBAV)/(\d+)(?:\.(\d+)|)(?:\.(\d+)|)",
        ),
    ]
    out: list[Entry] = []
    for commit, old, new in pairs:
        name = commit
        src = UAP + commit.partition("-")[0]
        out.append((f"uap-{name}-old", old, 0, "search", src + "^ regexes.yaml", None))
        out.append((f"uap-{name}-fixed", new, 0, "search", src + " regexes.yaml", None))
    return out


ENTRIES.extend(_uap())


def pairs() -> dict[str, str]:
    """id of a fixed/old entry -> id of its partner (shares attacks for labelling)."""
    ids = {e[0] for e in ENTRIES}
    out: dict[str, str] = {}
    for i in ids:
        for a, b in (("-old", "-fixed"), ("-fixed", "-old")):
            if i.endswith(a) and i[: -len(a)] + b in ids:
                out[i] = i[: -len(a)] + b
    return out


def as_dicts() -> list[dict[str, Any]]:
    return [
        {"id": i, "pattern": p, "flags": f, "call": c, "source": s, "attack": a}
        for i, p, f, c, s, a in ENTRIES
    ]


LABELS_FILE = Path(__file__).parent / "data" / "redos_labels.json"
FOUND = {"GP101", "GP102"}  # lint's confirmed dangers


def labels() -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = json.loads(LABELS_FILE.read_text())
    return data


def module_source(entry: Entry, style: str) -> str:
    """A guard module calling ``re`` the way the entry's project did: the pattern
    inline in the call, or held in a module constant and compiled once."""
    _ident, pattern, flags, call, _source, _attack = entry
    if style == "inline":
        return f"import re\n\n\ndef check(s, ctx):\n    return re.{call}({pattern!r}, s, {flags})\n"
    return (
        "import re\n\n"
        f"PATTERN = {pattern!r}\n"
        f"FLAGS = {flags}\n"
        "RX = re.compile(PATTERN, FLAGS)\n\n\n"
        f"def check(s, ctx):\n    return RX.{call}(s)\n"
    )


def write_modules(directory: Path, styles: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """One module per entry and style in ``directory``: module name -> (entry id, style)."""
    names = {}
    for n, entry in enumerate(ENTRIES):
        for style in styles:
            name = f"redos_corpus_{style}_{n}"
            (directory / f"{name}.py").write_text(module_source(entry, style))
            names[name] = (entry[0], style)
    return names


def rates(found: dict[str, bool], label: dict[str, str]) -> tuple[int, int, int, int]:
    """(vulnerable found, vulnerable, safe flagged, safe)."""
    vulnerable = [i for i, v in label.items() if v == "vulnerable"]
    safe = [i for i, v in label.items() if v == "safe"]
    return (
        sum(found.get(i, False) for i in vulnerable),
        len(vulnerable),
        sum(found.get(i, False) for i in safe),
        len(safe),
    )
