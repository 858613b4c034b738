"""code_tests and the bubblewrap sandbox: real bwrap, real processes, through the real pool.

Every escape attempt is a program whose test asserts that the escape worked: it scores 0 with a
named outcome, no process it started is alive afterwards, and the pool scores the next item.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from rlvr.rewards import check_answer_parsable
from rlvr.rewards.code import code_tests_reward, extract_program, parse_tests
from rlvr.sandbox import ProcessVerifier, RewardSpec, ScoreRequest, bubblewrap
from rlvr.sandbox.bubblewrap import Limits, SandboxUnavailable, cgroup_parents, probe, run_python

SECRET = "hunter2-not-for-models"
ADD_STDIO = json.dumps({"inputs": ["1 2\n", "3 4\n", "10 -3\n"], "outputs": ["3\n", "7\n", "7\n"]})
ADD_ASSERTS = json.dumps({"asserts": ["assert add(1, 2) == 3", "assert add(3, 4) == 7", "assert add(10, -3) == 7"]})


def fenced(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


def descendants(root: int) -> set[int]:
    """Every live process below ``root`` (zombies excluded), from the parent links in /proc."""
    children: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(p))
    found, todo = set(), [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in found:
                found.add(c)
                todo.append(c)
    return found


def wait_only(root: int, allowed: set[int], timeout: float = 5.0) -> set[int]:
    """The processes below ``root`` other than ``allowed``, once there are none or ``timeout`` passed."""
    t0 = time.monotonic()
    while (extra := descendants(root) - allowed) and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    return extra


# ---------------------------------------------------------------------------
# The reward, in both test shapes
# ---------------------------------------------------------------------------

PROGRAMS = {
    "correct_stdio": ("a, b = map(int, input().split())\nprint(a + b)", 1.0, "passed"),
    "wrong_stdio": ("a, b = map(int, input().split())\nprint(a * b if a == 1 else a + b)", 2 / 3, "wrong_answer"),
    "crash_stdio": ("raise SystemExit(3)", 0.0, "runtime_error"),
    "slow_stdio": ("import time\ntime.sleep(5)", 0.0, "timeout"),
    "loop_stdio": ("while True:\n    pass", 0.0, "timeout"),
    "syntax_stdio": ("def f(:\n    pass", 0.0, "compile_error"),
    # two failures: the outcome is the first failing test's (a crash), not the last's (a wrong answer)
    "crash_then_wrong_stdio": ("a, b = map(int, input().split())\nprint(a + b if a == 1 else 1 // (a - 3) if a == 3 else a * b)",
                               1 / 3, "runtime_error"),
}


def deadline_for(outcome: str) -> float:
    """A program that never ends times out under any deadline, once per test case: the shortest
    keeps those tests quick; the others keep a second for a loaded box."""
    return 0.3 if outcome == "timeout" else 1.0


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_stdio_tests(name):
    code, score, outcome = PROGRAMS[name]
    got = code_tests_reward(fenced(code), ADD_STDIO, timeout_s=deadline_for(outcome))
    assert got == {"score": pytest.approx(score), "outcome": outcome}


@pytest.mark.parametrize(
    "code,score,outcome",
    [
        ("def add(a, b):\n    return a + b", 1.0, "passed"),
        ("def add(a, b):\n    return 7", 2 / 3, "wrong_answer"),
        ("def add(a, b):\n    return {}[a]", 0.0, "runtime_error"),
        ("def add(a, b):\n    while True:\n        pass", 0.0, "timeout"),
        ("def add(a, b) return a + b", 0.0, "compile_error"),
        ("print(input())\ndef add(a, b):\n    return a + b", 0.0, "runtime_error"),  # no stdin in assert tests
        # reward hacks: ending the run before the test (a status of 0 used to be a pass)
        ("import os\nos._exit(0)", 0.0, "runtime_error"),
        ("import sys\nsys.exit(0)", 0.0, "runtime_error"),  # the test still runs: add is undefined
        ("import builtins, os, sys\nsys.exit = os._exit = builtins.exec = lambda *a, **k: None\ndef add(a, b):\n    return 7",
         2 / 3, "wrong_answer"),  # the harness calls its own exec and exit
        ("def add(a, b):\n    return a + b\nraise SystemExit(0)", 1.0, "passed"),  # ending itself is no failure either
    ],
)
def test_assert_tests(code, score, outcome):
    assert code_tests_reward(fenced(code), ADD_ASSERTS, timeout_s=deadline_for(outcome)) == {"score": pytest.approx(score), "outcome": outcome}


FRAME_TOKEN_HACK = """
import sys, os
frame = sys._getframe(1)
while frame is not None and "token" not in frame.f_locals:
    frame = frame.f_back
if frame is not None:
    os.write(frame.f_locals["report"], frame.f_locals["token"])
os._exit(0)
"""
# a test module that, imported in the harness's process, reports the judge's token as a pass
TOKEN_THIEF_MODULE = """
import sys, os
f = sys._getframe()
while f is not None and f.f_code.co_name != "judge":
    f = f.f_back
os.write(f.f_locals["report"], f.f_locals["token"])
os._exit(0)
"""
UNITTEST_MAIN_HACK = f"""
import os
open("/tmp/test_evil.py", "w").write({TOKEN_THIEF_MODULE!r})
zz_mod = type(os)("unittest.__main__")
def add(a, b):
    return 0
