"""PEP 440 / 503 / 508 helpers: the specifications decide, `packaging` checks.

wetlite follows the specifications (PEP 440, 503, 508, 685 and their living
versions, "Version specifiers" and "Dependency specifiers" on
packaging.python.org).  Most tests generate thousands of cases
deterministically (seeded random and itertools) and compare wetlite's answer
with that of the `packaging` release pinned in requirements-test.txt, which
is what pip uses.  Where packaging releases disagree with each other or with
the specifications, DECISIONS below records what wetlite does and why; those
cases are checked by explicit expectations that need no packaging at all.

Drift: test_drift_from_installed_packaging compares every corpus with whatever
packaging is installed and fails on any difference that no decision explains;
with WETLITE_TEST_PACKAGING_LATEST=1 (and the newest packaging installed in a
venv) it also prints every difference, labelled with its decision.
"""
import itertools
import os
import random
import re

import pytest

from conftest import REPO, needs, wetlite

try:
    import packaging
    import packaging.markers
    import packaging.requirements
    import packaging.specifiers
    import packaging.utils
    import packaging.version
except ImportError:  # pragma: no cover
    packaging = None


def _pinned_version(name):
    """The version requirements-test.txt pins `name` to, or None."""
    with open(os.path.join(REPO, "requirements-test.txt")) as f:
        for line in f:
            match = re.match(r"\s*%s\s*==\s*([^\s;#]+)" % re.escape(name), line, re.I)
            if match:
                return match.group(1)
    return None


PINNED = _pinned_version("packaging")
INSTALLED = getattr(packaging, "__version__", None)
needs_pinned_packaging = needs(
    INSTALLED is not None and INSTALLED == PINNED,
    "comparison tests need packaging==%s (requirements-test.txt); installed: %s" % (PINNED, INSTALLED))

Version = getattr(getattr(packaging, "version", None), "Version", None)


class _Error(object):
    """Stands for "raised ValueError" when comparing outcomes."""

    def __repr__(self):
        return "ERROR"


ERROR = _Error()


def _outcome(function, *args, **kwargs):
    """function(...)'s result, or ERROR if it raised a ValueError."""
    try:
        return function(*args, **kwargs)
    except ValueError:
        return ERROR


# -- decisions ---------------------------------------------------------------
#
# Where packaging 26.0 to 26.4 disagree (with each other, or all with the
# specifications), wetlite does what the specifications say.  Each decision
# names the releases that answer differently, says which compared inputs it
# covers (so the comparison tests and the drift report can tell a decided
# difference from a regression), and gives examples with wetlite's answer.

def _clause_versions(text, operator):
    """The version texts of every `operator` clause in `text`."""
    pattern = r"(?<![<>=!~])%s\s*([^\s,;)]+)" % re.escape(operator)
    return re.findall(pattern, text)


def _any_version(texts, test):
    return any(_outcome(wetlite._parse_version, t) is not ERROR and test(wetlite._parse_version(t))
               for t in texts)


def _compares(side, kind, text):
    """True if the marker in `text` compares two operands of kind `side` ("var", "str")."""
    if kind == "requirement":
        requirement = _outcome(wetlite._parse_requirement, text)
        text = None if requirement is ERROR else requirement["marker"]
    parsed = _outcome(wetlite._parse_marker, text) if text else ERROR
    if parsed is ERROR:
        return False

    def walk(expression):
        for part in expression:
            if isinstance(part, list) and walk(part):
                return True
            if isinstance(part, tuple) and part[0][0] == part[2][0] == side:
                return True
        return False
    return walk(parsed)


class Decision(object):
    def __init__(self, name, reason, releases, covers, examples):
        self.name = name
        self.reason = reason            # one line: why, from which text of the specification
        self.releases = releases        # the packaging releases that answer otherwise
        self.covers = covers            # covers(kind, text): is this difference one of ours?
        self.examples = examples        # [(kind, args, wetlite's answer)]


