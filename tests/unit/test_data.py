import json
import logging

import pytest

from rlvr.data import (
    DataError,
    DataSplitConfig,
    Problem,
    PromptStream,
    build_messages,
    load_problems,
)

# --------------------------------------------------------------------------
# reasoning_gym
# --------------------------------------------------------------------------


def test_reasoning_gym_is_seeded_and_deterministic():
    a = load_problems({"source": "reasoning_gym", "size": 50, "seed": 3})
    b = load_problems(DataSplitConfig(size=50, seed=3))
    c = load_problems({"size": 50, "seed": 4})
    assert len(a) == 50
    assert a == b
    assert [p.question for p in a] != [p.question for p in c]
    assert all(p.answer_type == "number" for p in a)
    assert a[0].uid == "chain_sum/3/0"
    assert len({p.uid for p in a}) == 50
    # default task: two 2-digit terms; the gold answer is the arithmetic result
    for p in a[:10]:
        expr = p.question.split(":", 1)[1].rstrip(" =")
        x, op, y = expr.split()
        assert 10 <= int(x) <= 99 and 10 <= int(y) <= 99
        assert int(p.answer) == (int(x) + int(y) if op == "+" else int(x) - int(y))


def test_neighbouring_seeds_do_not_overlap_and_exclude_makes_heldout_exact():
    # reasoning-gym builds item i from Random(seed + i): raw seeds 0 and 1 would
    # give the same items shifted by one.  Derived seeds keep splits apart.
    train = load_problems({"size": 1000, "seed": 0})
    train_q = {p.question for p in train}
    heldout = load_problems({"size": 200, "seed": 1})
    overlap = sum(p.question in train_q for p in heldout)
    assert overlap < 0.1 * len(heldout)  # chance collisions only (16,200 possible questions)
    exact = load_problems({"size": 200, "seed": 1}, exclude=train_q)
    assert len(exact) == 200
    assert not any(p.question in train_q for p in exact)
    # the kept ones are the same items, in the same order, as without exclusion
    kept = [p for p in heldout if p.question not in train_q]
    assert exact[: len(kept)] == kept


def test_reasoning_gym_task_mix_is_seeded():
    tasks = [
        {"name": "chain_sum", "weight": 3.0, "kwargs": {"min_terms": 2, "max_terms": 2}},
        {"name": "basic_arithmetic", "weight": 1.0, "kwargs": {}},
    ]
    a = load_problems({"tasks": tasks, "size": 40, "seed": 7})
    b = load_problems({"tasks": tasks, "size": 40, "seed": 7})
    assert a == b
    names = [p.uid.split("/")[0] for p in a]
    assert set(names) == {"chain_sum", "basic_arithmetic"}
    assert names.count("chain_sum") > names.count("basic_arithmetic")


def test_config_errors():
    with pytest.raises(ValueError, match="reasoning_gym.*file.*champ"):
        load_problems({"source": "hf_hub"})
    with pytest.raises(ValueError, match="unknown data config keys.*'sise'"):
        load_problems({"sise": 10})
    with pytest.raises(ValueError, match="set 'seed' on the data split"):
        load_problems({"tasks": [{"name": "chain_sum", "kwargs": {"seed": 1}}], "size": 5})
    with pytest.raises(ValueError, match="needs data.path"):
        load_problems({"source": "file"})


def test_limit():
    assert len(load_problems({"size": 20, "limit": 5})) == 5


# --------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------