"""
PROC_HACK = """
import os
for pid in set(filter(str.isdigit, os.listdir("/proc"))) - {str(os.getpid())}:
    for what in ("fd/0", "mem"):
        try:
            with open(f"/proc/{pid}/{what}", "rb") as f:
                f.read(64)
            raise SystemExit(f"read /proc/{pid}/{what}")
        except OSError:
            pass
def add(a, b):
    return a + b
"""


@pytest.mark.parametrize(
    "code",
    [
        FRAME_TOKEN_HACK,  # the pass token, read from the harness's frame in the same process
        "class Yes:\n    __eq__ = lambda self, other: True\ndef add(a, b):\n    return Yes()",  # == that always says True
        "class Int(int):\n    __eq__ = lambda self, other: True\n    __hash__ = int.__hash__\ndef add(a, b):\n    return Int(0)",
        "import builtins\nbuiltins.AssertionError = KeyError\ndef add(a, b):\n    return 0",
        "import builtins\nbuiltins.__dict__['assert'] = None\n__builtins__['AssertionError'] = ZeroDivisionError\ndef add(a, b):\n    return 0",
        "TESTS = open('/sandbox/test.py').read()\ndef add(a, b):\n    return 0",  # the test is not in the sandbox's files
        "def abs(x):\n    return 0\ndef add(a, b):\n    return 0",  # a builtin the test calls, shadowed
        UNITTEST_MAIN_HACK,  # a module whose import ran the program's code in the test's process
    ],
    ids=["frame-token", "always-equal", "int-subclass-equal", "replaced-assertion", "replaced-builtins", "read-the-test", "shadowed-abs",
         "unittest-main"],
)
def test_a_program_cannot_forge_a_pass(code):
    """The test runs in the harness's process and the program in a child that cannot read it:
    arguments and results cross as plain data rebuilt on the test's side."""
    for tests in (ADD_ASSERTS, json.dumps({"test": "def check(candidate):\n    assert abs(candidate(2, 2) - 4) < 1e-6\n", "entry_point": "add"})):
        assert code_tests_reward(fenced(code), tests)["score"] == 0.0


def test_the_program_cannot_read_the_harness_under_proc():
    assert code_tests_reward(fenced(PROC_HACK), ADD_ASSERTS) == {"score": 1.0, "outcome": "passed"}


@pytest.mark.parametrize(
    "code,tests",
    [
        # programs that end themselves the usual ways (`-S` used to leave exit and quit undefined)
        ("a, b = map(int, input().split())\nprint(a + b)\nexit()", ADD_STDIO),
        ("def add(a, b):\n    return a + b\nquit()", ADD_ASSERTS),
        # the program's own objects, called and read through the pipe
        ("class Solution:\n    def add(self, a, b):\n        return a + b\ndef add(a, b):\n    return Solution().add(a, b)", ADD_ASSERTS),
        ("class Solution:\n    def add(self, a, b):\n        return [a + b, {'k': (a, b)}]", json.dumps({"asserts": [
            "s = Solution()\nassert s.add(1, 2) == [3, {'k': (1, 2)}]", "assert Solution().add(0, 0)[1]['k'] == (0, 0)"]})),
        ("def pairs(n):\n    for i in range(n):\n        yield (i, i * i)", json.dumps({"asserts": ["assert list(pairs(3)) == [(0, 0), (1, 1), (2, 4)]"]})),
        ("def f(x):\n    raise ValueError(x)", json.dumps({"asserts": ["try:\n    f(1)\n    assert False\nexcept ValueError:\n    pass"]})),
        ("import math\ndef root(x):\n    return math.sqrt(x)", json.dumps({"asserts": ["assert math.isclose(root(2.0), 2 ** 0.5)"]})),
        ("def big(n):\n    return 3 ** n, float('inf'), b'x', {1, 2}, frozenset(), None, -0.0, 1j",
         json.dumps({"asserts": ["assert big(200) == (3 ** 200, float('inf'), b'x', {1, 2}, frozenset(), None, -0.0, 1j)"]})),
    ],
    ids=["stdio-exit", "asserts-quit", "class-method", "nested-results", "generator", "expected-exception", "module", "plain-types"],
)
def test_right_programs_pass(code, tests):
    assert code_tests_reward(fenced(code), tests) == {"score": 1.0, "outcome": "passed"}


def test_a_program_s_stop_iteration_does_not_end_the_test_s_loop():
    """`all(map(is_even, xs))` was True for a program that only raised StopIteration: map took it for its end."""
    program = fenced("def is_even(n):\n    raise StopIteration")
    assert code_tests_reward(program, json.dumps({"asserts": ["assert all(map(is_even, [2, 4, 6]))"]}))["score"] == 0.0
    zipped = "def check(candidate):\n    for got, want in zip(map(candidate, [1, 2]), [False, True]):\n        assert got == want\n"
    assert code_tests_reward(program, json.dumps({"test": zipped, "entry_point": "is_even"}))["score"] == 0.0


def test_the_sandbox_s_pipes_cannot_be_opened_again():
    """bwrap's init holds the sandbox's stdin; where rlvr is not root it runs as the program's user,
    and a program that opened /proc/1/fd/0 raced the harness for the pass token. Each pipe's inode
    now has mode 0: usable as inherited, not openable anew (root inside has no capabilities)."""
    got = run_python("import os\nprint([oct(os.fstat(fd).st_mode & 0o777) for fd in (0, 1, 2)])", stdin=b"x")
    assert got.stdout.strip() == b"['0o0', '0o0', '0o0']", got