DECISIONS = [
    Decision(
        "empty-arbitrary-equality",
        "'===' needs a version: the grammar's `version` is one or more characters",
        ("26.0", "26.1", "26.2", "26.3"),
        lambda kind, text: re.search(r"===\s*($|[,;)])", text) is not None,
        [("specifier", ("===",), ERROR), ("specifier", (">=1.0, === ",), ERROR),
         ("requirement", ("foo===",), ERROR)]),
    Decision(
        "compatible-release-prefix",
        "~=V.N means >=V.N, ==V.*: a suffix is ignored for the prefix and the spelling does not count",
        ("26.0", "26.1", "26.2"),
        lambda kind, text: any(_outcome(wetlite._parse_version, v) is not ERROR
                               and str(wetlite._parse_version(v)) != v
                               for v in _clause_versions(text, "~=")),
        [("contains", ("~=1.0.0c.1", "1.0"), True), ("contains", ("~=1.0.0c.1", "1.1"), False),
         ("contains", ("~=v1.0", "1.5"), True), ("contains", ("~=1.0a.1", "1.3"), True),
         ("contains", ("~=1.0.c1", "1.9"), True), ("contains", ("~=1.4.5a4", "1.4.9"), True),
         ("contains", ("~=1.4.5a4", "1.5"), False)]),
    Decision(
        "no-trailing-newline",
        "only spaces and tabs are PEP 508 whitespace (the spec's 2025 fix: \\Z, not $); a URL holds none",
        ("26.0", "26.1", "26.2", "26.3"),
        lambda kind, text: "\n" in text,
        [("requirement", ("foo\n",), ERROR), ("requirement", ("foo>=1.0; os_name == 'posix'\n",), ERROR),
         ("requirement", ("foo @ https://e.org/foo.whl\n",), ERROR),
         ("marker", ('os_name == "posix"\n',), ERROR)]),
    Decision(
        "less-than-post-release",
        "<V must not allow a pre-release *of V*; 1.0a1 is a pre-release of 1.0, not of 1.0.post1",
        ("26.0",),
        lambda kind, text: _any_version(_clause_versions(text, "<"), lambda v: v.is_postrelease),
        [("contains", ("<1.0.post1", "1.0a1"), True), ("contains", ("<1.0.post1", "1.0.post1.dev0"), False),
         ("contains", ("<1.0", "1.0a1"), False)]),
    Decision(
        "greater-than-own-post-and-local",
        ">V must not allow a post-release or local version *of V*; 1.0.post0 is not one of 1.0rc1, "
        "1.0.post1+abc not one of 1.0.post0",
        ("26.0",),
        lambda kind, text: _any_version(_clause_versions(text, ">"),
                                        lambda v: v.is_prerelease or v.is_postrelease),
        [("contains", (">1.0rc1", "1.0.post0"), True), ("contains", (">1.0rc1", "1.0+abc"), True),
         ("contains", (">1.0.post0", "1.0.post1+abc"), True),
         ("contains", (">1.0", "1.0.post0"), False), ("contains", (">1.0", "1.0+abc"), False)]),
    Decision(
        "arbitrary-equality-is-text",
        "=== is case-insensitive string equality, so ===1.0 does not match the spelling v1.0",
        ("26.0",),
        lambda kind, text: kind in ("contains", "filter") and "===" in text,
        [("filter", ("===1.0", ["v1.0", "1.0", "1.0.0"]), ["1.0"])]),
    Decision(
        "duplicate-clause-spelling",
        "the specifications define no normal form; of two equal clauses the first in sorted order stays",
        ("26.0",),
        lambda kind, text: kind == "specifier" and len({c.strip().lower() for c in text.split(",")})
        < len({c.strip() for c in text.split(",")}),
        [("specifier", ("==1.0+a,==1.0+A",), "==1.0+A")]),
    Decision(
        "nested-extra-names",
        "PEP 685: tools MUST normalize extra names when comparing, at any depth of parentheses",
        ("26.0", "26.1", "26.2"),
        lambda kind, text: "extra" in text and "(" in text,
        [("marker", ('(extra == "Test_X")',), 'extra == "test-x"'),
         ("evaluate", ('(extra == "Test_X")', {"extra": "test.x"}), True)]),
    Decision(
        "double-parentheses",
        "parentheses group (marker_expr = '(' marker ')'); dropping both pairs of ((a or b)) changes the meaning",
        ("26.0", "26.1", "26.2"),
        lambda kind, text: "((" in text.replace(" ", "").replace("\t", ""),
        [("marker", ('os_name == "a" and ((os_name == "b" or os_name == "c"))',),
          'os_name == "a" and (os_name == "b" or os_name == "c")')]),
    Decision(
        "variable-against-variable",
        "marker_expr is marker_var op marker_var and every env_var stands for its value; "
        "26.0-26.2 read `os_name` as the literal 'os-name', 26.3+ as its name",
        ("26.0", "26.1", "26.2", "26.3", "26.4"),
        lambda kind, text: _compares("var", kind, text),
        [("marker", ("extra == os_name",), "extra == os_name"),
         ("evaluate", ("extra == os_name", {"extra": "posix", "os_name": "posix"}), True),
         ("evaluate", ("extra == os_name", {"extra": "os_name", "os_name": "posix"}), False),
         ("evaluate", ("python_version >= python_full_version",
                       {"python_version": "3.9", "python_full_version": "3.9.1"}), False)]),
    Decision(
        "string-against-string",
        "the grammar allows two strings; they compare as strings (every release raises: no variable)",
        ("26.0", "26.1", "26.2", "26.3", "26.4"),
        lambda kind, text: _compares("str", kind, text),
        [("evaluate", ('"a" == "a"', {}), True), ("evaluate", ('"a" != "a"', {}), False)]),
]


def _ours(kind, *args):
    """wetlite's answer for one decision example."""
    if kind == "specifier":
        return _outcome(wetlite._normalize_specifier, *args)
    if kind == "contains":
        return wetlite._version_matches(*args)
    if kind == "filter":
        return wetlite._filter_versions(*args)
    if kind == "requirement":
        return _outcome(wetlite._parse_requirement, *args)
    if kind == "marker":
        return _outcome(wetlite._normalize_marker, *args)
    return _outcome(wetlite._evaluate_marker, *args)


@pytest.mark.parametrize("decision", DECISIONS, ids=lambda d: d.name)
def test_decision(decision):
    assert decision.reason and decision.releases
    # Some examples are contrasts that the decision does not cover.
    assert any(decision.covers(kind, args[0]) for kind, args, _ in decision.examples)
    for kind, args, expected in decision.examples:
        assert _ours(kind, *args) == expected, (decision.name, kind, args)


def _explained(kind, text, release):
    """The decisions that explain a difference from packaging `release`."""
    return [d.name for d in DECISIONS if release in d.releases and d.covers(kind, text)]


def _report(differences, total):
    """Fail, listing the first of `differences` (kind, input, ...) that no decision for the
    pinned packaging explains."""
    assert total > 0
    left = [d for d in differences if not _explained(d[0], d[1], PINNED)]
    assert not left, "%d of %d cases differ from packaging %s, e.g.:\n%s" % (
        len(left), total, PINNED, "\n".join(map(repr, left[:15])))


# -- generated corpora -------------------------------------------------------