ROWS = [
    {"prompt": "What is 6 * 7?", "answer": "42"},
    {"prompt": "Natalia sold 48 clips in April and half as many in May. How many in total?",
     "answer": "In May she sold 48/2 = 24 clips.\nIn total 48 + 24 = 72.\n#### 72"},
    {"prompt": "A price of 1,200 dollars rises by 5. New price?", "answer": "#### 1,205"},
    {"prompt": "Half of 3?", "answer": 1.5},
    {"prompt": "Two times 2.5?", "answer": 5.0},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_with_gsm8k_answers(tmp_path):
    path = write_jsonl(tmp_path / "gsm8k.jsonl", ROWS)
    probs = load_problems({"source": "file", "path": str(path)})
    assert [p.answer for p in probs] == ["42", "72", "1,205", "1.5", "5"]
    assert probs[1].question.startswith("Natalia")
    assert [p.uid for p in probs] == [f"file:gsm8k.jsonl:{i}" for i in range(5)]
    assert all(p.answer_type == "number" for p in probs)


def test_json_list_and_custom_keys(tmp_path):
    path = tmp_path / "mc.json"
    path.write_text(json.dumps([{"q": "Pick one: (A) 1 (B) 2", "label": "B"}, {"q": "Again", "label": "(A)"}]))
    probs = load_problems({"source": "file", "path": str(path), "prompt_key": "q", "answer_key": "label",
                           "answer_type": "choice"})
    assert [(p.question, p.answer, p.answer_type) for p in probs] == [
        ("Pick one: (A) 1 (B) 2", "B", "choice"), ("Again", "(A)", "choice")]
    bad = tmp_path / "obj.json"
    bad.write_text(json.dumps({"data": []}))
    with pytest.raises(DataError, match="list of objects"):
        load_problems({"source": "file", "path": str(bad)})


def test_parquet(tmp_path):
    import pyarrow as pa  # a dependency (requirements/cpu.txt)
    import pyarrow.parquet as pq

    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS[:3]), path)
    probs = load_problems({"source": "file", "path": str(path)})
    assert [p.answer for p in probs] == ["42", "72", "1,205"]