def test_a_program_cannot_interrupt_the_test():
    """The harness is pid 1, which takes only the signals it has a handler for: Python's SIGINT handler
    let the program raise KeyboardInterrupt in a test that caught BaseException after AssertionError."""
    test = "try:\n    assert f(1) == 2\nexcept AssertionError:\n    raise\nexcept BaseException:\n    pass"
    program = "import os, signal, time\ndef f(x):\n    os.kill(1, signal.SIGINT)\n    time.sleep(0.05)\n    return 0"
    assert code_tests_reward(fenced(program), json.dumps({"asserts": [test]}))["score"] == 0.0


def test_a_value_named_like_a_module_is_not_the_module():
    """`class math` with an isclose that says True stood in for the math module an MBPP-style test uses."""
    tests = json.dumps({"asserts": ["assert math.isclose(area(2), 12.566, rel_tol=0.001)"]})
    cheat = "class math:\n    @staticmethod\n    def isclose(*a, **k):\n        return True\ndef area(r):\n    return -1"
    assert code_tests_reward(fenced(cheat), tests)["score"] == 0.0
    right = "import math\ndef area(r):\n    return math.pi * r * r"
    assert code_tests_reward(fenced(right), tests) == {"score": 1.0, "outcome": "passed"}


def test_humaneval_s_entry_point_is_the_program_s_even_when_named_like_a_builtin():
    tests = json.dumps({"test": "def check(candidate):\n    assert candidate([3, 1]) == 1\n", "entry_point": "min"})
    assert code_tests_reward(fenced("def add(a, b):\n    return 0"), tests)["score"] == 0.0  # the builtin min would pass
    assert code_tests_reward(fenced("def min(xs):\n    return sorted(xs)[0]"), tests)["score"] == 1.0


def test_a_program_cannot_replace_a_helper_its_test_calls():
    """HumanEval/32 checks find_zero's answer with the prompt's own poly: a program's poly is not used."""
    prelude = "def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))"
    tests = json.dumps({"test": "def check(candidate):\n    assert abs(poly([1, 2], candidate([1, 2]))) < 1e-6\n",
                        "entry_point": "find_zero", "prelude": prelude})
    assert code_tests_reward(fenced("def find_zero(xs):\n    return -0.5"), tests)["score"] == 1.0
    cheat = "def poly(xs, x):\n    return 0\ndef find_zero(xs):\n    return 7"
    assert code_tests_reward(fenced(cheat), tests)["score"] == 0.0


def test_taco_rows_give_their_streams_as_lists_of_lines():
    tests = json.dumps({"inputs": [["1", "2"]], "outputs": [["3"]]})
    assert code_tests_reward(fenced("print(int(input()) + int(input()))"), tests) == {"score": 1.0, "outcome": "passed"}


def test_a_long_right_answer_is_not_cut_at_the_output_bound():
    lines = [f"{i}\n" for i in range(20_000)]  # 109 kB, past the 64 kB default bound
    tests = json.dumps({"inputs": ["20000\n"], "outputs": ["".join(lines)]})
    assert code_tests_reward(fenced("for i in range(int(input())):\n    print(i)"), tests)["outcome"] == "passed"


def test_modes_and_shapes():
    half = fenced("def add(a, b):\n    return 7")
    assert code_tests_reward(half, ADD_ASSERTS, mode="all")["score"] == 0.0
    assert code_tests_reward(fenced("def add(a, b):\n    return a + b"), ADD_ASSERTS, mode="all")["score"] == 1.0
    humaneval = json.dumps({"test": "def check(candidate):\n    assert candidate(2, 2) == 4\n", "entry_point": "add"})
    assert code_tests_reward(fenced("def add(a, b):\n    return a + b"), humaneval)["outcome"] == "passed"
    assert code_tests_reward(fenced("import os\nos._exit(0)"), humaneval) == {"score": 0.0, "outcome": "runtime_error"}
    trl_tests = ["assert add(1, 1) == 2"]  # a TRL row's tests column: a bare list of asserts
    assert code_tests_reward(fenced("def add(a, b):\n    return a + b"), json.dumps(trl_tests))["score"] == 1.0
    assert code_tests_reward("no code here", ADD_ASSERTS) == {"score": 0.0, "outcome": "compile_error"}
    with pytest.raises(ValueError, match="mode"):
        code_tests_reward(half, ADD_ASSERTS, mode="most")
    bare = "def add(a, b):\n    return a + b\n"  # a completion-style answer, no fence
    assert code_tests_reward(bare, ADD_ASSERTS)["outcome"] == "compile_error"
    assert code_tests_reward(bare, ADD_ASSERTS, program="whole") == {"score": 1.0, "outcome": "passed"}


