"""``code_tests``: the share of a task's tests the model's program passes. The program runs only in
the sandbox (:mod:`rlvr.sandbox.bubblewrap`), one fresh sandbox per test.

Tests come as the gold ``answer`` (a JSON string) or a dict, in the shapes the peers use:

- standard input/output pairs: ``{"inputs": ["1 2\\n", ...], "outputs": ["3\\n", ...]}`` (APPS,
  TACO, verl's and prime-rl's code rows); outputs compare line by line, trailing space ignored;
- assert-style tests calling a named function: ``{"asserts": ["assert add(1, 2) == 3", ...]}``, or
  a bare list of assert lines (TRL rows' ``tests`` column);
- HumanEval: ``{"test": "def check(candidate): ...", "entry_point": "add"}``, one test.

Any shape may carry ``"prelude"``: code put before the program (HumanEval: the prompt's imports).

Each test's outcome is one of ``passed``, ``compile_error``, ``runtime_error``, ``timeout``,
``wrong_answer`` and ``sandbox_error``; the term reports the first that is not ``passed``.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from rlvr.rewards.code_harness import ASSERTION as _EXIT_ASSERTION
from rlvr.rewards.code_harness import COMPILE_ERROR as _EXIT_COMPILE_ERROR
from rlvr.rewards.code_harness import UNSAFE as _EXIT_UNSAFE

OUTCOMES = ("passed", "compile_error", "runtime_error", "timeout", "wrong_answer", "sandbox_error")
_SIGXCPU = 24
MAX_PROGRAM_CHARS = 100_000

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*\n(.*?)```", re.S)

# What runs inside the sandbox, and the exit statuses it reports. Assert-style tests: the harness
# whose docstring says how a pass cannot be forged by the program it tests. Stdin/stdout tests: the
# program alone, its output the verdict, compared out here (a harness of a few lines: each test
# starts an interpreter, and the assert harness's imports cost 5-10 ms of it).
ASSERTS_HARNESS = (Path(__file__).parent / "code_harness.py").read_bytes()
# The stdio harness stays the namespace's pid 1, non-dumpable, and runs the program as its child: a
# program that was pid 1 itself (or could ptrace it) cleared the death signal bwrap gave pid 1 and
# outlived a killed sandbox wherever no cgroup caught it (red-team reviews left 39 processes so).
STDIO_HARNESS = f"""\
import builtins, ctypes, os, signal, sys
if ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE 0: the program may not ptrace pid 1 (and clear its death signal)
    os._exit({_EXIT_UNSAFE})
builtins.exit = builtins.quit = sys.exit  # `-S` leaves them out, and programs end with them
try:
    program = compile(open("/sandbox/program.py").read(), "program.py", "exec")
except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError):
    os._exit({_EXIT_COMPILE_ERROR})
pid = os.fork()
if pid == 0:
    exec(program, {{"__name__": "__main__"}})
    sys.exit(0)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # pid 1 without a handler: nothing inside can signal it
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])  # the program's own end, not an orphan's it left to pid 1
os._exit(128 - code if code < 0 else code)  # a death by signal as a shell reports it (SIGXCPU: timeout)
""".encode()


@dataclass(frozen=True)
class TestSuite:
    kind: str  # stdio | asserts
    cases: tuple  # stdio: (input, expected output) pairs; asserts: test sources
    prelude: str = ""  # put before the program
    entry_point: str = ""  # HumanEval: the function under test, always the program's


def extract_program(completion: str, language: str = "python", defines: bool = False) -> str | None:
    """The program of a completion: its last fenced block tagged ``language`` or untagged; with
    ``defines`` (an assert suite, which tests what the program binds), the last such block that binds
    a name at its top level, so a usage or output block after the solution (``print(add(1, 2))``,
    ``3``) is not the program. A block indented under a list item loses its common margin. Blocks in a
    reasoning model's thinking are drafts, not read; a ``<think>`` that never closed gives None, as no
    answer. Tags inside a fenced block are the program's own text."""
    tags = ("", "python", "python3", "py", "py3") if language == "python" else ("", language)
    fences = list(_FENCE.finditer(completion))
    outside = list(completion)
    for m in fences:  # <think> tags are read outside the code only
        outside[m.start(2):m.end(2)] = " " * (m.end(2) - m.start(2))
    outside = "".join(outside)
    if "</think>" in outside:
        after = outside.rindex("</think>")
        fences = [m for m in fences if m.start() > after]
    elif "<think>" in outside:
        return None  # thinking never closed: cut before any answer
    blocks = [m.group(2) for m in fences if m.group(1).lower() in tags]
    if defines:
        blocks = blocks[: max((i + 1 for i, b in enumerate(blocks) if _binds_a_name(b)), default=len(blocks))]
    if not blocks or len(blocks[-1]) > MAX_PROGRAM_CHARS:
        return None
    return _without_margin(blocks[-1])