RELEASES = [(0,), (0, 9), (1,), (1, 0), (1, 0, 0), (1, 0, 1), (1, 1),
            (1, 1, 0), (1, 2), (1, 2, 3), (1, 10), (2,), (2, 0, 1), (10, 0)]
PRES = [None, ("a", 0), ("a", 1), ("b", 2), ("rc", 1)]
POSTS = [None, 0, 1, 2]
DEVS = [None, 0, 1]
LOCALS = [None, ("abc",), (1,), ("ubuntu", 2), (1, "x")]


def _normalized(epoch, release, pre, post, dev, local):
    text = ".".join(map(str, release))
    if epoch:
        text = "%d!%s" % (epoch, text)
    if pre:
        text += "%s%d" % pre
    if post is not None:
        text += ".post%d" % post
    if dev is not None:
        text += ".dev%d" % dev
    if local:
        text += "+" + ".".join(map(str, local))
    return text


def _all_parts():
    return itertools.product([0, 1], RELEASES, PRES, POSTS, DEVS, LOCALS)


def _spell(rng, epoch, release, pre, post, dev, local):
    """A random non-normalized spelling PEP 440 accepts for the version."""
    seps = ["", ".", "-", "_"]
    text = rng.choice(["", "", "v", "V", " ", "\t"])
    if epoch or rng.random() < 0.1:
        text += "%d!" % epoch
    text += ".".join(rng.choice(["%d", "%d", "0%d"]) % part
                     for part in release)
    if pre:
        letter = rng.choice({"a": ["a", "alpha", "A", "Alpha"],
                             "b": ["b", "beta", "B"],
                             "rc": ["rc", "c", "pre", "preview", "RC"]}
                            [pre[0]])
        number = "" if pre[1] == 0 and rng.random() < 0.5 else str(pre[1])
        text += rng.choice(seps) + letter + (rng.choice(seps) if number
                                             else "") + number
    if post is not None:
        if post and rng.random() < 0.3:
            text += "-%d" % post
        else:
            number = "" if post == 0 and rng.random() < 0.5 else str(post)
            letter = rng.choice(["post", "rev", "r", "POST"])
            text += (rng.choice(seps) + letter
                     + (rng.choice(seps) if number else "") + number)
    if dev is not None:
        number = "" if dev == 0 and rng.random() < 0.5 else str(dev)
        text += (rng.choice(seps) + rng.choice(["dev", "DEV"])
                 + (rng.choice(seps) if number else "") + number)
    if local:
        text += "+" + "".join(
            (rng.choice(".-_") if i else "") + rng.choice(["%s", "%s", "0%s"])
            % (str(part).upper() if rng.random() < 0.2 else part)
            for i, part in enumerate(local))
    return text + rng.choice(["", "", " ", "\n"])


INVALID_VERSIONS = [
    "", " ", "1.", ".1", "1..0", "1.0+", "1.0+a..b", "1.0+a_", "foo",
    "1.0a1a1", "1!", "!1", "1.0.post1.post2", "1_0", "1.0-", "1.0 .1",
    "1.0.dev1.post1", "1.0-dev-1a", "1.0+ä", "\u0661.\u0660", "1.0c1c",
    "1.0 a1", "v", "vv1.0", "1.0+abc+def", "1.0pre.view", "01!", "1!v1",
    "1.0.*", "1.0a.b", "1.0-rc-1-", "1.0.0.0.0.0.x", "1.0\u00a0a1",
    "1.0a1.dev1.post1", "-1.0", "+1.0", "1.0.post-", "1.0+-a",
]


def _version_corpus(size, seed):
    rng = random.Random(seed)
    parts = list(_all_parts())
    corpus = [_normalized(*p) for p in rng.sample(parts, size)]
    corpus += [_spell(rng, *p) for p in rng.sample(parts, size)]
    return corpus + INVALID_VERSIONS


def _fuzz_strings(count, seed, alphabet="0123456789.!+-_abcdeilmoprstvwRPAV ",
                  length=10):
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet)
                    for _ in range(rng.randint(1, length)))
            for _ in range(count)]


# -- names -------------------------------------------------------------------

def test_canonical_name_known():
    assert wetlite._canonical_name("Django") == "django"
    assert wetlite._canonical_name("oslo.concurrency") == "oslo-concurrency"
    assert wetlite._canonical_name("A__b-._C") == "a-b-c"


# -- versions ----------------------------------------------------------------

def test_parse_version_known():
    v = wetlite._parse_version(" V1!01.2-C.3_r-4.DEV5+Ubuntu-01_x ")
    assert str(v) == "1!1.2rc3.post4.dev5+ubuntu.1.x"
    assert (v.epoch, v.release, v.pre, v.post, v.dev, v.local) == (
        1, (1, 2), ("rc", 3), 4, 5, ("ubuntu", 1, "x"))
    assert v.public == "1!1.2rc3.post4.dev5"
    assert v.base_version == "1!1.2"
    assert v.is_prerelease and v.is_postrelease
    assert str(wetlite._parse_version("1.0-1")) == "1.0.post1"
    assert str(wetlite._parse_version("1.0alpha")) == "1.0a0"
    assert wetlite._parse_version("1.0") == wetlite._parse_version("1.0.0")
    assert hash(wetlite._parse_version("1")) == hash(
        wetlite._parse_version("1.0.0"))
    with pytest.raises(ValueError, match="invalid version: 'nope'"):
        wetlite._parse_version("nope")