def test_program_extraction():
    two = "```python\nprint(1)\n```\nbetter:\n```py\nprint(2)\n```\n```text\nnot code\n```"
    assert extract_program(two) == "print(2)\n"
    assert extract_program("```\nprint(3)\n```") == "print(3)\n"
    assert extract_program("print(4)") is None
    assert extract_program("```python3\nprint(5)\n```") == "print(5)\n"
    # an indented block (under a list item) loses its margin; a whitespace-only line of an unindented
    # block is left alone (textwrap.dedent emptied it, changing a string literal)
    assert extract_program("1. Code:\n   ```python\n   def f():\n       return 7\n   ```") == "def f():\n    return 7\n"
    assert extract_program('```python\ns = """a\n   \nb"""\n```') == 's = """a\n   \nb"""\n'
    # an assert suite tests what the program binds: a usage or output block after it is not the
    # program, but a final answer that binds the name another way (an import, a lambda) is
    solution_then_usage = "```python\ndef f():\n    return 8\n```\n```python\nprint(f())\n```\nOutput:\n```\n8\n```"
    assert extract_program(solution_then_usage) == "8\n"
    assert extract_program(solution_then_usage, defines=True) == "def f():\n    return 8\n"
    draft_then_final = "```python\ndef add(a, b):\n    return a - b\n```\nFinal:\n```python\nfrom operator import add\n```"
    assert extract_program(draft_then_final, defines=True) == "from operator import add\n"
    # drafts inside a reasoning model's thinking are not the answer; thinking cut short is no answer;
    # a tag inside the code is the program's own text
    assert extract_program("<think>```python\nprint(9)\n```</think>The answer:\n```python\nprint(10)\n```") == "print(10)\n"
    assert extract_program("<think>```python\nprint(9)\n```</think>I could not solve it.") is None
    assert extract_program("<think>let me draft:\n```python\nprint(9)\n```\nhmm") is None
    strip = "```python\ndef strip(s):\n    return s.replace('<think>', '')\n```"
    assert extract_program(strip) == "def strip(s):\n    return s.replace('<think>', '')\n"


def test_answers_shaped_as_models_write_them_are_scored_as_their_code():
    """A right function followed by its usage (`print(add(1, 2))`) or its output scored 0; a Counter,
    a namedtuple, an IntEnum or a 5,000-digit int returned by a right function scored 0 (a proxy
    compared by identity, or over JSON's int limit); `from __future__` after a prelude was a compile
    error. A subclass is compared as its base type's value, rebuilt on the test's side, and its
    methods, items and len stay the program's: its own `__eq__` (always True) cannot pass it, and a
    `__len__` that lies is seen as in plain Python."""
    add = "def add(a, b):\n    return a + b\n"
    assert code_tests_reward(fenced(add) + "\nUsage:\n" + fenced("print(add(1, 2))"), ADD_ASSERTS)["score"] == 1.0
    assert code_tests_reward(fenced(add) + "\nOutput:\n```\n3\n```", ADD_ASSERTS)["score"] == 1.0
    returns = {
        "from collections import Counter\ndef f(s):\n    return Counter(s)": "assert f('aab') == {'a': 2, 'b': 1}",
        "from collections import namedtuple\nP = namedtuple('P', 'x y')\ndef f():\n    return P(1, 2)": "assert f() == (1, 2)",
        "from enum import IntEnum\nclass E(IntEnum):\n    A = 3\ndef f():\n    return E.A": "assert f() == 3",
        "def f(n):\n    return 10 ** n + 1": "assert f(4400) == 10 ** 4400 + 1",  # past json's 4,300 digits
    }
    for program, test in returns.items():
        assert code_tests_reward(fenced(program), json.dumps([test]), timeout_s=10.0) == {"score": 1.0, "outcome": "passed"}, program
    import sys

    assert sys.get_int_max_str_digits() != 0  # lifted in the sandbox's harness only, not in this process (it broke a tool-call test)
    methods = {
        "from collections import Counter\ndef f(s):\n    return Counter(s)": "assert f('aab').most_common(1) == [('a', 2)]",
        "from collections import namedtuple\nP = namedtuple('P', 'x y')\ndef f():\n    return P(1, 2)": "assert f().x == 1",
        "from collections import defaultdict\ndef f():\n    return defaultdict(int)": "assert f()['z'] == 0",
        "class Stack(list):\n    def push(self, x):\n        self.append(x)\n    def peek(self):\n        return self[-1]":
            "s = Stack()\ns.push(4)\nassert s.peek() == 4 and len(s) == 1 and 4 in s and s == [4]",
    }
    for program, test in methods.items():
        assert code_tests_reward(fenced(program), json.dumps([test]), timeout_s=10.0) == {"score": 1.0, "outcome": "passed"}, program
    liar = "class L(list):\n    def __iter__(self):\n        return iter([1, 2])\n    def __eq__(self, other):\n        return True\ndef f():\n    return L([9])"
    assert code_tests_reward(fenced(liar), json.dumps(["assert f() == [1, 2]"]))["outcome"] == "wrong_answer"
    lying_len = "class V(list):\n    def __len__(self):\n        return 99\ndef f():\n    return V([1, 2, 3])"
    assert code_tests_reward(fenced(lying_len), json.dumps(["assert len(f()) == 3"]))["outcome"] == "wrong_answer"
    # truth is the program's (an IntEnum's is int's); arithmetic, str and format use the base value
    values = {
        "from enum import IntEnum\nclass B(IntEnum):\n    NO = 0\n    YES = 1\ndef is_even(n):\n    return B(n % 2 == 0)":
            "assert is_even(4) and not is_even(3) and is_even(4) + 1 == 2",
        "class F(float):\n    pass\ndef half(x):\n    return F(x / 2)": "assert abs(half(3) - 1.5) < 1e-9 and f'{half(3):.1f}' == '1.5'",
        "class S(str):\n    pass\ndef up(s):\n    return S(s.upper())": "assert up('ab') + '!' == 'AB!' and str(up('ab')) == 'AB'",
    }
    for program, test in values.items():
        assert code_tests_reward(fenced(program), json.dumps([test]), timeout_s=10.0) == {"score": 1.0, "outcome": "passed"}, program
    # members the program keeps apart by their own hash and eq do not merge into the expected set
    merging = "class K(int):\n    __hash__ = object.__hash__\n    __eq__ = object.__eq__\nclass S(set):\n    pass\ndef uniq(xs):\n    return S(K(x) for x in xs)"
    assert code_tests_reward(fenced(merging), json.dumps(["assert uniq([1, 2, 2, 3]) == {1, 2, 3}"]))["score"] == 0.0
    future = json.dumps({"asserts": ["assert g(2) == 4"], "prelude": "import math"})
    assert code_tests_reward(fenced("from __future__ import annotations\ndef g(x: int) -> int:\n    return x * 2"), future)["score"] == 1.0
    documented = '"""Doubles."""\nfrom __future__ import (annotations,\n    division)\ndef g(x: int) -> int:\n    return x * 2'
    assert code_tests_reward(fenced(documented), future)["score"] == 1.0
    form_feed = "\x0c\nfrom __future__ import annotations\ndef g(x: int) -> int:\n    return x * 2"  # lines as the tokenizer counts them
    assert code_tests_reward(fenced(form_feed), future)["score"] == 1.0