def _binds_a_name(code: str) -> bool:
    """Whether a block defines, assigns or imports at its top level (one that does not parse counts:
    it is scored as the compile error it is, not skipped for an earlier draft)."""
    try:
        body = ast.parse(code).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return True
    binding = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Import, ast.ImportFrom)
    return any(isinstance(node, binding) for node in body)


def _without_margin(code: str) -> str:
    """``code`` less the indentation all its non-blank lines share (a block under a list item);
    unchanged when they share none (textwrap.dedent also empties whitespace-only lines, which
    changed a string literal's value)."""
    lines = _lines(code)
    margins = [line[: len(line) - len(line.lstrip(" \t"))] for line in lines if line.strip()]
    margin = os.path.commonprefix(margins) if margins else ""
    if not margin:
        return code
    return "".join(line[len(margin):] if line.startswith(margin) else line.lstrip(" \t") if not line.strip() else line for line in lines)


def _lines(code: str) -> list[str]:
    """``code``'s lines with their ends, split where Python's tokenizer splits them (str.splitlines
    also splits at a form feed or U+2028, and ast's line numbers then named other lines)."""
    return [line for line in re.split(r"(?<=\n)|(?<=\r)(?!\n)", code) if line]


def _futures_first(prelude: str, program: str) -> str:
    """``prelude`` then ``program``, the program's ``from __future__`` imports (which must open a
    module: after a prelude they are a SyntaxError) moved in front of both."""
    try:
        body = ast.parse(program).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return prelude + "\n" + program  # a compile error either way
    futures = []
    for node in body[1:] if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) else body:
        if not (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            break
        futures.append(node)
    if not futures:
        return prelude + "\n" + program
    lines = _lines(program)
    moved = {i for node in futures for i in range(node.lineno - 1, node.end_lineno)}
    head = "".join(lines[i] for i in sorted(moved))
    return head + ("" if head.endswith("\n") else "\n") + prelude + "\n" + "".join(line for i, line in enumerate(lines) if i not in moved)


def parse_tests(spec) -> TestSuite:
    """A test suite from a JSON string, a dict or a list of assert lines; ValueError names what is wrong."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ValueError(f"code tests are not JSON: {e.msg} at character {e.pos}") from None
    if isinstance(spec, list):
        spec = {"asserts": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"code tests must be a dict or a list of asserts, got {type(spec).__name__}")
    prelude = spec.get("prelude") or ""
    if not isinstance(prelude, str):
        raise ValueError(f"'prelude' must be a string, got {type(prelude).__name__}")
    if "inputs" in spec or "outputs" in spec:
        if "fn_name" in spec:
            raise ValueError("call-based tests (fn_name) are not supported: give asserts instead")
        ins, outs = spec.get("inputs"), spec.get("outputs")
        if not isinstance(ins, list) or not isinstance(outs, list) or len(ins) != len(outs) or not ins:
            raise ValueError("stdin/stdout tests need non-empty 'inputs' and 'outputs' lists of the same length")
        return TestSuite("stdio", tuple((_stream(i, "input"), _stream(o, "output")) for i, o in zip(ins, outs)), prelude)
    if "asserts" in spec:
        asserts = spec["asserts"]
        if not isinstance(asserts, list) or not asserts or not all(isinstance(a, str) for a in asserts):
            raise ValueError("'asserts' must be a non-empty list of strings")
        return TestSuite("asserts", _compiled(asserts, prelude), prelude)
    if "test" in spec and "entry_point" in spec:
        entry = spec["entry_point"]
        if not isinstance(entry, str) or not entry.isidentifier():
            raise ValueError(f"'entry_point' must be a function name, got {entry!r}")
        return TestSuite("asserts", _compiled([f"{spec['test']}\n\ncheck({entry})\n"], prelude), prelude, entry)
    raise ValueError(f"unknown code test shape with keys {sorted(spec)[:8]}: expected inputs/outputs, asserts, or test/entry_point")


def _stream(value, what: str) -> str:
    """A test's whole stdin or stdout: a string, or its lines as a list (TACO's rows)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(line, str) for line in value):
        return "".join(line if line.endswith("\n") else line + "\n" for line in value)
    raise ValueError(f"a test's {what} must be a string or a list of lines, got {type(value).__name__} {str(value)[:40]!r}")


def _compiled(tests: list[str], prelude: str) -> tuple[str, ...]:
    """The tests, each checked to compile: a test that cannot would score every program 0 as its error."""
    for i, source in enumerate([prelude, *tests]):
        try:
            compile(source, "test.py", "exec")
        except (SyntaxError, ValueError) as e:
            raise ValueError(f"code {'prelude' if i == 0 else f'test {i - 1}'} does not compile: {e}") from None
    return tuple(tests)


def _same_output(got: bytes, expected: str) -> bool:
    lines = lambda s: [line.rstrip() for line in s.strip().splitlines()]  # noqa: E731
    return lines(got.decode(errors="replace")) == lines(expected)


