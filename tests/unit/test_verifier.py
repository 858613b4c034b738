"""ProcessVerifier: isolation, deadlines, memory limits, crashes, injection
attempts, adversarial input, ordering.  Real worker processes, real math-verify.
(The Ray actor round trip is in test_verifier_ray.py.)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import rlvr.generation.base as generation_base
from rlvr.rewards import coerce_spec
from rlvr.sandbox import (
    ProcessVerifier,
    RewardSpec,
    ScoreRequest,
    ScoreResult,
    VerifierStartError,
)

TIMEOUT = 2.0  # per-item deadline of the math pool
SLACK = 3.0  # scheduling slack on a loaded 2-core box
ALLOWED_ERRORS = {None, "timeout", "oom", "crash"}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _wait_dead(pids, timeout=5.0) -> list[int]:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        alive = [p for p in pids if _alive(p)]
        if not alive:
            return []
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.fixture(scope="module")
def math_pool():
    v = ProcessVerifier([RewardSpec("math")], num_workers=2, timeout_s=TIMEOUT, memory_mb=512)
    yield v
    v.close()


@pytest.fixture(scope="module")
def bad_pool():
    v = ProcessVerifier(
        [RewardSpec("reward_fns_for_tests:misbehave")], num_workers=2, timeout_s=2.0, memory_mb=256
    )
    yield v
    v.close()


# ---------------------------------------------------------------------------
# Basics
# ---------------------------------------------------------------------------


def test_ordering_and_values(math_pool):
    reqs, expected = [], []
    for i in range(60):
        if i % 3 == 0:
            reqs.append(ScoreRequest(rf"\boxed{{{i}}}", str(i)))
            expected.append(1.0)
        elif i % 3 == 1:
            reqs.append(ScoreRequest(rf"\boxed{{{i + 1}}}", str(i)))
            expected.append(0.0)
        else:
            reqs.append(ScoreRequest(rf"\boxed{{\frac{{{i}}}{{2}}}}", f"{i / 2}", "expression"))
            expected.append(1.0)
    results, stats = math_pool.score(reqs)
    assert [r.reward for r in results] == expected
    assert [r.correct for r in results] == [e == 1.0 for e in expected]
    assert all(r.error is None for r in results)
    assert stats["items"] == 60 and stats["timeout"] == stats["oom"] == stats["crash"] == stats["error"] == 0
    assert stats["correct_rate"] == pytest.approx(40 / 60)
    assert stats["seconds"] > 0 and stats["items_per_s"] > 0


def test_empty_batch(math_pool):
    results, stats = math_pool.score([])
    assert results == [] and stats["items"] == 0


def test_request_coercion(math_pool):
    results, _ = math_pool.score(
        [
            {"completion": r"\boxed{3}", "answer": "3"},
            (r"\boxed{B}", "B", "choice"),
            ScoreRequest(b"\\boxed{7}\xff\xfe", "7"),  # invalid UTF-8 bytes
            ScoreRequest(None, "7"),
        ]
    )
    assert [r.reward for r in results] == [1.0, 1.0, 1.0, 0.0]


def test_scoring_from_a_thread(math_pool):
    """math-verify's SIGALRM timeout breaks in threads; the pool does not care
    which thread calls it (the timers live in the workers)."""
    out = {}

    def run():
        out["res"], out["stats"] = math_pool.score(
            [ScoreRequest(r"\boxed{\sqrt{12}}", r"2\sqrt{3}", "expression")] * 4
        )

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert [(r.reward, r.error) for r in out["res"]] == [(1.0, None)] * 4


def test_weighted_terms_and_user_function():
    terms = [
        RewardSpec("math"),
        RewardSpec("format", weight=1.0, kwargs={"bonus": 0.1}),
        {"fn": "reward_fns_for_tests:length_bonus", "weight": 0.5, "kwargs": {"scale": 0.1}},
    ]
    with ProcessVerifier(terms, num_workers=1, timeout_s=TIMEOUT, num_spares=0) as v:
        results, stats = v.score([ScoreRequest(r"\boxed{4}", "4"), ScoreRequest("4", "4"), ScoreRequest(r"\boxed{5}", "4")])
    # lengths: 9, 1, 9 characters -> length_bonus 0.9, 0.1, 0.9
    assert results[0].reward == pytest.approx(1.0 + 0.1 + 0.45) and results[0].correct
    assert results[1].reward == pytest.approx(1.0 + 0.0 + 0.05) and results[1].correct
    assert results[2].reward == pytest.approx(0.0 + 0.1 + 0.45) and not results[2].correct
    assert stats["term_mean/1:format"] == pytest.approx(0.2 / 3)
    # the step adds up its calls' sums (DAPO's rounds, an episode's turns) and logs each term's mean
    from rlvr.generation.base import verifier_counts
    from rlvr.train.controller import step_rates

    counts = verifier_counts(stats)
    for key, value in verifier_counts(stats).items():
        counts[key] += value
    assert step_rates(counts) == {"reward_term/0:math": pytest.approx(2 / 3), "reward_term/1:format": pytest.approx(0.2 / 3),
                                  "reward_term/2:reward_fns_for_tests:length_bonus": pytest.approx(1.9 / 3)}
    assert not any(k.startswith("reward_term_") for k in counts)  # the sums are taken out of the record


def test_correct_is_a_named_property_of_the_terms_not_their_order():
    """Which terms say an answer is right: their `correctness`, or the builtins' own (math and exact
    decide, format shapes); a user function decides when nothing else does."""
    from rlvr.rewards import correctness_terms

    fmt = {"fn": "format", "kwargs": {"bonus": 1.0}}
    assert correctness_terms([coerce_spec(fmt), coerce_spec("math")]) == [1]
    assert correctness_terms([coerce_spec("math"), coerce_spec(fmt)]) == [0]
    assert correctness_terms([coerce_spec("reward_fns_for_tests:length_bonus"), coerce_spec(fmt)]) == [0]
    assert correctness_terms([coerce_spec("math"), coerce_spec("reward_fns_for_tests:length_bonus")]) == [0]
    own = {"fn": "reward_fns_for_tests:length_bonus", "correctness": True}
    assert correctness_terms([coerce_spec({"fn": "math", "correctness": False}), coerce_spec(own)]) == [1]
    with pytest.raises(ValueError, match="no reward term decides correctness \\(format\\): set correctness: true"):
        correctness_terms([coerce_spec(fmt)])
    two = [coerce_spec("reward_fns_for_tests:length_bonus"), coerce_spec("reward_fns_for_tests:trl_style")]
    with pytest.raises(ValueError, match="several reward terms could decide correctness \\(reward_fns_for_tests:length_bonus, reward_fns_for_tests:trl_style\\)"):
        correctness_terms(two)
    two[1] = coerce_spec({"fn": "reward_fns_for_tests:trl_style", "correctness": False})
    assert correctness_terms(two) == [0]
    with pytest.raises(ValueError, match="correctness must be true, false or null"):
        coerce_spec({"fn": "math", "correctness": "yes"})
    # format first, math second: a boxed wrong answer earns the format bonus and is still not correct
    with ProcessVerifier([fmt, "math"], num_workers=1, timeout_s=TIMEOUT, num_spares=0) as v:
        results, _ = v.score([ScoreRequest(r"\boxed{4}", "4"), ScoreRequest(r"\boxed{5}", "4")])
    assert [r.correct for r in results] == [True, False] and results[1].reward == pytest.approx(1.0)


def test_bad_specs_fail_fast():
    with pytest.raises(ValueError):
        ProcessVerifier([RewardSpec("not_a_builtin")])
    with pytest.raises(ValueError):
        ProcessVerifier([])
    with pytest.raises(VerifierStartError, match="ModuleNotFoundError"):
        ProcessVerifier([RewardSpec("no_such_module_xyz:fn")], num_workers=1)


# ---------------------------------------------------------------------------
# Isolation: timeouts, OOM, crashes
# ---------------------------------------------------------------------------


def test_failures_are_isolated_and_classified(bad_pool):
    kinds = {
        "ok": None,
        "HANG_PY": "timeout",  # ended by the worker's own timer
        "HANG_C": "timeout",  # needs the parent's SIGKILL
        "SLEEP": "timeout",
        "OOM": "oom",
        "ABORT": "crash",
        "SEGV": "crash",
        "EXIT": "crash",
        "SELF_KILL": "crash",  # a SIGKILL the item sent itself is not the kernel's OOM killer
        "RAISE": "error:KeyError",
        "NAN": "error:BadRewardValue",
    }
    order = ["ok", "HANG_PY", "ok", "HANG_C", "ok", "SLEEP", "OOM", "ok", "ABORT", "SEGV", "EXIT", "SELF_KILL", "RAISE", "NAN", "ok"]
    before = set(bad_pool.worker_pids())
    t0 = time.monotonic()
    results, stats = bad_pool.score([ScoreRequest(c, "1") for c in order])
    elapsed = time.monotonic() - t0
    for c, r in zip(order, results):
        assert r.error == kinds[c], (c, r)
        assert r.reward == (1.0 if c == "ok" else 0.0)
    assert stats["timeout"] == 3 and stats["oom"] == 1 and stats["crash"] == 4 and stats["error"] == 2
    assert stats["errors_by_type"] == {"error:KeyError": 1, "error:BadRewardValue": 1}
    # the message comes back too (first line), one example per type, for the driver's log
    assert [r.detail for r in results if r.error and r.error.startswith("error:")] == [
        "KeyError: 'boom'", "BadRewardValue: reward function returned nan, not a finite number"]
    assert stats["error_examples"] == {"error:KeyError": "KeyError: 'boom'",
                                       "error:BadRewardValue": "BadRewardValue: reward function returned nan, not a finite number"}
    assert stats["replaced"] >= 8
    # three hung items overlap: the batch takes about one deadline (2 s), not three
    assert elapsed < 3 * 2.0 + SLACK - 1.0
    # the pool is whole again and keeps working
    results, stats = bad_pool.score([ScoreRequest("ok", "1")] * 20)
    assert all(r.reward == 1.0 and r.error is None for r in results)
    after = set(bad_pool.worker_pids())
    assert len(after) == bad_pool.num_workers + bad_pool.num_spares
    assert before - after  # some workers were replaced


def test_many_hangs_in_one_batch_do_not_serialize(bad_pool):
    reqs = [ScoreRequest("SLEEP" if i % 4 == 0 else "ok", "1") for i in range(40)]
    t0 = time.monotonic()
    results, stats = bad_pool.score(reqs)
    elapsed = time.monotonic() - t0
    assert stats["timeout"] == 10
    assert [r.reward for r in results] == [0.0 if i % 4 == 0 else 1.0 for i in range(40)]
    # 10 hangs x 2 s on 2 workers would be >= 10 s if they serialized
    assert elapsed < 10.0


def test_workers_ignore_sigint(bad_pool):
    pids = bad_pool.worker_pids()
    for p in pids:
        os.kill(p, signal.SIGINT)
    time.sleep(0.2)
    assert all(_alive(p) for p in pids)
    results, _ = bad_pool.score([ScoreRequest("ok", "1")] * 4)
    assert [r.reward for r in results] == [1.0] * 4


def test_worker_killed_from_outside_is_replaced(bad_pool):
    bad_pool.score([ScoreRequest("ok", "1")])
    victim = bad_pool.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    assert _wait_dead([victim]) == []
    results, _ = bad_pool.score([ScoreRequest("ok", "1")] * 8)
    assert [r.reward for r in results] == [1.0] * 8
    assert victim not in bad_pool.worker_pids()


def test_close_leaves_no_processes():
    v = ProcessVerifier([RewardSpec("reward_fns_for_tests:misbehave")], num_workers=2, timeout_s=60.0)
    v.score([ScoreRequest("ok", "1")] * 4)
    pids = v.worker_pids() + [v.zygote_pid]
    # both workers stuck in an item (C code that ignores signals but SIGKILL) while we close
    ended: list[BaseException] = []

    def score_hung() -> None:
        try:
            v.score([ScoreRequest("HANG_C", "1")] * 2)
        except RuntimeError as e:
            ended.append(e)

    stuck = threading.Thread(target=score_hung, daemon=True)
    stuck.start()
    time.sleep(0.5)
    started = time.monotonic()
    v.close()
    v.close()  # idempotent
    assert _wait_dead(pids) == [] and time.monotonic() - started < 30  # not the items' 60 s timeout
    stuck.join(timeout=30)
    assert "closed during score()" in str(ended[0])  # the caller in the middle of an item is told
    with pytest.raises(RuntimeError):
        v.score([ScoreRequest("ok", "1")])


def test_no_orphans_when_the_driver_is_killed(tmp_path):
    """SIGKILL the process that owns the pool while a worker is hung: the
    zygote sees its socket close and the workers die with it."""
    out = tmp_path / "pids.json"
    code = textwrap.dedent(
        f"""
        import json, sys, threading, time
        from rlvr.sandbox import ProcessVerifier, RewardSpec, ScoreRequest
        v = ProcessVerifier([RewardSpec("reward_fns_for_tests:misbehave")], num_workers=2, timeout_s=60)
        v.score([ScoreRequest("ok", "1")] * 4)
        threading.Thread(target=v.score, args=([ScoreRequest("HANG_C", "1")] * 2,), daemon=True).start()
        time.sleep(0.5)
        json.dump(v.worker_pids() + [v.zygote_pid], open({str(out)!r}, "w"))
        time.sleep(600)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        t0 = time.monotonic()
        while not out.exists() and time.monotonic() - t0 < 60:
            time.sleep(0.05)
        time.sleep(0.1)
        pids = json.loads(out.read_text())
        assert len(pids) >= 3 and all(_alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait()
    assert _wait_dead(pids) == []


def _left_behind(pid_dir) -> dict[str, int]:
    return {p.name.split("-")[0]: int(p.name.split("-")[1]) for p in pid_dir.iterdir()}


def test_no_process_outlives_its_item(tmp_path):
    """A reward function that leaves a process behind (a child, a child in a new session, an
    orphaned grandchild of a double fork) or starts one and hangs: each is dead once its item's
    result is back, and the pool scores the next batch."""
    kinds = ["SPAWN", "SPAWN_SETSID", "DOUBLE_FORK", "SPAWN_HANG", "ok"]
    spec = RewardSpec("reward_fns_for_tests:misbehave", kwargs={"pid_dir": str(tmp_path)})
    with ProcessVerifier([spec], num_workers=2, timeout_s=2.0, memory_mb=256) as v:
        results, _ = v.score([ScoreRequest(k, "1") for k in kinds])
        assert [r.error for r in results] == [None, None, None, "timeout", None]
        left = _left_behind(tmp_path)
        assert sorted(left) == sorted(kinds[:4])
        # the three that replied killed theirs before replying; the hung one's die with its worker
        assert [p for k, p in left.items() if k != "SPAWN_HANG" and _alive(p)] == []
        assert _wait_dead(list(left.values()), timeout=3.0) == []
        results, _ = v.score([ScoreRequest("ok", "1")] * 4)
        assert [r.reward for r in results] == [1.0] * 4


def test_close_kills_what_a_running_item_started(tmp_path):
    spec = RewardSpec("reward_fns_for_tests:misbehave", kwargs={"pid_dir": str(tmp_path)})
    v = ProcessVerifier([spec], num_workers=1, timeout_s=60.0, memory_mb=256)
    def score_until_closed():
        with pytest.raises(RuntimeError, match="closed"):
            v.score([ScoreRequest("SPAWN_HANG", "1")])

    scoring = threading.Thread(target=score_until_closed, daemon=True)
    scoring.start()
    t0 = time.monotonic()
    while not list(tmp_path.iterdir()) and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    left = list(_left_behind(tmp_path).values())
    assert len(left) == 1 and _alive(left[0])
    pids = v.worker_pids() + [v.zygote_pid]
    v.close()
    assert _wait_dead(left + pids) == []
    scoring.join(timeout=10)
    assert not scoring.is_alive()


# ---------------------------------------------------------------------------
# No code execution
# ---------------------------------------------------------------------------


def test_injection_attempts_do_not_execute(math_pool, tmp_path):
    sentinel = tmp_path / "pwned"
    cmd = f"touch {sentinel}"
    payloads = [
        f"__import__('os').system('{cmd}')",
        rf"\boxed{{__import__('os').system('{cmd}')}}",
        rf"The answer is $\text{{__import__('os').system('{cmd}')}}$",
        rf"\boxed{{\mathrm{{\_\_import\_\_}}(\text{{os}}).\mathrm{{system}}(\text{{{cmd}}})}}",
        rf"\boxed{{\operatorname{{eval}}(\text{{__import__('os').system('{cmd}')}})}}",
        rf"\boxed{{\frac{{__import__('os').system('{cmd}')}}{{1}}}}",
        # sympy parser injection: strings that sympify/parse_expr would run
        f"Answer: (lambda: __import__('os').system('{cmd}'))()",
        f"#### Symbol('x').__class__.__mro__[-1].__subclasses__() or __import__('os').system('{cmd}')",
        f"1; __import__('os').system('{cmd}')",
        f"exec(\"import os; os.system('{cmd}')\")",
        f"The final answer is $x = __import__('os').system('{cmd}')$",
    ]
    reqs = [ScoreRequest(p, gold, t) for p in payloads for t, gold in
            [("number", "45"), ("expression", "x"), ("choice", "A"), ("string", "s"), ("any", "45")]]
    results, stats = math_pool.score(reqs)
    assert all(r.reward == 0.0 for r in results)
    assert all(r.error is None for r in results), [r.error for r in results]
    assert not sentinel.exists()


# ---------------------------------------------------------------------------
# Adversarial and malformed input: each ends inside its deadline with a
# defined reward.
# ---------------------------------------------------------------------------

ADVERSARIAL = [
    ("huge exponent", r"\boxed{10^{10^{10^{10}}}}", "number"),
    ("huge exponent expr", r"\boxed{10^{10^{10^{10}}}}", "expression"),
    ("huge power expr", r"\boxed{9^{99999999}}", "expression"),
    ("huge factorial", r"\boxed{100000!}", "expression"),
    ("huge exponent any", "9**9**9**9", "any"),
    ("power of a power", r"\boxed{(10^{99999})^{99999}}", "expression"),
    ("tower in nested braces", r"\boxed{2^{{{9^{99}}}}}", "expression"),
    ("deep braces", "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}", "expression"),
    ("deep boxes", "\\boxed{" * 50_000 + "1" + "}" * 50_000, "number"),
    ("unbalanced", "\\boxed{" + "{" * 10_000, "expression"),
    ("1 MB", "lorem ipsum 45 " * 70_000, "number"),
    ("1 MB boxed", "x" * 1_000_000 + r"\boxed{45}", "number"),
    ("1 MB in box", r"\boxed{" + "4" * 1_000_000 + "}", "number"),
    ("1 MB expr", r"\boxed{" + "x+" * 500_000 + "1}", "expression"),
    ("1 MB any", "1+" * 500_000 + "1", "any"),
    ("invalid utf-8", b"\xff\xfe\xfd \\boxed{45} \xc3\x28".decode("utf-8", "surrogateescape"), "number"),
    ("NUL bytes", "\x00" * 1000 + r"\boxed{4\x005}", "number"),
    ("NUL in box", "\\boxed{45}\x00", "number"),
    ("empty", "", "number"),
    ("empty expr", "", "expression"),
    ("whitespace", " \n\t ", "number"),
    ("empty box", r"\boxed{}", "number"),
    ("empty box expr", r"\boxed{}", "expression"),
    ("several boxes", r"\boxed{1}\boxed{2}\boxed{3}\boxed{45}", "number"),
    ("parser loop nesting", r"\boxed{" + "(" * 40 + "1" + ")" * 40 + "}", "expression"),
    ("parser loop mixed", r"\boxed{" + "([" * 8 + "1" + "])" * 8 + "}", "expression"),
    ("parser loop sum", r"\boxed{\sum_{k=1}^{99999} k^{99999}}", "expression"),
    ("many fracs", r"\boxed{" + r"\frac{1}{2}+" * 300 + "1}", "expression"),
    ("latex soup", r"\boxed{\left(\right.\begin{matrix}\end{array}\frac{}{}^{_}\sqrt[}}", "expression"),
    ("control chars", "".join(chr(i) for i in range(32)) * 100, "any"),
]


@pytest.mark.parametrize("latex,reason", [
    (r"(10^{99999})^{99999}", "power of a power"),  # 10^(10^10): got past the screen, hung SymPy for a whole deadline
    (r"((10^{999})^{999})^{999}", "power of a power"),
    (r"\left(10^{50}\right)^{99999}", "power of a power"),
    (r"2^{{{9^{99}}}}", "power tower"),  # braces deeper than the old pattern's one level
    (r"10^{10^{10^{10}}}", "power tower"),
    (r"9^{99999999}", "huge exponent"),
    (r"(2^3)^2", None), (r"((2^3)^2)^2", None), (r"(x^2)^{99999}", None), (r"2^{10}", None), (r"e^{i\pi}", None),
    (r"\frac{1}{2^{3}}", None), (r"\left(10^{5}\right)^{99999}", None),
])
def test_the_latex_screen_names_what_would_explode(latex, reason):
    from rlvr.rewards.builtin import _dangerous_latex

    assert _dangerous_latex(latex) == reason


@pytest.mark.parametrize("name,completion,answer_type", ADVERSARIAL, ids=[a[0] for a in ADVERSARIAL])
def test_adversarial_input_ends_in_time(math_pool, name, completion, answer_type):
    gold = "45" if answer_type != "expression" else "x"
    t0 = time.monotonic()
    results, stats = math_pool.score([ScoreRequest(completion, gold, answer_type), ScoreRequest(r"\boxed{45}", "45")])
    elapsed = time.monotonic() - t0
    r = results[0]
    assert isinstance(r, ScoreResult)
    assert r.reward in (0.0, 1.0) and r.error in ALLOWED_ERRORS, r
    assert results[1].reward == 1.0 and results[1].error is None  # its neighbour is unaffected
    assert elapsed < TIMEOUT + SLACK, elapsed


def test_adversarial_batch_mixed_with_healthy_items(math_pool):
    reqs = []
    for i, (_, completion, answer_type) in enumerate(ADVERSARIAL):
        reqs.append(ScoreRequest(completion, "45" if answer_type != "expression" else "x", answer_type))
        reqs.append(ScoreRequest(rf"\boxed{{{i}}}", str(i)))
    results, stats = math_pool.score(reqs)
    assert [r.reward for r in results[1::2]] == [1.0] * len(ADVERSARIAL)
    assert all(r.error in ALLOWED_ERRORS for r in results)
    assert stats["items"] == len(reqs)


def test_expected_rewards_for_malformed_but_honest_input(math_pool):
    results, _ = math_pool.score(
        [
            ScoreRequest(b"\xff\xfe \\boxed{45} \xc3\x28".decode("utf-8", "surrogateescape"), "45"),
            ScoreRequest("\x00\x00 The answer is 45.", "45"),
            ScoreRequest("x" * 1_000_000 + r"\boxed{45}", "45"),
            ScoreRequest(r"\boxed{45}\boxed{45}", "45"),
            ScoreRequest(r"\boxed{}", "45"),
        ]
    )
    assert [r.reward for r in results] == [1.0, 1.0, 1.0, 1.0, 0.0]


def test_gold_errors_are_reported_not_raised(math_pool):
    results, stats = math_pool.score([ScoreRequest(r"\boxed{1}", r"\sqrt{2}", "number"), ScoreRequest(r"\boxed{1}", "1")])
    assert results[0].error == "error:ValueError" and results[0].reward == 0.0
    assert results[1].reward == 1.0
    assert stats["errors_by_type"] == {"error:ValueError": 1}


def test_interrupted_score_leaves_a_usable_pool(bad_pool):
    """Ctrl-C in the driver during score(): the next call must not mix in
    stale replies from the interrupted batch."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            bad_pool.score([ScoreRequest("SLEEP", "1")] * 2 + [ScoreRequest("RAISE", "1")] * 50)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    results, stats = bad_pool.score([ScoreRequest("ok", "1")] * 10)
    assert [(r.reward, r.error) for r in results] == [(1.0, None)] * 10


def test_slow_legitimate_item_is_not_starved_in_a_long_batch():
    """A slow item is set aside and re-niced while a long queue of other
    items runs; its deadline clock is paused meanwhile, so it still finishes
    even though the queue takes longer than its deadline."""
    with ProcessVerifier(
        [RewardSpec("reward_fns_for_tests:misbehave")], num_workers=2, timeout_s=2.0, num_spares=1
    ) as v:
        v.score([ScoreRequest("BURN:5", "1")] * 40)  # learn typical item times
        reqs = [ScoreRequest("BURN:300", "1")] + [ScoreRequest("BURN:10", "1")] * 500
        t0 = time.monotonic()
        results, stats = v.score(reqs)
        elapsed = time.monotonic() - t0
        reniced = dict(v.last_renice_cpu)
    assert 0 in reniced  # the slow item was set aside and re-niced ...
    assert elapsed > 2.0  # ... in a batch that outlasted its deadline
    assert results[0].error is None and results[0].reward == 1.0, (results[0], elapsed)
    assert stats["timeout"] == 0


def test_trl_and_verl_style_rewards_score_through_the_pool(monkeypatch, caplog):
    """The peers' reward signatures run in the pool's isolated workers; a bad return value is a
    per-item error with reward 0, never a crashed batch."""
    meta = {"data_source": "openai/gsm8k", "extra_info": {"bonus": 0.5}}
    with ProcessVerifier([RewardSpec("reward_fns_for_tests:trl_style", style="trl")], num_workers=1, timeout_s=TIMEOUT) as v:
        results, stats = v.score([
            ScoreRequest("so 42", "42", prompt="What is 6*7?"),
            ScoreRequest("so 41", "42", prompt="What is 6*7?"),
            ScoreRequest("BAD_NONE", "42", prompt="q?"),
            ScoreRequest("BAD_NAN", "42", prompt="q?"),
            ScoreRequest("BAD_LENGTH", "42", prompt="q?"),
            ScoreRequest("BAD_RAISE", "42", prompt="q?"),
            ScoreRequest("so 42", "42", prompt="q?"),
        ])
    assert [r.reward for r in results] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert [r.error for r in results] == [None, None] + ["error:BadRewardValue"] * 3 + ["error:RuntimeError", None]
    assert [r.detail for r in results] == [
        None, None,
        "BadRewardValue: trl-style reward returned NoneType 'None', not a number",
        "BadRewardValue: trl-style reward returned nan, not a finite number",
        "BadRewardValue: trl-style reward returned 2 values for 1 completion (expected a list of 1 float)",
        "RuntimeError: reward model offline",
        None,
    ]
    assert stats["error"] == 4
    # the driver's log shows each error type once a run, with its message
    monkeypatch.setattr(generation_base, "_errors_reported", set())
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        assert generation_base.verifier_counts(stats)["verifier_error"] == 4
        generation_base.verifier_counts(stats)
    shown = [r.getMessage() for r in caplog.records]
    assert len(shown) == 2 and "3 of 7 items" in shown[0] and "BadRewardValue: trl-style reward returned NoneType" in shown[0]
    assert "1 of 7 items" in shown[1] and "RuntimeError: reward model offline" in shown[1]
    # a function that hangs (or dies) on every item has no message: that it did is said once a run
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        assert generation_base.verifier_counts({"items": 8, "timeout": 8})["verifier_timeout"] == 8
        generation_base.verifier_counts({"items": 8, "timeout": 8})
        generation_base.verifier_counts({"items": 8, "crash": 3})  # some items: the counts say so, no warning
    shown = [r.getMessage() for r in caplog.records]
    assert len(shown) == 1 and shown[0].startswith("every one of 8 items of a verifier call ended in timeout")
    with ProcessVerifier([RewardSpec("reward_fns_for_tests:verl_style", style="verl")], num_workers=1, timeout_s=TIMEOUT) as v:
        results, _ = v.score([
            ScoreRequest("it is 42", "42", meta=meta),  # dict return: its score
            ScoreRequest("it is 42", "42", meta={"data_source": "other"}),  # float return
            ScoreRequest("BAD_NAN", "42", meta=meta),
            ScoreRequest("BAD_RAISE", "42", meta=meta),
        ])
    assert [r.reward for r in results] == [1.5, 1.0, 0.0, 0.0]
    assert [r.detail for r in results][2:] == ["BadRewardValue: verl-style reward returned nan, not a finite number",
                                               "RuntimeError: broken scorer"]
    with pytest.raises(ValueError, match="unknown style 'openrlhf'"):
        ProcessVerifier([RewardSpec("reward_fns_for_tests:verl_style", style="openrlhf")])


def test_a_reward_function_s_prints_are_capped_per_item(capfd):
    """A reward function that printed 100 MB an item wrote 800 MB of the verifier's log a step; its
    print()s are now kept to 64 K characters an item, then one note."""
    from rlvr.sandbox.child import OUTPUT_PER_ITEM

    with ProcessVerifier([RewardSpec("reward_fns_for_tests:loud")], num_workers=1, timeout_s=30) as v:
        results, _ = v.score([ScoreRequest("3", "1"), ScoreRequest("QUIET", "1"), ScoreRequest("0", "1"), ScoreRequest("BYTES", "1"),
                              ScoreRequest("2", "1"), ScoreRequest("LOG", "1")])
    assert [r.reward for r in results] == [1.0] * 6 and [r.error for r in results] == [None] * 6  # its own sys.stdout, then the cap again
    out, err = capfd.readouterr()
    assert out.count("x") == 2 * OUTPUT_PER_ITEM  # each loud item's first 64 K, the silent one's nothing
    assert out.count("output past 65536 characters on this item is dropped") == 2
    assert err.count("y") == OUTPUT_PER_ITEM and "output past 65536" in err  # a handler made at import is capped too