def test_bad_test_specs_are_named():
    for spec, match in [
        ("not json", "not JSON"),
        ('{"inputs": ["1"], "outputs": []}', "same length"),
        ('{"inputs": ["1"], "outputs": ["1"], "fn_name": "f"}', "call-based"),
        ('{"asserts": []}', "non-empty"),
        ('{"x": 1}', "unknown code test shape"),
        ('{"asserts": ["assert add(1, 2) == 3", "assert add(1,"]}', "test 1 does not compile"),  # was every program's runtime_error
        ('{"asserts": ["assert f()"], "prelude": "def ("}', "prelude does not compile"),
        ('{"inputs": [3], "outputs": ["3"]}', "must be a string or a list of lines"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_tests(spec)
        assert match.split()[0] in check_answer_parsable(spec, "code")
    assert check_answer_parsable(ADD_STDIO, "code") is None


# ---------------------------------------------------------------------------
# The walls, one execution at a time
# ---------------------------------------------------------------------------


def test_limits_and_isolation_of_one_execution(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_TEST_SECRET", SECRET)
    (tmp_path / "run_secret.txt").write_text("checkpoint")
    probe()
    env = run_python("import os\nprint(dict(os.environ), open('/proc/1/environ').read(), os.getuid())")
    assert env.status == "exited" and SECRET.encode() not in env.stdout and env.stdout.strip().endswith(b"65534")
    for path in [str(tmp_path / "run_secret.txt"), "/etc/shadow", os.path.expanduser("~/.ssh"), os.getcwd()]:
        got = run_python(f"import os\nprint(os.listdir({path!r}) if os.path.isdir({path!r}) else open({path!r}).read())")
        assert got.status == "exited" and got.returncode == 1 and b"FileNotFoundError" in got.stderr, path
    assert run_python("open('/usr/pwned', 'w')").stderr.rstrip().endswith(b"Read-only file system: '/usr/pwned'")
    big = run_python("print('x' * (100 << 20))", limits=Limits(memory_mb=512))
    assert big.status == "output_limit" and len(big.stdout) == Limits().output_bytes
    assert run_python("while True:\n    pass", limits=Limits(wall_s=0.3)).status == "timeout"
    disk = run_python("f = open('/tmp/fill', 'wb')\nwhile True:\n    f.write(b'x' * (1 << 20))\n    f.flush()")
    assert disk.returncode == 1 and b"File too large" in disk.stderr or b"No space left" in disk.stderr
    assert wait_only(os.getpid(), set()) == set()


def test_the_program_holds_no_capability_and_cannot_gain_one():
    """Whatever uid the sandbox runs as, every capability set is empty and no setuid binary can raise it."""
    got = run_python("print(''.join(l for l in open('/proc/self/status') if l.startswith(('Cap', 'NoNewPrivs'))))")
    assert got.status == "exited" and got.returncode == 0, got.stderr
    fields = dict(line.split(":\t") for line in got.stdout.decode().split("\n") if ":\t" in line)
    assert fields == {"CapInh": "0" * 16, "CapPrm": "0" * 16, "CapEff": "0" * 16, "CapBnd": "0" * 16, "CapAmb": "0" * 16,
                      "NoNewPrivs": "1"}


def test_each_execution_s_cgroups_carry_its_limits():
    """The memory bound counts the program's /tmp too (a tmpfs's pages are charged to it), without swap;
    the process bound is `processes`. Both cgroup layouts, v1's two hierarchies and v2's unified one."""
    limits = Limits(memory_mb=300, file_mb=20, processes=7)
    assert bubblewrap._cgroup_limits("/sys/fs/cgroup/rlvr-sandbox", limits) == [
        ("memory.max", str(320 << 20)), ("memory.swap.max", "0"), ("pids.max", "7")]
    assert bubblewrap._cgroup_limits("/sys/fs/cgroup/memory/rlvr-sandbox", limits) == [
        ("memory.limit_in_bytes", str(320 << 20)), ("memory.memsw.limit_in_bytes", str(320 << 20))]
    assert bubblewrap._cgroup_limits("/sys/fs/cgroup/pids/rlvr-sandbox", limits) == [("pids.max", "7")]
    if not cgroup_parents():
        return  # not root, or no writable cgroupfs: the layouts above are all there is to check here
    made = bubblewrap._make_cgroups(limits)
    try:
        written = {name: open(os.path.join(d, name)).read().strip() for d in made
                   for name, _ in bubblewrap._cgroup_limits(os.path.dirname(d), limits) if os.path.exists(os.path.join(d, name))}
    finally:
        bubblewrap._remove_cgroups(made)
    assert written.get("pids.max") == "7" and written.get("memory.limit_in_bytes", written.get("memory.max")) == str(320 << 20), written


WRITES = """
import os
for d in ["/", "/sandbox", "/dev", "/dev/shm", "/tmp"]:
    try:
        with open(os.path.join(d, "probe.bin"), "wb") as f:
            f.write(b"x" * (64 << 10))
        print(d, "written")
    except OSError as e:
        print(d, "refused", e.errno)
try:
    with open("/dev/shm/big.bin", "wb") as f:
        f.write(b"x" * (4 << 20))
except OSError as e:
    print("/dev/shm full", e.errno)
"""


def test_only_tmp_and_a_small_dev_shm_are_writable():
    """bwrap's root and /dev are tmpfs mounts of its own with no size: a program wrote 4 GB of the
    host's memory there. Now they are read-only (EROFS, 30); /dev/shm holds 1 MiB (ENOSPC, 28)."""
    got = run_python(WRITES, limits=Limits(wall_s=10.0))
    assert got.status == "exited" and got.returncode == 0, got.stderr
    assert got.stdout.decode().split("\n")[:6] == [
        "/ refused 30", "/sandbox refused 30", "/dev refused 30", "/dev/shm written", "/tmp written", "/dev/shm full 28"]


FORKS = """
import os, time
children = []
for _ in range(4):
    pid = os.fork()
    if pid == 0:
        held = bytearray(150 << 20)  # touched: resident, not just reserved
        time.sleep(1.0)
        os._exit(0)
    children.append(pid)
print(sum(os.waitpid(pid, 0)[1] == 0 for pid in children))
"""


@pytest.mark.skipif(not cgroup_parents(), reason="needs root and a writable cgroupfs (cgroup v1 memory+pids, or v2): the rlimits alone bound each process, not their sum")
def test_an_execution_s_processes_share_one_memory_bound():
    """RLIMIT_AS binds each process: four forks of 150 MB each held 600 MB in a 256 MB sandbox. The
    execution's cgroup bounds their sum (memory_mb + file_mb), so at most one of them survives."""
    got = run_python(FORKS, limits=Limits(wall_s=10.0, cpu_s=10.0, memory_mb=256))
    assert got.status == "exited" and int(got.stdout) <= 1, (got.stdout, got.stderr)
    assert wait_only(os.getpid(), set()) == set()


@pytest.mark.skipif(not cgroup_parents(), reason="needs root and a writable cgroupfs (cgroup v1 memory+pids, or v2)")
def test_dead_callers_cgroups_are_swept_during_a_run(monkeypatch):
    """A worker killed at its deadline (or retired mid-release) left `<pid>-<n>` cgroups that only the
    next zygote's start-up removed: one per timed-out item over a whole run."""
    import subprocess
    import sys

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    left = [os.path.join(parent, f"{dead}-7") for parent in cgroup_parents()]
    for path in left:
        os.mkdir(path)
    monkeypatch.setattr(bubblewrap, "STALE_SWEEP_EVERY", 1)
    assert run_python("print(1)").stdout == b"1\n"
    assert not any(os.path.exists(path) for path in left)


def test_a_stdio_program_does_not_outlive_a_killed_sandbox_without_cgroups(monkeypatch):
    """A stdio program that was pid 1 cleared the death signal bwrap gave it; in its own session,
    killing bwrap at the deadline left it and its forks running where no cgroup caught them
    (not root, or a read-only cgroupfs). The harness is pid 1 now, and its end is the namespace's."""
    import secrets

    monkeypatch.setattr(bubblewrap, "_cgroups_off", True)
    name = "lk" + secrets.token_hex(6)
    program = (
        "import ctypes, os, time\nlibc = ctypes.CDLL(None)\nlibc.prctl(1, 0, 0, 0, 0)\n"
        f"for _ in range(3):\n    if os.fork() == 0:\n        libc.prctl(1, 0, 0, 0, 0)\n        libc.prctl(15, b'{name}', 0, 0, 0)\n"
        "        time.sleep(60)\n        os._exit(0)\ntime.sleep(60)"
    )
    got = code_tests_reward(fenced(program), json.dumps({"inputs": ["1\n"], "outputs": ["2\n"]}), timeout_s=0.5)
    assert got["outcome"] == "timeout"

    def survivors() -> list[str]:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    if f.read().strip() == name:
                        found.append(pid)
            except OSError:
                pass
        return found

    deadline = time.monotonic() + 5
    while survivors() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = survivors()
    for pid in left:
        os.kill(int(pid), 9)
    assert left == []


def test_a_stdio_program_cannot_trace_its_harness():
    """The stdio harness (pid 1) is non-dumpable too: a program that ptraced it cleared pid 1's death
    signal and outlived a killed sandbox where no cgroup caught it (a fifth red-team round)."""
    program = ("import ctypes\ntraced = ctypes.CDLL(None, use_errno=True).ptrace(16, 1, None, None) == 0\n"
               "a, b = map(int, input().split())\nprint(0 if traced else a + b)")
    assert code_tests_reward(fenced(program), ADD_STDIO) == {"score": 1.0, "outcome": "passed"}


def test_no_core_dump_leaves_the_sandbox():
    """RLIMIT_CORE is 1: the one value a core_pattern pipe handler (run as root outside the sandbox)
    respects; 0 let a program that crashed hand its memory to one."""
    got = run_python("import resource\nprint(resource.getrlimit(resource.RLIMIT_CORE))")
    assert got.stdout.strip() == b"(1, 1)", got


def test_probe_names_the_fix_when_no_sandbox_can_start(monkeypatch):
    probe.cache_clear()
    monkeypatch.setattr(bubblewrap, "INTERPRETER", "/nonexistent/python3")
    with pytest.raises(SandboxUnavailable, match="lacks"):
        probe()
    probe.cache_clear()
    monkeypatch.setattr(bubblewrap, "INTERPRETER", "/usr/bin/python3")
    # a real bwrap that refuses to start (here: a mount it cannot make) is reported with the fix
    monkeypatch.setattr(bubblewrap, "_root_layout", lambda: ["--ro-bind", "/nonexistent-usr", "/usr"])
    with pytest.raises(SandboxUnavailable, match="user namespaces"):
        probe()
    probe.cache_clear()


# ---------------------------------------------------------------------------
# Escape attempts through the real pool
# ---------------------------------------------------------------------------


def escapes(targets: dict[str, int], tmp_path, port: int) -> dict[str, str]:
    """Programs defining attempt(), which returns True only if the escape worked."""
    secret_file = tmp_path / "run_secret.txt"
    return {
        "socket": f"import socket\ndef attempt():\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n    return True",
        "internet": "import socket\ndef attempt():\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    return True",
        "run_dir": f"def attempt():\n    return open({str(secret_file)!r}).read() == 'checkpoint'",
        "shadow": "def attempt():\n    return len(open('/etc/shadow').read()) > 0",
        "ssh_keys": "import os\ndef attempt():\n    return len(os.listdir('/root/.ssh')) >= 0",
        "parent_env": (
            "import os\ndef attempt():\n"
            f"    seen = str(os.environ) + ''.join(open(f'/proc/{{p}}/environ', errors='replace').read() "
            "for p in os.listdir('/proc') if p.isdigit())\n"
            f"    return {SECRET!r} in seen"
        ),
        "write_outside": "def attempt():\n    open('/usr/lib/pwned', 'w').write('x')\n    return True",
        "fork_bomb": "import os\ndef attempt():\n    while True:\n        os.fork()",
        "kill_parent": (
            "import os, signal, time\ndef attempt():\n    parent = os.getppid()\n    os.kill(parent, signal.SIGKILL)\n"
            "    time.sleep(0.2)\n    try:\n        os.kill(parent, 0)\n    except ProcessLookupError:\n        return True\n    return False"
        ),
        "kill_zygote": f"import os, signal\ndef attempt():\n    os.kill({targets['zygote']}, signal.SIGKILL)\n    return True",
        "ptrace": (
            "import ctypes\ndef attempt():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
            f"    return libc.ptrace(16, {targets['worker']}, None, None) == 0"
        ),
        # pid 1 is the harness (non-dumpable): its fds, the token's stdin among them, are not the program's to take
        "pidfd_getfd_pid1": (
            "import ctypes\ndef attempt():\n    libc = ctypes.CDLL(None, use_errno=True)\n    pidfd = libc.syscall(434, 1, 0)\n"
            "    return pidfd >= 0 and libc.syscall(438, pidfd, 0, 0) >= 0"
        ),
        "ptrace_pid1": "import ctypes\ndef attempt():\n    return ctypes.CDLL(None, use_errno=True).ptrace(16, 1, None, None) == 0",
        "fill_disk": "def attempt():\n    with open('/tmp/fill', 'wb') as f:\n        while True:\n            f.write(b'x' * (1 << 20))\n            f.flush()",
        # stderr: an assert-style test's stdout goes to /dev/null, stderr is read back (and bounded)
        "print_100mb": "import sys\ndef attempt():\n    sys.stderr.write('x' * (100 << 20))\n    return True",
    }


def test_escape_attempts_fail_and_leave_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_TEST_SECRET", SECRET)  # inherited by the zygote and its workers
    (tmp_path / "run_secret.txt").write_text("checkpoint")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    spec = RewardSpec("code_tests", kwargs={"timeout_s": 3.0, "memory_mb": 512})
    tests = json.dumps({"asserts": ["assert attempt()"]})
    with ProcessVerifier([spec], num_workers=1, timeout_s=30.0, memory_mb=2048) as v:
        targets = {"zygote": v.zygote_pid, "worker": v.worker_pids()[0]}
        table = escapes(targets, tmp_path, port)
        for name, code in table.items():
            results, _ = v.score([ScoreRequest(fenced(code), tests, "code")])
            r = results[0]
            assert r.error is None and r.reward == 0.0 and not r.correct, (name, r)
            assert r.outcome in ("runtime_error", "wrong_answer", "timeout"), (name, r)
            assert wait_only(targets["zygote"], set(v.worker_pids())) == set(), name
            # the zygote lives; the worker replied (r.error is None), so no escape killed it either
            assert v.zygote_pid == targets["zygote"] and os.path.exists(f"/proc/{targets['zygote']}"), name
        results, _ = v.score([ScoreRequest(fenced("def add(a, b):\n    return a + b"), ADD_ASSERTS, "code")] * 2)
        assert [(r.reward, r.outcome, r.correct) for r in results] == [(1.0, "passed", True)] * 2
    listener.close()
    assert not os.path.exists("/usr/lib/pwned")

# ---- found surviving mutants (2026-12-07): each fails with one wall, limit or check of the sandbox removed --


def test_cpu_limit_ends_a_busy_program_before_a_long_wall_deadline():
    """cpu_s binds on its own (a threaded program burns cpu_s x threads inside wall_s). The program is
    killed for its CPU, not at the wall deadline; how long 1 s of CPU takes on the wall depends on the
    box's load (5-13 s beside a CI run), so no tighter wall bound is asserted."""
    got = run_python("while True:\n    pass", limits=Limits(wall_s=15.0, cpu_s=1.0))
    assert got.status != "timeout" and got.returncode != 0 and got.wall_s < 15.0, got


def test_address_space_bounds_a_program_where_no_cgroup_does(monkeypatch):
    """Not root, or a read-only cgroupfs: RLIMIT_AS is the only memory bound."""
    monkeypatch.setattr(bubblewrap, "_cgroups_off", True)
    got = run_python("x = bytearray(600 << 20)\nprint('allocated')", limits=Limits(memory_mb=256, wall_s=10.0))
    assert b"allocated" not in got.stdout and b"MemoryError" in got.stderr, got


@pytest.mark.skipif(os.getuid() != 0, reason="RLIMIT_NPROC is set only when rlvr runs as root")
def test_process_limit_is_set_for_the_sandbox_user():
    got = run_python("import resource\nprint(resource.getrlimit(resource.RLIMIT_NPROC))", limits=Limits(processes=77))
    assert got.stdout.strip() == b"(77, 77)", got


def test_open_files_are_bounded():
    got = run_python("fs = []\ntry:\n    while True:\n        fs.append(open('/dev/null'))\nexcept OSError as e:\n    print(len(fs), e.errno)",
                     limits=Limits(open_files=64))
    n, errno = got.stdout.split()
    assert int(n) < 64 and int(errno) == 24, got


def test_no_zombie_is_left_after_an_execution():
    got = run_python("print(1)")
    assert got.returncode == 0
    zombies = []
    for tid in os.listdir("/proc/self/task"):
        for pid in open(f"/proc/self/task/{tid}/children").read().split():
            try:
                if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                    zombies.append(pid)
            except OSError:
                pass
    assert zombies == [] and got.status == "exited", (zombies, got)


def test_the_program_never_holds_the_token_s_stdin():
    """The docstring's promise: the child's stdin is /dev/null, so it cannot read the token or the test."""
    program = "import os, stat\ndef is_null():\n    return stat.S_ISCHR(os.fstat(0).st_mode)"
    tests = json.dumps({"asserts": ["assert is_null() is True"]})
    assert code_tests_reward(fenced(program), tests) == {"score": 1.0, "outcome": "passed"}


def test_a_right_program_that_prints_still_passes():
    program = "def add(a, b):\n    print('debugging', a, b)\n    return a + b"
    assert code_tests_reward(fenced(program), ADD_ASSERTS) == {"score": 1.0, "outcome": "passed"}


@pytest.mark.parametrize(
    "code",
    [
        # a dict subclass whose items() lies: compared as the dict's real contents
        "class D(dict):\n    def items(self):\n        return {3: 3}.items()\ndef add(a, b):\n    return D()",
        # a list subclass whose __iter__ lies
        "class L(list):\n    def __iter__(self):\n        return iter([3])\ndef add(a, b):\n    return L()",
        # an int subclass whose __int__ lies
        "class I(int):\n    def __int__(self):\n        return 3\n    def __eq__(self, o):\n        return True\n    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return I(0)",
    ],
    ids=["dict-items", "list-iter", "int-dunder"],
)
def test_a_subclass_s_own_methods_do_not_forge_its_value(code):
    tests = json.dumps({"asserts": ["assert add(1, 2) == {3: 3} or add(1, 2) == [3] or add(1, 2) == 3"]})
    assert code_tests_reward(fenced(code), tests)["score"] == 0.0


# The existing UNITTEST_MAIN_HACK binds `zz_mod`, whose name is not its module's, so it never reaches
# the SAFE_MODULES check; this one binds the module under its own name and makes /tmp a package that
# unittest's discovery (run by importing unittest.__main__ with cwd "/") imports in the test's process.
UNITTEST_MAIN_EXACT = f"""
import os
open("/tmp/__init__.py", "w").write("")
open("/tmp/test_evil.py", "w").write({TOKEN_THIEF_MODULE!r})
globals()["unittest.__main__"] = type(os)("unittest.__main__")
def add(a, b):
    return 0
"""


def test_a_module_the_program_names_exactly_is_imported_only_if_safe():
    assert code_tests_reward(fenced(UNITTEST_MAIN_EXACT), ADD_ASSERTS)["score"] == 0.0


def test_workers_die_with_a_killed_zygote():
    """Zygote.stop's fallback (SIGKILL after the grace) relies on PR_SET_PDEATHSIG to end the workers."""
    v = ProcessVerifier([RewardSpec("math")], num_workers=2, timeout_s=5.0, memory_mb=512)
    try:
        workers = v.worker_pids()
        assert workers
        os.kill(v.zygote_pid, signal.SIGKILL)

        def alive(pid):
            try:
                return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False

        deadline = time.monotonic() + 5
        while any(map(alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in workers if alive(p)]
        for p in left:
            os.kill(p, signal.SIGKILL)
        assert left == []
    finally:
        v.close()


SWALLOW = '''
def reward(completion, answer, answer_type="math", **kw):
    try:
        while True:
            pass
    except Exception:
        return 0.5
'''


def test_a_reward_function_catching_exception_still_times_out(tmp_path, monkeypatch):
    (tmp_path / "swallow_mod.py").write_text(SWALLOW)
    monkeypatch.syspath_prepend(str(tmp_path))
    with ProcessVerifier([RewardSpec("swallow_mod:reward")], num_workers=1, timeout_s=1.0, memory_mb=512) as v:
        results, _ = v.score([ScoreRequest("x", "y", "math")])
    assert results[0].error == "timeout", results[0]