def _outcome(execution, expected: str | None, token: bytes | None = None) -> str:
    """A test's outcome: stdin/stdout tests compare the output (``expected``); assert-style tests
    pass only if the harness wrote the run's ``token`` (an exit status of 0 alone is not a pass)."""
    status, code = execution.status, execution.returncode
    if status == "sandbox_error" or (status == "exited" and code == _EXIT_UNSAFE):
        return "sandbox_error"
    # CPU time out: SIGXCPU; bwrap hands its program's death by a signal on as exit status 128 + signal
    if status == "timeout" or (status == "signaled" and code == -_SIGXCPU) or (status == "exited" and code == 128 + _SIGXCPU):
        return "timeout"
    if status != "exited" or (code not in (0, _EXIT_COMPILE_ERROR, _EXIT_ASSERTION)):
        return "runtime_error"
    if code == _EXIT_COMPILE_ERROR:
        return "compile_error"
    if code == _EXIT_ASSERTION:
        return "wrong_answer"
    if token is not None:  # ended with 0 before its test reported: os._exit(0) or the like
        return "passed" if execution.stdout == token else "runtime_error"
    return "passed" if _same_output(execution.stdout, expected) else "wrong_answer"


def run_tests(program: str, suite: TestSuite, limits) -> list[str]:
    """Each test's outcome; after a compile error the program is not run again."""
    from rlvr.sandbox.bubblewrap import INTERPRETER, run

    outcomes: list[str] = []
    if suite.prelude:
        program = _futures_first(suite.prelude, program)
    harness = STDIO_HARNESS if suite.kind == "stdio" else ASSERTS_HARNESS
    files = {"/sandbox/harness.py": harness, "/sandbox/program.py": program.encode("utf-8", "replace")}
    for case in suite.cases:
        if outcomes and outcomes[0] == "compile_error":
            outcomes.append("compile_error")
            continue
        if suite.kind == "stdio":
            token, stdin, expected = None, case[0].encode("utf-8", "replace"), case[1]
            # a right answer longer than the default output bound is not a runaway program
            case_limits = dataclasses.replace(limits, output_bytes=max(limits.output_bytes, 2 * len(expected.encode()) + 4096))
        else:  # the token and the test reach the harness's trusted side only, after it forked the program
            token, expected, case_limits = secrets.token_hex(16).encode(), None, limits
            stdin = token + b"\n" + json.dumps({"prelude": suite.prelude, "test": case, "entry_point": suite.entry_point}).encode()
        execution = run([INTERPRETER, "-I", "-S", "/sandbox/harness.py"], files, stdin, case_limits)
        outcomes.append(_outcome(execution, expected, token))
    return outcomes


def code_tests_reward(
    completion: str,
    answer: str,
    answer_type: str = "code",
    mode: str = "fraction",
    timeout_s: float = 2.0,
    memory_mb: int = 256,
    language: str = "python",
    program: str = "last_block",
) -> dict:
    """``{"score": s, "outcome": o}``: s is the share of tests passed (``mode=fraction``) or 1 if all
    pass, else 0 (``mode=all``); o is the first failing test's outcome, or ``passed``. A completion
    with no fenced program scores 0 with outcome ``compile_error``; ``program=whole`` runs the whole
    completion instead (completion-style prompts). ``timeout_s`` is per test: the verifier's
    ``timeout_s`` must cover all of an item's tests."""
    limits = code_tests_limits(mode, timeout_s, memory_mb, language, program)
    suite = parse_tests(answer)
    if program == "last_block":
        source = extract_program(completion, language, defines=suite.kind == "asserts")
    else:
        source = completion[:MAX_PROGRAM_CHARS]
    if source is None:
        return {"score": 0.0, "outcome": "compile_error"}
    outcomes = run_tests(source, suite, limits)
    passed = sum(o == "passed" for o in outcomes)
    failed = [o for o in outcomes if o != "passed"]
    score = passed / len(outcomes) if mode == "fraction" else float(not failed)
    return {"score": score, "outcome": failed[0] if failed else "passed"}


def code_tests_limits(mode: str, timeout_s: float, memory_mb: int, language: str, program: str):
    """The sandbox's limits for ``code_tests``'s options; ValueError names a bad one (the config's
    check calls this before any run starts)."""
    from rlvr.sandbox.bubblewrap import Limits

    if mode not in ("fraction", "all"):
        raise ValueError(f"code_tests mode must be 'fraction' or 'all', got {mode!r}")
    if language != "python":
        raise ValueError(f"code_tests runs python programs only, got language {language!r}")
    if program not in ("last_block", "whole"):
        raise ValueError(f"code_tests program must be 'last_block' or 'whole', got {program!r}")
    for name, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"code_tests {name} must be a positive number, got {value!r}")
    return Limits(wall_s=float(timeout_s), cpu_s=float(timeout_s), memory_mb=int(memory_mb))


def check_tests_parsable(answer: str) -> str | None:
    """Error message if a code row's tests cannot be used, else None."""
    try:
        parse_tests(answer)
    except ValueError as e:
        return str(e)
    return None