def test_missing_file_and_bad_suffix(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_problems({"source": "file", "path": str(missing)})
    csv = tmp_path / "x.csv"
    csv.write_text("prompt,answer\n")
    with pytest.raises(ValueError, match="unsupported data file type '.csv'"):
        load_problems({"source": "file", "path": str(csv)})


BAD_ROWS = [
    ({"prompt": "ok?", "answer": "1"}, None),
    ({"prompt": "no answer"}, "missing answer key 'answer'"),
    ({"prompt": "null answer", "answer": None}, "missing answer"),
    ({"prompt": 17, "answer": "1"}, "prompt must be a string, got int"),
    ({"prompt": "   ", "answer": "1"}, "empty prompt"),
    ({"prompt": "echo", "answer": "61 - 16"}, "cannot be used as answer_type='number'"),
    ({"prompt": "gsm8k but empty", "answer": "work\n#### "}, "empty answer"),
    ({"prompt": "bool", "answer": True}, "must be a string or a number"),
    (["not", "an", "object"], "expected an object"),
]


@pytest.mark.parametrize("row_index", range(1, len(BAD_ROWS)))
def test_bad_row_raises_naming_file_and_row(tmp_path, row_index):
    row, reason = BAD_ROWS[row_index]
    path = write_jsonl(tmp_path / "bad.jsonl", [BAD_ROWS[0][0], row])
    with pytest.raises(DataError) as e:
        load_problems({"source": "file", "path": str(path)})
    msg = str(e.value)
    assert str(path) in msg and "row 1 (line 2)" in msg and reason in msg


def test_invalid_json_line_raises(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", "answer": \n')
    with pytest.raises(DataError, match=r"broken.jsonl: row 2 \(line 3\): invalid JSON"):
        load_problems({"source": "file", "path": str(path)})


def test_skip_bad_rows_logs_each_and_continues(tmp_path, caplog):
    path = write_jsonl(tmp_path / "bad.jsonl", [r for r, _ in BAD_ROWS] + [{"prompt": "last", "answer": "#### 9"}])
    with caplog.at_level(logging.WARNING, logger="rlvr.data"):
        probs = load_problems({"source": "file", "path": str(path), "skip_bad_rows": True})
    assert [(p.uid, p.answer) for p in probs] == [("file:bad.jsonl:0", "1"), (f"file:bad.jsonl:{len(BAD_ROWS)}", "9")]
    skipped = [r.getMessage() for r in caplog.records if "skipping bad row" in r.getMessage()]
    assert len(skipped) == len(BAD_ROWS) - 1
    for i, (_, reason) in enumerate(BAD_ROWS[1:], start=1):
        assert any(f"row {i} (line {i + 1}): " in m and reason in m for m in skipped), reason


def test_file_exclude(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    probs = load_problems({"source": "file", "path": str(path)}, exclude={"What is 6 * 7?"})
    assert [p.uid for p in probs] == ["file:d.jsonl:1", "file:d.jsonl:2", "file:d.jsonl:3", "file:d.jsonl:4"]


def test_file_exclude_ignores_whitespace_and_says_why_nothing_is_left(tmp_path):
    """Exact text let "Q\\n" (a training question with a newline) into the held-out split; and an
    eval file that is the training file failed with a bare "no usable problems"."""
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    probs = load_problems({"source": "file", "path": str(path)}, exclude={"What is  6 * 7?\n"})
    assert [p.uid for p in probs][0] == "file:d.jsonl:1"
    with pytest.raises(DataError, match=r"5 rows left out as training questions: is this the training file\?"):
        load_problems({"source": "file", "path": str(path)}, exclude={r["prompt"] for r in ROWS})


def test_task_specs_that_would_be_misread_or_crash_name_the_task():
    """A mapping of tasks was iterated as its keys (weights and kwargs silently dropped); kwargs
    reasoning-gym refuses raised its own TypeError/AssertionError, a traceback."""
    with pytest.raises(DataError, match="must be a list of task specs"):
        load_problems({"tasks": {"products": {"weight": 1, "kwargs": {"min_digits": 3}}}, "size": 5})
    with pytest.raises(DataError, match="task 'chain_sum' with kwargs .*min_digitz"):
        load_problems({"tasks": [{"name": "chain_sum", "kwargs": {"min_digitz": 2}}], "size": 5})
    with pytest.raises(DataError, match="task 'chain_sum' with kwargs .*max_digits must be >= min_digits"):
        load_problems({"tasks": [{"name": "chain_sum", "kwargs": {"min_digits": 5, "max_digits": 2}}], "size": 5})
    with pytest.raises(DataError, match="kwargs must be a mapping"):
        load_problems({"tasks": [{"name": "chain_sum", "kwargs": [1, 2]}], "size": 5})


def test_a_question_repeated_with_another_answer_is_kept_and_said(tmp_path, caplog):
    path = write_jsonl(tmp_path / "dup.jsonl", [{"prompt": "Q?", "answer": "1"}, {"prompt": "Q?", "answer": "1"}, {"prompt": "Q?", "answer": "2"}])
    with caplog.at_level(logging.WARNING):
        assert len(load_problems({"source": "file", "path": str(path)})) == 3
    assert "1 rows repeat an earlier row's question with another answer, e.g. row 0 (line 1) and row 2 (line 3)" in caplog.text


# --------------------------------------------------------------------------
# champ
# --------------------------------------------------------------------------


def test_champ_loads_270_problems():
    probs = load_problems({"source": "champ"})
    assert len(probs) == 270
    assert len({p.uid for p in probs}) == 270
    by_uid = {p.uid: p for p in probs}
    p = by_uid["champ:P_Combinatorics_1"]
    assert p.question.startswith("Let a string consist of digit 1, 2, 3") and p.answer == "239"
    assert p.answer_type == "number"
    # "C(10, 5), or equivalently 252" keeps the simplest equivalent form
    assert (by_uid["champ:P_Combinatorics_2"].answer, by_uid["champ:P_Combinatorics_2"].answer_type) == ("252", "number")
    assert (by_uid["champ:P_Combinatorics_6"].answer, by_uid["champ:P_Combinatorics_6"].answer_type) == ("2^(n-1)", "expression")
    assert by_uid["champ:P_Combinatorics_17"].answer_type == "string"  # "No"
    # CHAMP's C(n, k), which math-verify read as a product, as a binomial coefficient
    binomial = by_uid["champ:P_Combinatorics_16"]
    assert (binomial.answer, binomial.answer_type) == (r"\binom{n+1}{2m+1}", "expression")
    from rlvr.rewards import math_reward

    assert math_reward(r"So the count is \boxed{\binom{n+1}{2m+1}}.", binomial.answer, "expression") == 1.0
    assert math_reward(r"So the count is \boxed{\frac{(n+1)!}{(2m+1)!(n-2m)!}}.", binomial.answer, "expression") == 1.0
    assert {p.answer_type for p in probs} == {"number", "expression", "string"}


def test_champ_limit_samples_across_categories():
    a = load_problems({"source": "champ", "limit": 40, "seed": 0})
    assert len(a) == 40 and a == load_problems({"source": "champ", "limit": 40, "seed": 0})
    categories = {p.uid.split(":")[1].rsplit("_", 1)[0] for p in a}
    assert len(categories) >= 4  # a prefix would be all P_Combinatorics


# --------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------


def test_build_messages():
    p = Problem("u", "What is 1 + 1?", "2")
    shots = [{"question": "What is 3 + 4?", "response": "\\boxed{7}"}]
    assert build_messages(p, None, None) == [{"role": "user", "content": "What is 1 + 1?"}]
    assert build_messages(p, "Be brief.", shots) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 3 + 4?"},
        {"role": "assistant", "content": "\\boxed{7}"},
        {"role": "user", "content": "What is 1 + 1?"},
    ]
    with pytest.raises(ValueError, match="fewshot\\[0\\]"):
        build_messages(p, None, [{"question": "q"}])


# --------------------------------------------------------------------------
# prompt stream
# --------------------------------------------------------------------------


def _problems(n):
    return [Problem(f"p{i}", f"q{i}", str(i)) for i in range(n)]


def test_stream_yields_each_problem_once_per_epoch_and_spans_epochs():
    probs = _problems(10)
    s = PromptStream(probs, seed=5)
    first = s.next(4) + s.next(4)
    assert (s.epoch, s.position) == (0, 8)
    spanning = s.next(4)  # 2 from epoch 0, then 2 from epoch 1
    assert (s.epoch, s.position) == (1, 2)
    epoch0 = first + spanning[:2]
    assert sorted(p.uid for p in epoch0) == sorted(p.uid for p in probs)
    epoch1 = spanning[2:] + s.next(8)
    assert sorted(p.uid for p in epoch1) == sorted(p.uid for p in probs)
    assert [p.uid for p in epoch0] != [p.uid for p in epoch1]  # reshuffled with seed + epoch
    # a batch larger than the dataset spans several epochs
    big = s.next(25)
    assert len(big) == 25 and (s.epoch, s.position) == (4, 5)
    assert s.next(0) == []
    # seeded: the same seed gives the same stream
    t = PromptStream(probs, seed=5)
    assert [p.uid for p in t.next(12)] == [p.uid for p in first + spanning]
    u = PromptStream(probs, seed=5, shuffle=False)
    assert [p.uid for p in u.next(12)] == [f"p{i}" for i in list(range(10)) + [0, 1]]


@pytest.mark.parametrize("consumed", [0, 3, 7, 10, 20, 23])
def test_stream_resume_continues_exactly(consumed):
    # 10 and 20 stop exactly at the end of an epoch
    probs = _problems(10)
    a = PromptStream(probs, seed=1)
    a.next(consumed)
    state = json.loads(json.dumps(a.state_dict()))  # checkpoints may go through JSON
    expected = [a.next(3) for _ in range(6)]
    b = PromptStream(probs, seed=1)
    b.load_state_dict(state)
    assert (b.epoch, b.position) == (consumed // 10, consumed % 10)
    assert [b.next(3) for _ in range(6)] == expected


def test_stream_rejects_state_of_another_dataset():
    a = PromptStream(_problems(10), seed=1)
    with pytest.raises(ValueError, match="num_problems"):
        PromptStream(_problems(11), seed=1).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="seed"):
        PromptStream(_problems(10), seed=2).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="at least one problem"):
        PromptStream([], seed=0)


def test_resume_refuses_edited_prompts_before_any_role_starts(tmp_path):
    """Edited rows of a file (or a task's new kwargs) keep every uid: the content fingerprint tells,
    and `rlvr train` refuses with a config error before starting Ray, not a traceback after."""
    import torch

    from rlvr.config import ConfigError
    from rlvr.train.state import check_resume_data

    saved = PromptStream(_problems(10), seed=1).state_dict()
    edited = _problems(10)
    edited[3] = Problem("p3", "q3, reworded", "3")
    assert "content" in PromptStream(edited, seed=1).mismatch(saved)
    old_state = {k: v for k, v in saved.items() if k != "content"}  # a checkpoint from before the content fingerprint
    assert PromptStream(edited, seed=1).mismatch(old_state) is None
    torch.save({"stream": saved}, tmp_path / "trainer_state.pt")
    with pytest.raises(ConfigError, match="training prompts differ from the checkpoint's: content"):
        check_resume_data(tmp_path, PromptStream(edited, seed=1))
    check_resume_data(tmp_path, PromptStream(_problems(10), seed=1))  # the same prompts: no error


def test_v05_warm_up_prompts_leave_training_with_every_copy_of_their_questions():
    """Warm-up prompts were held out by index: a generated set repeats questions, so copies stayed
    in training (15 of data=mix's 64), whose step-0 success rate the value context already held."""
    from rlvr.config import ConfigError
    from rlvr.train.loop import split_warmup

    problems = [Problem(uid=f"u{i}", question=f"What is {i % 6} + 1?", answer=str(i % 6 + 1)) for i in range(24)]
    train, warmup = split_warmup(problems, 3, seed=0)
    assert len(warmup) == 3 and len({p.uid for p in warmup}) == 3
    asked = {p.question for p in warmup}
    assert train and not asked & {p.question for p in train}
    assert {p.uid for p in train} == {p.uid for p in problems if p.question not in asked}
    assert split_warmup(problems, 3, seed=0) == (train, warmup)  # every start the same
    with pytest.raises(ConfigError, match="warm-up prompts' questions are all"):
        split_warmup([Problem(uid=f"s{i}", question="What is 1 + 1?", answer="2") for i in range(4)], 1, seed=0)


def test_a_task_of_weight_zero_is_refused_and_a_nan_answer_cell_is_not_the_string_nan():
    """Found by mutation (2026-12-07): a weight-0 task would never be drawn; a Parquet or pandas
    missing value became the gold "nan" for answer_type=string."""
    from rlvr.data.problems import _answer_text

    with pytest.raises(DataError, match="weight"):
        load_problems({"tasks": [{"name": "chain_sum", "weight": 0}], "size": 5})
    assert _answer_text(float("nan"), "string") == (None, "answer is not finite: nan")


@pytest.mark.parametrize("epoch, position", [(0, 5), (-1, 0)])
def test_stream_refuses_a_position_or_epoch_out_of_range(epoch, position):
    s = PromptStream(_problems(5), seed=1)
    d = s.state_dict() | {"epoch": epoch, "position": position}
    with pytest.raises(ValueError, match="bad PromptStream state"):
        s.load_state_dict(d)


def test_stream_refuses_a_state_with_another_shuffle():
    d = PromptStream(_problems(5), seed=1, shuffle=False).state_dict()
    with pytest.raises(ValueError, match="shuffle"):
        PromptStream(_problems(5), seed=1, shuffle=True).load_state_dict(d)


def test_content_fingerprint_tells_apart_text_moved_between_question_and_answer():
    a = [Problem("u0", "ab", "c")]
    b = [Problem("u0", "a", "bc")]
    assert PromptStream(a, 0).mismatch(PromptStream(b, 0).state_dict()) is not None


def test_content_fingerprint_covers_the_data_s_earlier_turns():
    a = [Problem("u0", "q", "1", context=(("system", "be brief"),))]
    b = [Problem("u0", "q", "1", context=(("system", "be verbose"),))]
    assert PromptStream(a, 0).mismatch(PromptStream(b, 0).state_dict()) is not None


def test_every_system_turn_of_the_data_is_kept():
    p = Problem("u0", "q", "1", context=(("system", "one"), ("system", "two")))
    assert build_messages(p, "ignored")[0] == {"role": "system", "content": "one\n\ntwo"}


def test_answer_text_of_numbers():
    import decimal

    from rlvr.data.problems import _answer_text

    assert _answer_text(decimal.Decimal("1.500"), "number") == ("1.5", None)
    assert _answer_text(1e-07, "number") == ("0.0000001", None)
    assert _answer_text(float("inf"), "number")[0] is None and "not finite" in _answer_text(float("-inf"), "number")[1]
    assert _answer_text(True, "number")[0] is None


def test_a_chat_prompt_must_end_with_the_user_s_question():
    from rlvr.data.problems import RowErrors, make_problem

    chat = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    errors = RowErrors("src", skip=True)
    assert make_problem("u", chat, "1", "number", errors, "row 0") is None and errors.skipped == 1
    p = make_problem("u", chat + [{"role": "user", "content": "Q2"}], "1", "number", errors, "row 1")
    assert p.question == "Q2" and p.context == (("user", "Q"), ("assistant", "A"))


def test_skipped_rows_are_counted_in_the_summary(caplog):
    from rlvr.data.problems import RowErrors

    errors = RowErrors("src", skip=True)
    errors.bad("row 1", "empty prompt")
    errors.bad("row 2", "empty prompt")
    with caplog.at_level("WARNING"):
        errors.summary(5)
    assert errors.skipped == 2 and "skipped 2 bad rows, kept 5" in caplog.text


def test_derived_seeds_are_pinned():
    """Every split's items come from these seeds: a change silently swaps every dataset for a given seed."""
    from rlvr.data.problems import derived_seed

    assert (derived_seed("code_tasks", 0, 0), derived_seed("chain_sum", 0), derived_seed("mix", 1)) == (91061079, 823485242, 1207222905)


def test_seed_and_size_belong_to_the_split_not_the_task():
    from rlvr.data.generators import _task_specs

    for k in ("seed", "size"):
        with pytest.raises(ValueError, match=f"set '{k}' on the data split"):
            _task_specs([{"name": "chain_sum", "kwargs": {k: 3}}], "number")


def test_duplicate_task_labels_are_refused():
    from rlvr.data.generators import _task_specs

    with pytest.raises(ValueError, match="duplicate reasoning-gym task labels"):
        _task_specs(["chain_sum", {"name": "chain_sum", "weight": 2}], "number")
    assert [s["label"] for s in _task_specs(["chain_sum", {"name": "chain_sum", "label": "hard"}], "number")] == ["chain_sum", "hard"]


def test_two_levels_of_one_task_draw_different_items():
    from rlvr.data.generators import load_reasoning_gym

    cfg = DataSplitConfig(tasks=[{"name": "chain_sum", "label": "a"}, {"name": "chain_sum", "label": "b"}], size=40, seed=0)
    problems = load_reasoning_gym(cfg, None)
    a = [p.question for p in problems if p.uid.startswith("a/")]
    b = [p.question for p in problems if p.uid.startswith("b/")]
    assert a and b and len(set(a) & set(b)) <= 2


def test_champ_answer_types():
    from rlvr.data.champ import _champ_answer

    assert _champ_answer("Yes") == ("Yes", "string")
    assert _champ_answer("C(10, 5), or equivalently 252") == ("252", "number")
    assert _champ_answer("C(n+1, 2m+1)") == ("\\binom{n+1}{2m+1}", "expression")


def test_a_task_s_own_answer_type_wins():
    from rlvr.data.generators import _task_specs

    specs = _task_specs([{"name": "word_sorting", "answer_type": "string"}, "chain_sum"], "number")
    assert [s["answer_type"] for s in specs] == ["string", "number"]


def test_an_infinite_task_weight_is_refused_naming_the_task():
    """`not weight > 0` let inf through; random.choices then failed as the data loaded, naming no task."""
    from rlvr.data.generators import _task_specs

    with pytest.raises(ValueError, match="task 'chain_sum': weight must be positive and finite"):
        _task_specs([{"name": "chain_sum", "weight": float("inf")}, {"name": "leg_counting"}], "number")