def test_version_order_known():
    ordered = ["1.0.dev0", "1.0a1.dev1", "1.0a1", "1.0a1.post1.dev1",
               "1.0a1.post1", "1.0b1", "1.0rc1", "1.0", "1.0+abc", "1.0+1",
               "1.0.post1.dev1", "1.0.post1", "1.1.dev1", "1!0.1"]
    parsed = [wetlite._parse_version(text) for text in ordered]
    assert sorted(reversed(parsed)) == parsed


# -- specifiers --------------------------------------------------------------

SPEC_VERSIONS = ["1", "1.0", "1.0.0", "1.1", "1.2.3", "2.0", "0.9", "1!1.0",
                 "1.0a1", "1.0b2", "1.0rc1", "1.0.post1", "1.0.post0",
                 "1.0.dev0", "1.0.dev1", "1.0a1.post1", "1.0a1.dev1",
                 "1.0.post1.dev1", "1.1.post2", "1.2.3rc1", "2.0.dev5"]
SPEC_SPELLINGS = ["v1.0", "1.0-1", "1.0.c1", "1.0c1", "1.0.pre1", "1.0.RC1",
                  "1.0.r1", "1.0rev", "1.0.0c.1", "1.0a.1", "V1.0",
                  "v1!1.0", "1.0.1c1", "1.0-c1", "1.0.C.1", "1.0.Post1",
                  "1.0.DEV1", "1.0.post", "1.0.preview.1.r.1"]
LOCAL_SPECS = ["1.0+abc", "1.0+1", "1.0.post1+abc", "1.0a1+x.1"]
WILDCARDS = ["1.*", "1.0.*", "1.0.0.*", "1.2.*", "0.*", "1!1.*", "v1.1.*",
             "2.0.*", "1.2.3.*"]
ARBITRARY = ["1.0", "foo", "1.0+abc", "1.0A1", "Foo", ""]


def _clauses():
    """Every operator with a spread of versions, valid and not."""
    clauses = []
    for operator in ("==", "!=", "<=", ">=", "<", ">", "~="):
        for text in SPEC_VERSIONS + SPEC_SPELLINGS:
            clauses.append(operator + text)
    for operator in ("==", "!="):
        clauses += [operator + text for text in LOCAL_SPECS + WILDCARDS]
    clauses += ["===" + text for text in ARBITRARY]
    # Invalid: wildcards/locals where not allowed, ~= with one number, junk.
    clauses += [">=1.0.*", "<1.0+abc", "~=1", "~=1.*", "==1.0.*.1",
                "=1.0", "=>1.0", "<>1.0", "==", ">=", "1.0", "==1.0a1.*",
                "== 1.0 .1", ">= foo", "===foo bar", "~=1.0+abc",
                "==1.0+", "!=1.*+abc", "===a;b", "===a)b"]
    return clauses


def _spec_sets(rng):
    clauses = _clauses()
    sets = [""] + clauses
    spacers = ["", " ", "  ", "\t"]
    for _ in range(100):
        picked = rng.sample(clauses, rng.randint(2, 3))
        sets.append(",".join(
            rng.choice(spacers) + (c[:2] + rng.choice(spacers) + c[2:]
                                   if rng.random() < 0.2 else c)
            + rng.choice(spacers) for c in picked))
    # Fuzzed clauses, mostly invalid, to probe the grammar of each operator.
    for text in _fuzz_strings(300, 12, "0123456789.!+-_*abcdeiloprstv ", 9):
        sets.append(rng.choice(("==", "!=", "<=", ">", "~=", "===")) + text)
    # Near-duplicates: packaging drops clauses equal to an earlier one.
    for _ in range(60):
        version = rng.choice(SPEC_VERSIONS + SPEC_SPELLINGS)
        operator = rng.choice(["==", "!=", ">=", "~=", "<"])
        twin = rng.choice(["v", ""]) + version + rng.choice(["", ".0"])
        sets.append("%s%s,%s%s" % (operator, version, operator, twin))
    sets += [",", " , ", ">=1.0,", ",>=1.0,,<2", ">=1.0,!=1.3.*,<2",
             "===a,===A", "==1.*,==1.0.*", "==1.0+a,==1.0+A",
             ">= 1.0 ,  != 1.3.*", ">=1.0\u3000,<2", ">=\u00a01.0"]
    return sets


def _candidates(rng):
    texts = ["1", "1.0", "1.0.0", "1.0.1", "0.9", "1.1", "1.2", "1.2.3",
             "2.0", "2.0.1", "1!1.0", "1.0a1", "1.0a2", "1.0b2", "1.0rc1",
             "1.0.dev0", "1.0.dev1", "1.0a1.dev1", "1.0a1.post1",
             "1.0.post0", "1.0.post1", "1.0.post1.dev1", "1.0.post2",
             "1.0+abc", "1.0+1", "1.0.post1+abc", "1.0a1+x.1", "1.1.post2",
             "1.1a1", "1.2.3rc1", "1.2.4.dev0", "1.3.0", "2.0.dev5",
             "1.0A1", "Foo", "foo", "not a version", "1.0.c1", "v1.0",
             "1.0+ABC", ""]
    texts += [_spell(rng, *p) for p in rng.sample(list(_all_parts()), 6)]
    return texts


