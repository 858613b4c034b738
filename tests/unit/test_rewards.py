"""Reward functions (rlvr.rewards): answer-checking accuracy, hacking attempts,
extraction rules, helpers.  Pure functions, run in-process (real math-verify).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlvr.rewards import (
    ANSWER_TYPES,
    REWARD_FUNCTIONS,
    check_answer_parsable,
    exact_reward,
    extract_boxed,
    extract_final_answer,
    format_reward,
    load_reward_fn,
    math_reward,
    normalize_choice,
    parse_numeric_literal,
)

# ---------------------------------------------------------------------------
# Accuracy table: (gold, completion, answer_type, expected reward).
# "mv" marks rows where math-verify's default (parse the whole completion,
# verify against the gold) gives the other answer; the verifier's rules for
# the answer type fix them (see docs/verifier.md).
# ---------------------------------------------------------------------------

CASES = [
    # integers, GSM8K '####'
    ("45", r"So the total is \boxed{45}.", "number", 1.0),
    ("45", r"\boxed{44}", "number", 0.0),
    ("72", "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72", "number", 1.0),
    ("72", "48+24 = 72 clips.\n#### 71", "number", 0.0),
    ("1234", "#### 1,234", "number", 1.0),
    ("1,234", r"\boxed{1234}", "number", 1.0),
    ("1000000", r"\boxed{1{,}000{,}000}", "number", 1.0),
    ("1000", r"\boxed{1\,000}", "number", 1.0),  # mv
    ("-7", r"\boxed{-7}", "number", 1.0),
    ("-7", "The answer is \u22127.", "number", 1.0),  # mv (unicode minus)
    ("-7", r"\boxed{7}", "number", 0.0),
    ("18", "Janet makes 9 * 2 = $18 every day.\n#### 18", "number", 1.0),
    ("18", r"She earns \boxed{\$18}.", "number", 1.0),
    ("5", r"\boxed{5.0}", "number", 1.0),
    ("5", r"\boxed{5.00}", "number", 1.0),
    ("5", r"\boxed{5.01}", "number", 0.0),
    ("0005", r"\boxed{5}", "number", 1.0),
    # fractions vs decimals
    (r"\frac{1}{2}", r"\boxed{0.5}", "number", 1.0),
    ("0.5", r"\boxed{\frac{1}{2}}", "number", 1.0),
    ("0.5", r"\boxed{\dfrac{1}{2}}", "number", 1.0),
    ("0.5", r"\boxed{\frac12}", "number", 1.0),
    # a fraction must be in lowest terms: 90/2 restates "what is 90 / 2?" instead of answering it
    ("1/2", r"\boxed{2/4}", "number", 0.0),
    ("45", r"\boxed{\frac{90}{2}}", "number", 0.0),
    ("45", r"\boxed{\dfrac{90}{2}}", "number", 0.0),
    ("45", r"\boxed{\tfrac{90}{2}}", "number", 0.0),
    ("45", r"\boxed{90/2}", "number", 0.0),
    ("45", r"\boxed{\frac{45}{1}}", "number", 0.0),
    ("1.5", r"\boxed{\frac{6}{4}}", "number", 0.0),
    ("1.5", r"\boxed{\frac{1.5}{1}}", "number", 0.0),
    ("1.5", r"\boxed{\frac{3}{2}}", "number", 1.0),
    ("1.5", r"\boxed{3/2}", "number", 1.0),
    (r"-\frac{3}{4}", r"\boxed{\frac{-6}{8}}", "number", 0.0),
    (r"\frac{90}{2}", r"\boxed{45}", "number", 1.0),  # the rule binds answers, not gold
    ("0.75", r"\boxed{\tfrac{3}{4}}", "number", 1.0),
    (r"\frac{1}{3}", r"\boxed{0.33}", "number", 1.0),  # mv (rounding rule)
    (r"\frac{1}{3}", r"\boxed{0.333}", "number", 1.0),  # mv
    (r"\frac{1}{3}", r"\boxed{0.3}", "number", 0.0),
    (r"\frac{1}{3}", r"\boxed{0.34}", "number", 0.0),
    (r"\frac{2}{3}", r"\boxed{0.67}", "number", 1.0),  # mv
    (r"-\frac{3}{4}", r"\boxed{-0.75}", "number", 1.0),
    (r"-\frac{3}{4}", r"\boxed{\frac{-3}{4}}", "number", 1.0),
    ("3.14", r"\boxed{3.1416}", "number", 1.0),  # mv
    ("2.5", r"\boxed{2.05}", "number", 0.0),
    # percentages
    ("45", r"\boxed{45\%}", "number", 1.0),  # mv
    ("0.45", r"\boxed{45\%}", "number", 1.0),  # mv
    ("45%", r"\boxed{45}", "number", 1.0),
    ("45%", r"\boxed{0.45}", "number", 1.0),
    ("20", "The answer is 20 percent.", "number", 1.0),
    ("45", r"\boxed{46\%}", "number", 0.0),
    # units
    ("5", r"\boxed{5\text{ cm}}", "number", 1.0),
    ("5", r"\boxed{5 \mbox{ meters}}", "number", 1.0),
    ("90", r"\boxed{90^\circ}", "number", 1.0),
    ("12", "Answer: 12 apples", "number", 1.0),
    ("12", "Answer: 13 apples", "number", 0.0),
    ("3", r"\boxed{x = 3}", "number", 1.0),
    # answers that aren't boxed
    ("45", "The answer is 45.", "number", 1.0),
    ("45", "Final Answer: The final answer is $45$. I hope it is correct.", "number", 1.0),
    ("45", "**Answer:** 45", "number", 1.0),
    ("45", "45", "number", 1.0),
    ("45", "We compute 61 - 16 which is 45 so yes", "number", 0.0),  # mv (no marked answer)
    ("45", "", "number", 0.0),
    # strictness for `number` (math-verify's default accepts the echoes)
    ("45", "61 - 16", "number", 0.0),  # mv
    ("45", r"\boxed{61-16}", "number", 0.0),  # mv
    ("45", r"\boxed{61-16=45}", "number", 0.0),  # mv
    ("45", r"\boxed{44} \boxed{45}", "number", 0.0),
    ("45", r"\boxed{44, 45, 46}", "number", 0.0),
    ("45", "44 or 45 or 46", "number", 0.0),
    ("45", r"\boxed{45} again: \boxed{45}", "number", 1.0),
    # equivalent radicals and expressions
    (r"\frac{\sqrt{2}}{2}", r"\boxed{\frac{1}{\sqrt{2}}}", "expression", 1.0),
    (r"2\sqrt{3}", r"\boxed{\sqrt{12}}", "expression", 1.0),
    (r"3\sqrt{2}", r"\boxed{\sqrt{18}}", "expression", 1.0),
    (r"2\sqrt{3}", r"\boxed{3\sqrt{2}}", "expression", 0.0),
    (r"x^2+2x+1", r"\boxed{(x+1)^2}", "expression", 1.0),
    (r"x^2+2x+1", r"\boxed{(x-1)^2}", "expression", 0.0),
    (r"\frac{1}{2}", r"\boxed{0.5}", "expression", 1.0),
    (r"\pi", r"\boxed{\pi}", "expression", 1.0),
    (r"2\pi", r"The area is $\boxed{2 \pi}$.", "expression", 1.0),
    (r"\frac{\pi}{3}", r"\boxed{60^\circ}", "expression", 0.0),
    # intervals and sets
    (r"(1,2]", r"\boxed{(1, 2]}", "expression", 1.0),
    (r"(1,2]", r"\boxed{[1, 2]}", "expression", 0.0),
    (r"(-\infty, 3)", r"\boxed{(-\infty,3)}", "expression", 1.0),
    (r"[0,1)\cup(2,3]", r"\boxed{[0,1) \cup (2,3]}", "expression", 1.0),
    (r"\{1,2,3\}", r"\boxed{\{3,2,1\}}", "expression", 1.0),
    (r"\{1,2,3\}", r"\boxed{\{1,2\}}", "expression", 0.0),
    ("1,2", r"\boxed{2, 1}", "expression", 1.0),
    # multiple choice
    ("B", r"\boxed{B}", "choice", 1.0),
    ("B", "The answer is (B).", "choice", 1.0),  # mv
    ("B", "Answer: b", "choice", 1.0),  # mv
    ("C", r"\boxed{\text{C}}", "choice", 1.0),
    ("B", r"\boxed{C}", "choice", 0.0),
    ("B", r"\boxed{A, B}", "choice", 0.0),
    ("B", "Option B", "choice", 1.0),  # mv
    ("(D)", r"\boxed{D}", "choice", 1.0),
    # strings
    ("Paris", r"\boxed{\text{paris}}", "string", 1.0),
    ("Paris", r"\boxed{London}", "string", 0.0),
]


def test_table_is_large_and_covers_all_kinds():
    assert len(CASES) >= 60
    assert {t for _, _, t, _ in CASES} >= {"number", "expression", "choice", "string"}
    assert sum(e == 0.0 for *_, e in CASES) >= 15


@pytest.mark.parametrize("gold,completion,answer_type,expected", CASES)
def test_accuracy_table(gold, completion, answer_type, expected):
    assert math_reward(completion, gold, answer_type) == expected


# Rows above where math-verify's default disagrees with the expected value:
# these are the reason for the answer types and the extra rules.
MV_DEFAULT_WRONG = [
    ("45", "61 - 16", 0.0),
    ("45", r"\boxed{61-16=45}", 0.0),
    ("45", "We compute 61 - 16 which is 45 so yes", 0.0),
    ("1000", r"\boxed{1\,000}", 1.0),
    (r"\frac{1}{3}", r"\boxed{0.33}", 1.0),
    ("45", r"\boxed{45\%}", 1.0),
]


def test_math_verify_default_gets_these_wrong():
    """Documents the trap: math-verify on the whole completion (the peers'
    default reward) accepts echoed questions; our `number` type does not."""
    import math_verify as mv

    for gold, completion, expected in MV_DEFAULT_WRONG:
        default = float(mv.verify(mv.parse("$" + gold + "$"), mv.parse(completion)))
        assert default != expected, (gold, completion)
        assert math_reward(completion, gold, "number") == expected


# ---------------------------------------------------------------------------
# Reward hacking: all must score 0 for `number` (gold 45 unless stated).
# ---------------------------------------------------------------------------

HACKS = [
    # echoed questions
    "61 - 16",
    "$61 - 16$",
    "What is 61 - 16?",
    r"\boxed{61 - 16}",
    r"\boxed{61-16}",
    "The answer is 61 - 16.",
    "Answer: 61-16",
    r"\boxed{\frac{90}{2}}".replace("90", "61-16+45"),
    r"\boxed{(61-16)}",
    r"\boxed{61 + (-16)}",
    r"\boxed{9 \cdot 5}",
    r"\boxed{\sqrt{2025}}",
    r"\boxed{45^1}",
    "#### 61 - 16",
    # several boxed answers
    r"\boxed{44} \boxed{45}",
    r"\boxed{45} \boxed{44}",
    r"\boxed{44}\boxed{45}\boxed{46}",
    r"\boxed{44}, \boxed{45}, \boxed{46}",
    r"\boxed{45} or maybe \boxed{46}",
    "\\boxed{45}\n#### 44",
    "#### 44\n#### 45",
    r"\boxed{}\boxed{45}",
    # the gold inside the question restatement
    "61 - 16 = 45? no, 44",
    "61 - 16 = 45",
    r"\boxed{61-16=45}",
    r"\boxed{45=61-16}",
    r"\boxed{61 - 16 = 45}",
    "The answer is 61 - 16 = 45.",
    "The answer is 45? No wait, 44",
    r"\boxed{x = 61 - 16 = 45}",
    # candidate lists
    r"\boxed{44, 45, 46}",
    "44 or 45 or 46",
    r"\boxed{44 \text{ or } 45 \text{ or } 46}",
    r"\boxed{\{44, 45, 46\}}",
    r"\boxed{[44, 45, 46]}",
    r"\boxed{44 | 45 | 46}",
    r"\boxed{44; 45; 46}",
    r"\boxed{44/45/46}",
    r"\boxed{45 \pm 1}",
    r"\boxed{45 \text{ or forty-four}}",
    "44 45 46",
    "The answer is 44 or 45.",
    "The answer is 44 or the answer is 45",
    "Answer: 44\nAnswer: 45",
    "The answer is 44. The answer is 45.",
    r"\boxed{44 \lor 45}",
    r"\boxed{44 \text{ and } 45}",
    r"\boxed{45 \text{ (or 44)}}",
    r"\boxed{45\text{, }46}",
]


@pytest.mark.parametrize("completion", HACKS)
def test_hacking_attempts_score_zero_for_number(completion):
    assert math_reward(completion, "45", "number") == 0.0


def test_hacks_would_fool_the_expression_type():
    """The same strings are why `expression` is documented as gameable."""
    assert math_reward("61 - 16", "45", "expression") == 1.0
    assert math_reward(r"\boxed{61-16}", "45", "expression") == 1.0


@pytest.mark.parametrize(
    "completion",
    [r"so $61 - 16 = \boxed{45}$.", "61 - 16 = 45, so\n#### 45", r"\boxed{45} and again \boxed{ 45 }", "The answer is 45."],
)
def test_legitimate_answers_next_to_the_question_still_count(completion):
    assert math_reward(completion, "45", "number") == 1.0


@settings(max_examples=60, deadline=None)
@given(a=st.integers(0, 10**6), b=st.integers(0, 10**6))
def test_property_sums_echoed_never_score(a, b):
    gold = str(a + b)
    assert math_reward(rf"\boxed{{{a} + {b}}}", gold, "number") == 0.0
    assert math_reward(f"{a} + {b}", gold, "number") == 0.0
    assert math_reward(rf"\boxed{{{a + b}}}", gold, "number") == 1.0
    assert math_reward(rf"\boxed{{{a + b + 1}}}", gold, "number") == 0.0


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300))
def test_property_extraction_total_on_arbitrary_text(text):
    ans = extract_final_answer(text)
    assert ans is None or (isinstance(ans, str) and 0 < len(ans) <= 1000)
    assert math_reward(text, "45", "number") in (0.0, 1.0)
    assert exact_reward(text, "abc", "string") in (0.0, 1.0)


# ---------------------------------------------------------------------------
# Extraction rules
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "completion,expected",
    [
        (r"\boxed{45}", "45"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces do not close the box
        (r"\boxed{\boxed{5}}", "5"),
        (r"\fbox{7}", "7"),
        (r"$\boxed{x=5}$.", "x=5"),
        (r"\boxed {  12 }", "12"),
        (r"\boxed{44} \boxed{45}", None),
        (r"\boxed{}", None),
        (r"\boxed{45", None),  # truncated
        (r"\boxed{45} ... \boxed{4", "45"),
        ("#### 72", "72"),
        ("work\n#### 1,234\n", "1,234"),
        ("The answer is 45. I hope it is correct.", "45"),
        ("Answer: $\\frac{1}{2}$", "\\frac{1}{2}"),
        ("Final Answer: The final answer is $45$. I hope it is correct.", "45"),
        ("The answer is 3.5 m. Next line", "3.5 m"),
        ("The answer is 44. Hmm, the answer is: 45", None),
        ("45", "45"),
        ("  45.  ", "45"),
        ("long reasoning\nwithout a marked answer\n45", None),
        ("", None),
        ("x" * 200, None),
    ],
)
def test_extract_final_answer(completion, expected):
    assert extract_final_answer(completion) == expected


def test_extract_boxed_linear_on_deep_nesting():
    n = 200_000
    text = "\\boxed{" * n + "1" + "}" * n
    import time

    t0 = time.perf_counter()
    got = extract_boxed(text)
    assert time.perf_counter() - t0 < 5.0
    assert got is not None and len(got) == 1


@pytest.mark.parametrize(
    "text,value,percent",
    [
        ("45", Fraction(45), False),
        ("-45", Fraction(-45), False),
        ("+3", Fraction(3), False),
        ("1,234,567", Fraction(1234567), False),
        ("3.50", Fraction(7, 2), False),
        (".5", Fraction(1, 2), False),
        ("1/2", Fraction(1, 2), False),
        (r"\frac{3}{4}", Fraction(3, 4), False),
        (r"-\dfrac{3}{4}", Fraction(-3, 4), False),
        (r"\frac{-1}{2}", Fraction(-1, 2), False),
        (r"\frac{1.5}{3}", Fraction(1, 2), False),
        (r"12\%", Fraction(12), True),
        ("12 percent", Fraction(12), True),
        (r"\$1,000", Fraction(1000), False),
        ("-$5", Fraction(-5), False),
        ("€5", Fraction(5), False),
        ("y = -2", Fraction(-2), False),
        (r"7\text{ apples}", Fraction(7), False),
        ("7 km", Fraction(7), False),
        ("**7**", Fraction(7), False),
    ],
)
def test_parse_numeric_literal_accepts(text, value, percent):
    lit = parse_numeric_literal(text)
    assert lit is not None and lit.value == value and lit.percent == percent


@pytest.mark.parametrize(
    "text",
    ["", "abc", "61-16", "2+3", "1e5", "10^{10}", r"\sqrt{4}", "1,23", "4,5", "x+1", "45 or 46",
     "45 or forty", "1/0", r"\frac{1}{0}", "3 4", "--5", "1" * 500, "π", "45?", "(45)", "45!"],
)
def test_parse_numeric_literal_rejects(text):
    assert parse_numeric_literal(text) is None


def test_normalize_choice():
    assert normalize_choice("B") == "B"
    assert normalize_choice("(b)") == "B"
    assert normalize_choice("Option E") == "E"
    assert normalize_choice("F") is None
    assert normalize_choice("F", choices="ABCDEF") == "F"
    assert normalize_choice("B) 42") is None
    assert normalize_choice("A or B") is None


# ---------------------------------------------------------------------------
# Other reward functions and helpers
# ---------------------------------------------------------------------------


def test_exact_reward():
    assert exact_reward(r"\boxed{ Yes }", "yes") == 1.0
    assert exact_reward("The answer is No integer solutions.", "No integer  solutions") == 1.0
    assert exact_reward(r"\boxed{45}", "45.0") == 0.0
    assert exact_reward(r"\boxed{(B)}", "B", "choice") == 1.0
    assert exact_reward("no answer here\nat all", "x") == 0.0


def test_format_reward():
    assert format_reward(r"... \boxed{3}", "3") == pytest.approx(0.1)
    assert format_reward("no box", "3") == 0.0
    assert format_reward("<think>x</think> 5", "5", pattern=r"<think>.*</think>", bonus=0.2) == pytest.approx(0.2)
    assert format_reward("<think>x</think> 5", "5", pattern=r"<think>.*</think>", mode="fullmatch") == 0.0


def test_reward_functions_registry_and_loader():
    assert set(REWARD_FUNCTIONS) == {"math", "exact", "format", "code_tests"}
    assert load_reward_fn("math") is math_reward
    assert load_reward_fn("rlvr.rewards:exact_reward") is exact_reward
    assert load_reward_fn("reward_fns_for_tests:length_bonus")("abc", "", "number") == pytest.approx(0.03)
    for bad in ["", "nope", ":f", "rlvr.rewards:"]:
        with pytest.raises(ValueError):
            load_reward_fn(bad)
    with pytest.raises(AttributeError):
        load_reward_fn("rlvr.rewards:does_not_exist")
    with pytest.raises(TypeError):
        load_reward_fn("rlvr.rewards:ANSWER_TYPES")


def test_gold_is_validated_per_answer_type():
    with pytest.raises(ValueError):
        math_reward(r"\boxed{1}", r"\sqrt{2}", "number")
    with pytest.raises(ValueError):
        math_reward(r"\boxed{A}", "42", "choice")
    with pytest.raises(ValueError):
        math_reward(r"\boxed{1}", "1", "nonsense")
    # marked gold answers are unwrapped
    assert math_reward(r"\boxed{72}", "She sold 72 clips.\n#### 72", "number") == 1.0
    assert math_reward(r"\boxed{72}", r"\boxed{72}", "number") == 1.0


@pytest.mark.parametrize(
    "answer,answer_type,ok",
    [
        ("45", "number", True),
        ("#### 1,234", "number", True),
        (r"\frac{1}{2}", "number", True),
        (r"\sqrt{2}", "number", False),
        ("", "number", False),
        ("   ", "number", False),
        (r"\frac{\sqrt{2}}{2}", "expression", True),
        ("(1,2]", "expression", True),
        (r"\frac{", "expression", False),
        ("9^{9^{9^{9}}}", "expression", False),
        ("B", "choice", True),
        ("(C)", "choice", True),
        ("42", "choice", False),
        ("Yes", "string", True),
        ("45", "any", True),
        ("45", "integer", False),
        (None, "number", False),
    ],
)
def test_check_answer_parsable(answer, answer_type, ok):
    err = check_answer_parsable(answer, answer_type)
    assert (err is None) == ok, err
    if not ok:
        assert isinstance(err, str) and err


def test_answer_types_constant():
    assert set(ANSWER_TYPES) == {"number", "expression", "choice", "string", "any", "code"}


# ---------------------------------------------------------------------------
# No code execution (in-process; the pool tests repeat this in workers)
# ---------------------------------------------------------------------------


def test_payload_is_live_against_naive_sympify(tmp_path):
    """Control: the injection payload used in the verifier tests really does
    run code when handed to sympy's parser, so those tests mean something."""
    sentinel = tmp_path / "pwned"
    code = textwrap.dedent(
        f"""
        import sympy
        try:
            sympy.sympify("__import__('os').system('touch {sentinel}')")
        except Exception:
            pass
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert sentinel.exists()


def test_no_code_execution_in_process(tmp_path):
    sentinel = tmp_path / "pwned"
    cmd = f"touch {sentinel}"
    payloads = [
        f"__import__('os').system('{cmd}')",
        rf"\boxed{{__import__('os').system('{cmd}')}}",
        rf"\boxed{{\text{{__import__('os').system('{cmd}')}}}}",
        rf"$\mathrm{{\_\_import\_\_}}('os').system('{cmd}')$",
        rf"\boxed{{\operatorname{{exec}}(\text{{import os; os.system('{cmd}')}})}}",
        f"The answer is (lambda: __import__('os').system('{cmd}'))()",
        f"Symbol('x').__class__.__base__.__subclasses__() or __import__('os').system('{cmd}')",
    ]
    for p in payloads:
        for t in ANSWER_TYPES:
            gold = {"choice": "A"}.get(t, "45")
            try:
                math_reward(p, gold, t)
                exact_reward(p, gold, t)
            except ValueError:
                pass
    assert not sentinel.exists()
    assert not os.path.exists(cmd.split()[-1])


@pytest.mark.parametrize("completion, gold, answer_type, reward", [
    # markdown headings are not GSM8K markers: a correct boxed answer scored 0 beside them
    ("### Step 1\nadd\n#### Final Answer\nThe total cost is $\\boxed{18}$.", "18", "number", 1.0),
    ("#### Step 2: answer\nso \\boxed{7}", "7", "number", 1.0),
    ("##### Note\n\\boxed{18}", "18", "number", 1.0),
    ("#### 44\n\\boxed{45}", "45", "number", 0.0),  # a real marker that disagrees still cancels
    # one answer written twice, cosmetically apart, is one answer
    ("\\boxed{18}\n#### $18", "18", "number", 1.0),
    ("\\boxed{18} so \\boxed{\\$18}", "18", "number", 1.0),
    ("\\boxed{18} so \\boxed{18.00}", "18", "number", 1.0),
    ("\\boxed{1,800} so \\boxed{1800}", "1800", "number", 1.0),
    ("\\boxed{3} or \\boxed{4}", "3", "number", 0.0),  # candidates still cancel
    ("\\boxed{5} so \\boxed{5\\%}", "5", "number", 0.0),
    # a reasoning model's tries inside <think> are not its answer
    ("<think>So \\boxed{16}? No, recheck.</think>\n\nThe total is \\boxed{18}.", "18", "number", 1.0),
    ("<think>So \\boxed{16}? No, recheck", "16", "number", 0.0),  # cut before any answer
    # in an expression a single letter after a number is a product, not a unit
    ("\\boxed{5}", "5i", "expression", 0.0),
    ("\\boxed{3i}", "3", "expression", 0.0),
    ("\\boxed{2m}", "2n", "expression", 0.0),
    ("\\boxed{5i}", "5i", "expression", 1.0),
    ("\\boxed{18 \\text{ cm}}", "18", "expression", 1.0),
    # answer phrases in markdown, across a blank line, beside a phrase that is no answer, with delimiters inside
    ("**Answer**: 7", "7", "number", 1.0),
    ("**Final Answer:**\n7", "7", "number", 1.0),
    ("So the final answer is:\n\n$$7$$", "7", "number", 1.0),
    ("We check our answer is reasonable.\nThe answer is 7.", "7", "number", 1.0),
    ("The answer is $18$ dollars.", "18", "number", 1.0),
    ("The answer is \\(18\\) dollars.", "18", "number", 1.0),
    ("The answer is 44. The answer is 45.", "45", "number", 0.0),  # two answers still cancel
    ("The answer is $5$ or $6$", "5", "number", 0.0),
    ("The answer is yes", "yes", "string", 1.0),
])
def test_grading_of_formats_a_review_found_misread(completion, gold, answer_type, reward):
    assert math_reward(completion, gold, answer_type) == reward


# ---- found surviving mutants (2026-12-07): each pins a rule no earlier test reached --------------------


@pytest.mark.parametrize(
    "completion, gold, answer_type, kwargs, expected",
    [
        (r"\boxed{45}", "0.45", "number", {}, 0.0),  # only a number written with % is also read as /100
        (r"\boxed{5}", "0.05", "number", {}, 0.0),
        (r"\boxed{F}", "F", "choice", {"choices": "ABCDEF"}, 1.0),  # the prediction read against the configured letters
        (r"\boxed{2x = 4}", "24", "number", {}, 0.0),  # an equation is not one number glued together
        (r"\boxed{45 OR FIFTY}", "45", "number", {}, 0.0),  # a hedge in capitals is still a hedge
        ("Answer: 45 Final answer: 45", "45", "number", {}, 1.0),  # one answer said twice is not ambiguous
    ],
)
def test_math_reward_rules_pinned_by_hand(completion, gold, answer_type, kwargs, expected):
    assert math_reward(completion, gold, answer_type, **kwargs) == expected


def test_an_escaped_brace_is_not_a_box_s_brace():
    assert extract_boxed(r"\boxed{f(x)=\left\{ x \right.}") == [r"f(x)=\left\{ x \right."]


def test_the_answer_is_read_after_the_last_think_block():
    assert extract_final_answer(r"<think>a</think> \boxed{44} <think>b</think> \boxed{45}") == "45"


def test_a_variable_prefix_is_only_at_the_start():
    assert parse_numeric_literal("2x=45") is None


def test_format_reward_s_match_mode_is_anchored_at_the_start():
    assert format_reward(r"x \boxed{1}", mode="match") == 0.0 and format_reward(r"\boxed{1}", mode="match") == 0.1


def test_the_latex_screen_counts_nesting_and_unbraced_exponents():
    from rlvr.rewards.builtin import _dangerous_latex

    assert _dangerous_latex("(" * 11 + "1" + ")" * 11) == "nesting"
    assert _dangerous_latex("10^9999999999") == "huge exponent"  # math-verify reads 2^12 as 2**12


def test_a_reward_term_s_weight_must_be_finite():
    from rlvr.rewards import coerce_spec

    for weight in (float("nan"), float("inf")):
        with pytest.raises(ValueError):
            coerce_spec({"fn": "math", "weight": weight})


def test_a_user_reward_that_returns_a_bool_is_refused_not_scored_one():
    from rlvr.rewards.calling import BadRewardValue, call_reward

    with pytest.raises(BadRewardValue):
        call_reward(lambda c, a, t: True, "rlvr", "x", "y", "number")


def test_program_output_ignores_trailing_spaces_on_each_line():
    from rlvr.rewards.code import _same_output

    assert _same_output(b"1 2 \n3 4 \n", "1 2\n3 4\n")
    assert not _same_output(b"1 2\n3 5\n", "1 2\n3 4\n")


def test_call_reward_refuses_a_dict_without_score():
    from rlvr.rewards.calling import BadRewardValue, call_reward

    with pytest.raises(BadRewardValue, match="without 'score'"):
        call_reward(lambda c, a, t: {"outcome": "ok"}, "rlvr", "x", "y", "number")


def test_trl_reward_returning_two_values_for_one_completion_is_refused():
    from rlvr.rewards.calling import BadRewardValue, call_reward

    with pytest.raises(BadRewardValue, match="2 values for 1 completion"):
        call_reward(lambda prompts, completions, **kw: [1.0, 0.0], "trl", "x", "y", "number")


def test_trl_reward_may_return_a_numpy_array():
    """TRL iterates what a reward function returns, so a ported one ending in np.array(...) works there;
    here it was refused and every item scored 0."""
    import numpy as np

    from rlvr.rewards.calling import BadRewardValue, call_reward

    assert call_reward(lambda prompts, completions, **kw: np.array([0.5]), "trl", "x", "4", "number", prompt="p") == (0.5, None, None)
    with pytest.raises(BadRewardValue, match="2 values for 1 completion"):
        call_reward(lambda prompts, completions, **kw: np.array([0.5, 1.0]), "trl", "x", "4", "number")


def test_trl_reward_of_a_chat_row_gets_messages_as_trl_gives_a_conversational_dataset(tmp_path):
    """TRL passes a conversational row's prompt as its messages and each completion as
    [{"role": "assistant", "content": ...}]; rlvr passed strings, so a ported `c[0]["content"]` raised on
    every item (reward 0). A string row's stay strings."""
    import json

    from rlvr.data import load_problems
    from rlvr.rewards.calling import call_reward
    from rlvr.sandbox.messages import ScoreRequest, coerce_request

    path = tmp_path / "d.jsonl"
    rows = [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "answer": "4"},
            {"prompt": "3+3?", "answer": "6"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chat, plain = load_problems({"source": "file", "path": str(path), "format": "trl"})
    seen = []

    def fn(prompts, completions, **kw):
        seen.append((prompts[0], completions[0]))
        return [1.0]

    for problem in (chat, plain):
        request = coerce_request(ScoreRequest.for_problem("so 4", problem))  # as the pool takes it
        call_reward(fn, "trl", request.completion, request.answer, request.answer_type, request.prompt, request.meta)
    assert seen == [([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], [{"role": "assistant", "content": "so 4"}]),
                    ("3+3?", "so 4")]


def test_a_data_column_named_like_a_reward_kwarg_leaves_the_kwarg_alone():
    """A row {prompt, answer, tolerance} under a term with kwargs {tolerance: 0.1} was "got multiple
    values for keyword argument 'tolerance'" on every item once rlvr rows kept their columns."""
    from rlvr.rewards.calling import call_reward

    def fn(prompts, completions, tolerance, **kw):
        return [tolerance]

    assert call_reward(fn, "trl", "x", "4", "number", prompt="p", meta={"tolerance": [9]}, kwargs={"tolerance": 0.1})[0] == 0.1


def test_trl_reward_gets_the_answer_column_when_the_row_has_none():
    from rlvr.rewards.calling import call_reward

    def fn(prompts, completions, answer, **kw):
        return [float(completions[0] == answer[0])]

    assert call_reward(fn, "trl", "42", "42", "number", prompt="q", meta={"level": 3}) == (1.0, None, None)


def test_trl_reward_meta_cannot_override_prompts_or_completions():
    from rlvr.rewards.calling import call_reward

    def fn(prompts, completions, **kw):
        return [float(prompts == ["q"] and completions == ["c"])]

    assert call_reward(fn, "trl", "c", "a", "number", prompt="q", meta={"prompts": "P", "completions": "C"})[0] == 1.0


def test_verl_reward_gets_an_empty_data_source_when_the_row_has_none():
    from rlvr.rewards.calling import call_reward

    def fn(data_source, solution_str, ground_truth, extra_info):
        assert isinstance(data_source, str)
        return float(solution_str == ground_truth)

    assert call_reward(fn, "verl", "7", "7", "number", meta={"data_source": None}) == (1.0, None, None)


def test_a_term_s_output_is_capped_and_its_outcome_too():
    from rlvr.rewards.calling import MAX_OUTPUT_CHARS, call_reward

    score, outcome, output = call_reward(lambda c, a, t: {"score": 1, "outcome": "o" * 100, "output": "x" * 10_000}, "rlvr", "c", "a", "number")
    assert score == 1.0 and len(outcome) == 40 and len(output) == MAX_OUTPUT_CHARS


def test_load_reward_fn_strips_the_spec():
    assert load_reward_fn("  math ") is math_reward
    assert load_reward_fn(" rlvr.rewards:exact_reward ") is exact_reward


def test_expression_screen_limits():
    from rlvr.rewards.builtin import _dangerous_latex

    assert _dangerous_latex("2^{12345}") is None and _dangerous_latex("2^{123456}") == "huge exponent"
    assert _dangerous_latex("999!") is None and _dangerous_latex("1000!") == "huge factorial"
    assert _dangerous_latex("x^2+" * 16) is None and _dangerous_latex("x^2+" * 17) == "powers"


def test_an_empty_gold_never_matches_an_empty_answer():
    assert exact_reward("\\boxed{\\text{}}", "\\text{}") == 0.0


def test_format_shapes_and_does_not_decide_correctness():
    from rlvr.rewards import coerce_spec, correctness_terms

    assert correctness_terms([coerce_spec("format"), coerce_spec("math")]) == [1]