@pytest.mark.parametrize("spec, version, prereleases, expected", [
    (">=1.0", "1.2", None, True),
    (">=1.0,!=1.3.*,<2", "1.3.5", None, False),
    (">=1.0,!=1.3.*,<2", "1.4", None, True),
    ("==1.0", "1.0+local", None, True),        # == without local: any local
    ("==1.0+a", "1.0+b", None, False),
    ("==1.*", "1.0a1", None, True),
    ("~=1.4.2", "1.4.9", None, True),
    ("~=1.4.2", "1.5", None, False),
    ("~=1.4", "1.9", None, True),
    (">1.0", "1.0.post1", None, False),        # unless the spec is a post
    (">1.0.post1", "1.0.post2", None, True),
    (">1.0", "1.0+local", None, False),
    ("<1.0", "1.0a1", None, False),            # unless the spec is a pre
    ("<1.0rc1", "1.0a1", None, True),
    ("<=1.0", "1.0+local", None, True),
    (">=1.0", "2.0a1", None, True),            # one candidate: pre is fine
    (">=1.0", "2.0a1", False, False),
    ("", "2.0a1", None, True),
    ("", "not a version", None, True),
    (">=1.0", "not a version", None, False),
    ("===foo", "FOO", None, True),
    ("===1.0", "1.0.0", None, False),
])
def test_version_matches_known(spec, version, prereleases, expected):
    assert wetlite._version_matches(spec, version, prereleases) is expected


def test_filter_versions_known():
    versions = ["1.0", "1.5", "2.0b1", "2.0"]
    assert wetlite._filter_versions(">=1.0", versions) == ["1.0", "1.5", "2.0"]
    assert wetlite._filter_versions(">=2.0b1", versions) == ["2.0b1", "2.0"]
    assert wetlite._filter_versions(">1.5", ["2.0b1"]) == ["2.0b1"]
    assert wetlite._filter_versions(">1.5", ["2.0b1"], False) == []
    assert wetlite._specifier_mentions_prerelease(">=1.0,<2.0rc1")
    assert not wetlite._specifier_mentions_prerelease("!=2.0rc1")


def test_invalid_specifier_known():
    for bad in ("=1.0", ">=1.0.*", "<1.0+local", "~=1", "1.0"):
        with pytest.raises(ValueError, match="invalid specifier"):
            wetlite._version_matches(bad, "1.0")


# -- requirements ------------------------------------------------------------

# (valid pieces, malformed pieces); malformed ones are picked 1 time in 10.
REQ_NAMES = (["foo", "Foo_Bar", "a", "x.y-z", "foo_", "A1"],
             ["-foo", "foo-", "fo o", "", "_a"])
REQ_EXTRAS = (["", "", "[]", "[a]", "[ a , B_c ]", "[b,a,b]", "[security]",
               "[ a ]", "[A.b-C]"],
              ["[a,]", "[a b]", "[a", "[,a]", "[a]]", "[-a]"])
REQ_SPECS = (["", "", ">=1.0", " >= 1.0", "==1.0.*", "~=1.4.2",
              " (>=1.0, <2)", "(>=1.0,<2)", ">=1.0,", "===foo",
              "!=1.0+local", "==1.0 ,!=1.0.1", "==v1.0", " ()",
              ">=1.0,,<2", ">= 1.0, ", "~=1.0.c1", "<2,>1.0.post1",
              "===1.0)", "==1.0preview1", ">=1.0rev1", "~=1.0.0rev",
              ">=1.0,>=1.0.0"],
             [">=1.0.*", ">1.0+abc", ">=1.0 <2", "(>=1.0", "===1,2", "=1",
              ">=1.0)", "(>=1.0))"])
REQ_URLS = ([" @ https://example.com/foo-1.0.tar.gz", "@file:///tmp/foo.whl",
             " @ git+https://x.org/foo.git@v1.0#egg=foo", "@ http://a/b;c"],
            [" @", "@ ", "@@x"])
REQ_MARKERS = (["", "", "; python_version >= '3.6'", ";os_name=='posix'",
                ' ; extra == "Test_X" and python_version < "4"',
                "; (os_name == 'nt' or sys_platform=='linux') and extra=='a'",
                "; os.name == 'posix'", "; 'a' in extra",
                ";python_version>'3'and(os_name=='x'or\tos_name=='y')"],
               ["; bogus == '1'", ";", "; python_version >= '3.6' or",
                " ; platform.release == 'x'", "; os_name = 'x'",
                "; os_name == 'x' garbage"])


def _pick(rng, choices):
    valid, malformed = choices
    return rng.choice(malformed if rng.random() < 0.1 else valid)


def _requirement_corpus(rng):
    corpus = []
    for _ in range(2500):
        details = _pick(rng, REQ_SPECS if rng.random() < 0.7 else REQ_URLS)
        marker = _pick(rng, REQ_MARKERS)
        if "@" in details and marker.startswith(";"):
            marker = rng.choice([" ", " ", "\t", ""]) + marker
        corpus.append(rng.choice(["", "", " ", "\t"]) + _pick(rng, REQ_NAMES)
                      + rng.choice(["", " "]) + _pick(rng, REQ_EXTRAS)
                      + details + marker + rng.choice(["", "", " ", "\n"]))
    # Single-character mutations of those: mostly malformed.
    for text in rng.sample(corpus, 800):
        i = rng.randrange(len(text) + 1)
        if rng.random() < 0.5 and text:
            text = text[:i] + text[i + 1:]
        else:
            text = text[:i] + rng.choice("[],;@ =<>!~.*+'\"\t\nx1") + text[i:]
        corpus.append(text)
    return corpus + ["", " ", "@", "foo @", "foo bar", "foo[a]]", "foo;",
                     "foo\n\n", "foo==1.0;os_name", "foo\n"]


def test_parse_requirement_known():
    assert wetlite._parse_requirement(
        "Foo_Bar [b, A] (>= 1.0, <2) ; python_version>'3.6'") == {
            "name": "Foo_Bar", "extras": ("A", "b"), "specifier": "<2,>=1.0",
            "url": None, "marker": 'python_version > "3.6"'}
    assert wetlite._parse_requirement(
        "pkg@ https://e.org/p.whl ; extra=='X_y'") == {
            "name": "pkg", "extras": (), "specifier": "",
            "url": "https://e.org/p.whl", "marker": 'extra == "x-y"'}
    for bad in ("foo >=1.0 <2", "foo @ https://e.org/p.whl; os_name=='nt'",
                "foo[a b]", "foo>=1.0.*", "(foo)", "foo; os_name"):
        with pytest.raises(ValueError, match="invalid requirement"):
            wetlite._parse_requirement(bad)


# -- markers -----------------------------------------------------------------

MARKER_VALUES = {
    "python_version": ["2.7", "3.6", "3.9", "3.11", "3.12", "3.*", "3.1*"],
    "python_full_version": ["3.9.18", "3.11.7+", "3.13.0rc1", "3.6.0"],
    "implementation_version": ["3.11.7", "7.3.13", "3.13.0b1"],
    "platform_release": ["5.15.0-91-generic", "10", "22.6.0", "6.1"],
    "os_name": ["posix", "nt"],
    "sys_platform": ["linux", "win32", "darwin"],
    "platform_system": ["Linux", "Windows"],
    "platform_machine": ["x86_64", "arm64", "AMD64"],
    "platform_version": ["#1 SMP", "10.0.19041"],
    "platform_python_implementation": ["CPython", "PyPy"],
    "implementation_name": ["cpython", "pypy"],
    "extra": ["", "test", "Test_X", "doc.s"],
}
MARKER_SPELLINGS = {"os_name": ["os_name", "os.name"],
                    "sys_platform": ["sys_platform", "sys.platform"],
                    "platform_machine": ["platform_machine",
                                         "platform.machine"],
                    "platform_version": ["platform_version",
                                         "platform.version"],
                    "platform_python_implementation": [
                        "platform_python_implementation",
                        "python_implementation"]}
MARKER_OPS = ["==", "!=", "<", "<=", ">", ">=", "~=", "===", "in", "not in",
              "not  in"]


VERSION_MARKERS = ("python_version", "python_full_version",
                   "implementation_version", "platform_release")


def _comparison(rng):
    """One marker comparison, variable on either side, spacing varied."""
    variable = rng.choice(sorted(MARKER_VALUES))
    value = rng.choice(MARKER_VALUES[variable] + ["3.1", "posix", "3", "x"])
    if variable == "extra" and rng.random() < 0.5:
        value = rng.choice(["Test_X", "TEST-x", "doc-s"])
    if variable in VERSION_MARKERS:
        op = rng.choice(MARKER_OPS)
    else:
        op = rng.choice(["==", "!=", "in", "not in", "==", "<"])
    quote = rng.choice("'\"")
    operands = [rng.choice(MARKER_SPELLINGS.get(variable, [variable])),
                quote + value + quote]
    if rng.random() < 0.3:
        operands.reverse()
    # Word operators need spaces around them; symbols need none.
    space = " " if op[0].isalpha() else rng.choice(["", " ", "  ", "\t"])
    return operands[0] + space + op + space + operands[1]


def _marker_expression(rng, depth=0):
    if depth > 2 or rng.random() < 0.4:
        atom = _comparison(rng)
    else:
        atom = _marker_expression(rng, depth + 1)
        for _ in range(rng.randint(1, 2)):
            atom += (rng.choice([" and ", " or ", "  and\t", " or  "])
                     + _marker_expression(rng, depth + 1))
    if depth and rng.random() < 0.5:
        atom = "(" + rng.choice(["", " "]) + atom + rng.choice(["", " "]) + ")"
        if rng.random() < 0.1:
            atom = "(" + atom + ")"
    return atom


def _marker_corpus(rng):
    corpus = [_marker_expression(rng) for _ in range(800)]
    for text in rng.sample(corpus, 300):
        i = rng.randrange(len(text) + 1)
        if rng.random() < 0.5:
            text = text[:i] + text[i + 1:]
        else:
            text = text[:i] + rng.choice("()'\" =<>!andor") + text[i:]
        corpus.append(text)
    return corpus + [
        'os_name == "a"and os_name == "b"', 'os_name=="a"andos_name=="b"',
        'python_version in "3.11 3.12"', 'extra == os_name', '"a" == "a"',
        'platform.release == "x"', 'os_name == "a\\x41"', "os_name == '\\'",
        'os_name == "posix"\n', 'dependency_groups == "x"', "os_name",
        'extras == "a"', 'python_version === "3.11"', 'os_name ~= "x"',
        'python_version == "3.11,3.12"', 'python_version === "3,11"', "",
        'os_name == sys_platform', '"posix" == os_name', '"3.1" < "3.2"',
        'python_version < python_full_version and os_name == "posix"']


def _random_environment(rng):
    env = {name: rng.choice(values) for name, values in MARKER_VALUES.items()
           if rng.random() < 0.8}
    if rng.random() < 0.1:
        env["extra"] = None
    return env


def test_marker_environment_for_target_python():
    env = wetlite._marker_environment("3.9")
    assert (env["python_version"], env["python_full_version"],
            env["implementation_version"]) == ("3.9", "3.9.0", "3.9.0")
    env = wetlite._marker_environment("3.13.0rc1")
    assert (env["python_version"], env["python_full_version"]) == (
        "3.13", "3.13.0rc1")
    assert wetlite._evaluate_marker('python_version < "3.10"', env) is False
    assert wetlite._evaluate_marker('python_version < "3.10"',
                                    wetlite._marker_environment("3.9.18"))
    with pytest.raises(ValueError):
        wetlite._marker_environment("three")


def test_evaluate_marker_known():
    env = {"python_version": "3.9", "os_name": "posix", "extra": "Test_X"}
    assert wetlite._evaluate_marker(
        'python_version >= "3.8" and (os_name == "nt" or extra == "test-x")',
        env)
    assert not wetlite._evaluate_marker('python_version > "3.10"', env)
    assert wetlite._evaluate_marker('python_version == "3.*"', env)
    assert wetlite._evaluate_marker('"3.1" in python_version', env) is False
    assert wetlite._evaluate_marker('extra == "test_x"', env)
    assert wetlite._evaluate_marker('"X" in extras', {"extras": {"x"}})
    assert not wetlite._evaluate_marker('extra == "test"')   # default ""
    # and binds tighter than or
    assert wetlite._evaluate_marker(
        'os_name == "posix" or os_name == "x" and os_name == "y"', env)
    for bad in ('os_name ~= "x"', 'os_name = "x"', 'unknown == "1"',
                '(os_name == "x"', 'os_name == "x" and'):
        with pytest.raises(ValueError):
            wetlite._evaluate_marker(bad, env)


def test_normalize_marker_known():
    assert wetlite._normalize_marker(
        "os.name=='posix'and(python_implementation!='PyPy')") == \
        'os_name == "posix" and platform_python_implementation != "PyPy"'
    # Extra names are normalized at any depth (PEP 685).
    assert wetlite._normalize_marker('(extra == "Test_X")') == \
        'extra == "test-x"'
    assert wetlite._evaluate_marker('(extra == "Test_X")', {"extra": "test.x"})
    # Parentheses that group keep their meaning.
    assert wetlite._normalize_marker(
        'os_name == "a" and ((os_name == "b" or os_name == "c"))') == \
        'os_name == "a" and (os_name == "b" or os_name == "c")'


# -- comparisons with packaging -------------------------------------------------
#
# Each _compare_* function returns (differences, total): every difference is a
# tuple (kind, input text, packaging's answer, wetlite's answer, ...).

def _compare_names():
    names = _fuzz_strings(3000, 1, "aZb9-_.Ä ", 8) + ["", "-", "a..b"]
    differences = [("name", name, packaging.utils.canonicalize_name(name), wetlite._canonical_name(name))
                   for name in names
                   if wetlite._canonical_name(name) != packaging.utils.canonicalize_name(name)]
    return differences, len(names)


def _compare_versions():
    corpus = (_version_corpus(1500, 2) + _fuzz_strings(4000, 3)
              + _fuzz_strings(1000, 4, "0123456789.-_+!abcdeiloprstv", 16))
    differences = []
    for text in corpus:
        try:
            expected = Version(text)
        except packaging.version.InvalidVersion:
            expected = None
        got = _outcome(wetlite._parse_version, text)
        if expected is None or got is ERROR:
            if (expected is None) != (got is ERROR):
                differences.append(("version", text, expected, got))
            continue
        local = None if got.local is None else ".".join(map(str, got.local))
        if (str(got), got.epoch, got.release, got.pre, got.post, got.dev,
                local, got.is_prerelease, got.is_postrelease, got.public,
                got.base_version) != (
                str(expected), expected.epoch, expected.release,
                expected.pre, expected.post, expected.dev, expected.local,
                expected.is_prerelease, expected.is_postrelease,
                expected.public, expected.base_version):
            differences.append(("version", text, str(expected), str(got)))
    return differences, len(corpus)


def _compare_ordering():
    rng = random.Random(5)
    texts = [_normalized(*p) for p in _all_parts()]
    texts += [_spell(rng, *p) for p in rng.sample(list(_all_parts()), 500)]
    theirs = sorted(texts, key=Version)
    ours = sorted(texts, key=wetlite._parse_version)
    # Equal versions may keep a different relative order, so compare the
    # sorted sequences by value.
    differences = []
    if [str(Version(t)) for t in ours] != [str(Version(t)) for t in theirs]:
        differences.append(("order", "sorted corpus", "packaging's order", "another order"))
    pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(3000)]
    pairs += [(a, b) for a in texts[:40] for b in texts[:40]]
    for a, b in pairs:
        pa, pb = Version(a), Version(b)
        wa, wb = wetlite._parse_version(a), wetlite._parse_version(b)
        if ((pa < pb, pa == pb, pa > pb, pa <= pb, pa != pb)
                != (wa < wb, wa == wb, wa > wb, wa <= wb, wa != wb)
                or (pa == pb) != (hash(wa) == hash(wb))):
            differences.append(("order", "%s <> %s" % (a, b), None, None))
    return differences, len(pairs)


def _compare_specifier_sets():
    rng = random.Random(6)
    differences = []
    sets = _spec_sets(rng)
    for text in sets:
        try:
            theirs = packaging.specifiers.SpecifierSet(text)
        except packaging.specifiers.InvalidSpecifier:
            theirs = None
        ours = _outcome(wetlite._normalize_specifier, text)
        if theirs is None:
            if ours is not ERROR:
                differences.append(("specifier", text, ERROR, ours))
            continue
        mentions = _outcome(wetlite._specifier_mentions_prerelease, text)
        if (ours, mentions) != (str(theirs), theirs.prereleases is True):
            differences.append(("specifier", text, (str(theirs), theirs.prereleases), (ours, mentions)))
    return differences, len(sets)


def _compare_contains():
    rng = random.Random(7)
    candidates = _candidates(rng)
    differences = []
    total = 0
    for text in _spec_sets(rng):
        try:
            theirs = packaging.specifiers.SpecifierSet(text)
        except packaging.specifiers.InvalidSpecifier:
            total += 1
            if _outcome(wetlite._version_matches, text, "1.0") is not ERROR:
                differences.append(("contains", text, ERROR, "valid"))
            continue
        for version in candidates:
            for prereleases in (None, True, False):
                total += 1
                expected = theirs.contains(version, prereleases=prereleases)
                got = _outcome(wetlite._version_matches, text, version, prereleases)
                if got != expected:
                    differences.append(("contains", text, expected, got, version, prereleases))
    return differences, total


def _compare_contains_parsed():
    rng = random.Random(8)
    versions = [text for text in _candidates(rng)
                if _outcome(Version, text) is not ERROR]
    differences = []
    total = 0
    for text in rng.sample(_spec_sets(rng), 150) + ["===1.0", "===1.0a1"]:
        try:
            theirs = packaging.specifiers.SpecifierSet(text)
        except packaging.specifiers.InvalidSpecifier:
            continue
        for version in versions:
            total += 1
            expected = theirs.contains(Version(version))
            got = _outcome(wetlite._version_matches, text, wetlite._parse_version(version))
            if got != expected:
                differences.append(("contains", text, expected, got, version))
    return differences, total


def _compare_filter():
    rng = random.Random(9)
    candidates = _candidates(rng)
    sets = [s for s in _spec_sets(rng)
            if _outcome(packaging.specifiers.SpecifierSet, s) is not ERROR]
    differences = []
    total = 0
    for text in rng.sample(sets, 200):
        theirs = packaging.specifiers.SpecifierSet(text)
        for _ in range(3):
            versions = rng.sample(candidates, rng.randint(0, 8))
            for prereleases in (None, True, False):
                total += 1
                expected = list(theirs.filter(versions, prereleases=prereleases))
                got = _outcome(wetlite._filter_versions, text, versions, prereleases)
                if got != expected:
                    differences.append(("filter", text, expected, got, versions, prereleases))
    return differences, total


def _compare_requirements():
    rng = random.Random(10)
    corpus = _requirement_corpus(rng)
    differences = []
    valid = 0
    for text in corpus:
        try:
            req = packaging.requirements.Requirement(text)
        except (ValueError, SyntaxError):
            # InvalidRequirement, InvalidSpecifier (a "===" version with a
            # comma) or SyntaxError (a bad escape in a marker string).
            expected = ERROR
        else:
            valid += 1
            expected = {
                "name": req.name, "extras": tuple(sorted(req.extras)),
                "specifier": str(req.specifier), "url": req.url,
                "marker": None if req.marker is None else str(req.marker)}
        got = _outcome(wetlite._parse_requirement, text)
        if got != expected:
            differences.append(("requirement", text, expected, got))
    assert valid > len(corpus) // 3
    return differences, len(corpus)


def _compare_markers():
    rng = random.Random(11)
    corpus = _marker_corpus(rng)
    differences = []
    total = 0
    for text in corpus:
        try:
            marker = packaging.markers.Marker(text)
        except (packaging.markers.InvalidMarker, SyntaxError):
            total += 1
            if _outcome(wetlite._normalize_marker, text) is not ERROR:
                differences.append(("marker", text, ERROR, wetlite._normalize_marker(text)))
            continue
        normal = _outcome(wetlite._normalize_marker, text)
        total += 1
        if normal != str(marker):
            differences.append(("marker", text, str(marker), normal))
        for env in [None] + [_random_environment(rng) for _ in range(5)]:
            total += 1
            try:
                expected = marker.evaluate(env)
            except (ValueError, KeyError, SyntaxError):
                expected = ERROR
            got = _outcome(wetlite._evaluate_marker, text, env)
            if got != expected:
                differences.append(("evaluate", text, expected, got, env))
    return differences, total


def _compare_marker_environment():
    theirs = packaging.markers.default_environment()
    ours = wetlite._marker_environment()
    return [("environment", key, theirs.get(key), ours.get(key))
            for key in sorted(set(theirs) | set(ours)) if theirs.get(key) != ours.get(key)], len(theirs)


COMPARISONS = [_compare_names, _compare_versions, _compare_ordering, _compare_specifier_sets,
               _compare_contains, _compare_contains_parsed, _compare_filter, _compare_requirements,
               _compare_markers, _compare_marker_environment]


@needs_pinned_packaging
@pytest.mark.parametrize("compare", COMPARISONS, ids=lambda f: f.__name__[len("_compare_"):])
def test_matches_pinned_packaging(compare):
    _report(*compare())


@needs(packaging is not None, "packaging is a test requirement (requirements-test.txt)")
def test_drift_from_installed_packaging(capsys):
    """Every difference from the installed packaging has a decision that explains it.

    It runs on every packaging (the pinned one in CI); with
    WETLITE_TEST_PACKAGING_LATEST=1 it also prints each difference, labelled.
    """
    release = INSTALLED
    explained, unexplained = {}, []
    for compare in COMPARISONS:
        for difference in compare()[0]:
            names = [d.name for d in DECISIONS if d.covers(difference[0], difference[1])]
            if names:
                explained.setdefault(", ".join(names), []).append(difference)
            else:
                unexplained.append(difference)
    lines = ["packaging %s (pinned: %s): %d differences explained by decisions, %d not"
             % (release, PINNED, sum(map(len, explained.values())), len(unexplained))]
    for names, items in sorted(explained.items()):
        lines.append("  decided (%s): %d, e.g. %r" % (names, len(items), items[0][:4]))
    lines.extend("  NOT DECIDED: %r" % (item,) for item in unexplained)
    if os.environ.get("WETLITE_TEST_PACKAGING_LATEST") == "1":
        with capsys.disabled():
            print("\n" + "\n".join(lines))
    assert not unexplained, "\n".join(lines)
