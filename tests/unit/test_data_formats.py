"""data=file reads the peers' formats as they are: verl's parquet, TRL's rows, save_to_disk folders."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlvr.data import DataError, build_messages, load_problems

VERL_ROWS = [
    {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 6 * 7?"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "42"},
        "extra_info": {"split": "train", "index": 0},
    },
    {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "user", "content": "What is 2 + 3?"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "5"},
        "extra_info": {"split": "train", "index": 1},
    },
]


def test_verl_parquet_loads_with_its_chat_prompt_and_reward_fields(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(VERL_ROWS), path)
    first, second = load_problems({"source": "file", "path": str(path)})
    assert (first.question, first.answer, first.context) == ("What is 6 * 7?", "42", (("system", "Answer briefly."),))
    assert first.meta == {"data_source": "openai/gsm8k", "extra_info": {"split": "train", "index": 0}}
    # the data's system message wins over data.system_prompt; without one the config's is used
    assert build_messages(first, "Use \\boxed{}.") == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 6 * 7?"},
    ]
    assert build_messages(second, "Use \\boxed{}.")[0] == {"role": "system", "content": "Use \\boxed{}."}


def test_trl_rows_string_or_chat_prompt_answer_or_solution(tmp_path):
    path = tmp_path / "trl.jsonl"
    rows = [
        {"prompt": "What is 1 + 1?", "solution": "We add: 1 + 1 = \\boxed{2}.", "level": "Level 1"},
        {"prompt": [{"role": "user", "content": "What is 3 + 4?"}], "answer": 7},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    a, b = load_problems({"source": "file", "path": str(path)})
    assert (a.question, a.answer, a.meta["level"]) == ("What is 1 + 1?", "2", "Level 1")
    assert (b.question, b.answer, b.context) == ("What is 3 + 4?", "7", ())


def test_openai_messages_rows_up_to_the_last_user_turn(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 * 4?"},
                      {"role": "assistant", "content": "8"}], "answer": "8"},
        {"messages": [{"role": "user", "content": "What is 1 + 2?"}], "solution": "\\boxed{3}", "source": "x"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    a, b = load_problems({"source": "file", "path": str(path)})
    assert (a.question, a.answer, a.context) == ("What is 2 * 4?", "8", (("system", "Be brief."),))  # the reference reply is not shown
    assert (b.question, b.answer, b.meta) == ("What is 1 + 2?", "3", {"solution": "\\boxed{3}", "source": "x"})


def test_save_to_disk_folder_and_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_list(VERL_ROWS)
    ds.save_to_disk(str(tmp_path / "one"))
    assert [p.answer for p in load_problems({"source": "file", "path": str(tmp_path / "one")})] == ["42", "5"]
    DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match=r"splits \['train', 'test'\].*dict/train"):
        load_problems({"source": "file", "path": str(tmp_path / "dict")})
    assert len(load_problems({"source": "file", "path": str(tmp_path / "dict" / "train")})) == 2
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one written by datasets"):
        load_problems({"source": "file", "path": str(tmp_path / "plain")})


def test_format_override_and_bad_rows_name_the_fault(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": "ok?"}], "reward_model": {"ground_truth": "1"}},
        {"prompt": [{"role": "user", "content": "no truth"}], "reward_model": {"style": "rule"}},
        {"prompt": [{"role": "assistant", "content": "ends with the assistant"}], "reward_model": {"ground_truth": "1"}},
        {"prompt": [{"role": "user", "content": 3}], "reward_model": {"ground_truth": "1"}},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match="row 1.*reward_model.ground_truth"):
        load_problems({"source": "file", "path": str(path)})
    kept = load_problems({"source": "file", "path": str(path), "skip_bad_rows": True})
    assert [p.question for p in kept] == ["ok?"]
    with pytest.raises(DataError, match="trl row needs 'answer' or 'solution'"):
        load_problems({"source": "file", "path": str(path), "format": "trl"})
    with pytest.raises(ValueError, match="unknown data format"):
        load_problems({"source": "file", "path": str(path), "format": "alpaca"})




@pytest.mark.parametrize("name, content, says", [
    ("latin1.jsonl", b'{"prompt": "caf\xe9: 1 + 1?", "answer": "2"}\n', "latin1.jsonl: not UTF-8 text"),
    ("rows.csv", b"prompt,answer\n1 + 1?,2\n", "unsupported data file type '.csv'"),
    ("broken.parquet", b"not parquet", "broken.parquet: .*Parquet magic bytes not found"),
])
def test_a_file_that_cannot_be_read_is_a_data_error_naming_it(tmp_path, name, content, says):
    """These were tracebacks (UnicodeDecodeError, ValueError, ArrowInvalid); the CLI prints a DataError's
    message alone and exits 2."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=says):
        load_problems({"source": "file", "path": str(path)})
    with pytest.raises(DataError, match="unknown data source 'foo'"):
        load_problems({"source": "foo"})


def test_float32_decimal_and_small_float_answers_read_as_written(tmp_path):
    """A float32 Parquet column widened to float64 made 0.1 the gold answer 0.10000000149011612,
    which no answer matched; 1e-07 (repr's form) was refused as not a numeric literal; a decimal
    column was refused as not a number."""
    import decimal

    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "answer": pa.array([0.1, 2.5, 0.3], type=pa.float32()),
                             "cost": pa.array([decimal.Decimal("1.50")] * 3, type=pa.decimal128(5, 2))}), path)
    assert [p.answer for p in load_problems({"source": "file", "path": str(path)})] == ["0.1", "2.5", "0.3"]
    assert [p.answer for p in load_problems({"source": "file", "path": str(path), "answer_key": "cost"})] == ["1.5"] * 3
    rows = tmp_path / "small.jsonl"
    rows.write_text(json.dumps({"prompt": "q", "answer": 1e-07}) + "\n" + json.dumps({"prompt": "r", "answer": 1.5e-05}) + "\n")
    assert [p.answer for p in load_problems({"source": "file", "path": str(rows)})] == ["0.0000001", "0.000015"]


def test_named_columns_win_over_a_detected_format_and_a_bom_is_no_row(tmp_path):
    """A chat `prompt` (or `messages`) made the file read as TRL, whose fixed columns then stood in
    for the ones the user named; a UTF-8 byte-order mark made the first row invalid JSON."""
    path = tmp_path / "chat.jsonl"
    row = {"question": "Real question?", "prompt": "ignored", "messages": [{"role": "user", "content": "x"}], "gold": "3", "answer": "9"}
    path.write_text("\ufeff" + json.dumps(row) + "\n", encoding="utf-8")
    [p] = load_problems({"source": "file", "path": str(path), "prompt_key": "question", "answer_key": "gold"})
    assert (p.question, p.answer) == ("Real question?", "3")
    [p] = load_problems({"source": "file", "path": str(path)})  # the default keys: detected as TRL, as before
    assert p.answer == "9"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_an_upper_case_suffix_is_read(tmp_path):
    path = _jsonl(tmp_path / "D.JSONL", [{"prompt": "What is 1+1?", "answer": "2"}])
    assert [p.answer for p in load_problems({"source": "file", "path": path})] == ["2"]


def test_float16_and_saved_dataset_float_answers_read_as_written(tmp_path):
    """float16 Parquet columns were rounded as float32 (0.1 became the gold answer 0.099975586), and a
    `save_to_disk` folder's float32 and float16 columns were not rounded at all (0.10000000149011612)."""
    import datasets
    import numpy as np

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["q1", "q2"], "answer": pa.array(np.array([0.1, 3.3], dtype=np.float16))}), path)
    assert [p.answer for p in load_problems({"source": "file", "path": str(path)})] == ["0.1", "3.3"]
    datasets.Dataset.from_dict({"prompt": ["a", "b"], "answer": np.array([0.1, 2.5], dtype=np.float32),
                                "half": np.array([0.1, 1.0], dtype=np.float16)}).save_to_disk(str(tmp_path / "saved"))
    assert [p.answer for p in load_problems({"source": "file", "path": str(tmp_path / "saved")})] == ["0.1", "2.5"]
    assert [p.answer for p in load_problems({"source": "file", "path": str(tmp_path / "saved"), "answer_key": "half"})] == ["0.1", "1"]


def test_trl_solution_answer_is_its_last_boxed(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": [{"role": "user", "content": "q"}], "solution": r"try \boxed{3}, no: \boxed{4}"}])
    assert load_problems({"source": "file", "path": path})[0].answer == "4"


def test_trl_answer_wins_over_solution(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": [{"role": "user", "content": "q"}], "answer": "7", "solution": r"\boxed{8}"}])
    assert load_problems({"source": "file", "path": path})[0].answer == "7"


def test_trl_chat_rows_keep_their_other_columns_for_reward_functions(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": [{"role": "user", "content": "q"}], "answer": "7", "level": 3}])
    assert load_problems({"source": "file", "path": path})[0].meta["level"] == 3


def test_a_string_prompt_row_keeps_its_other_columns_whichever_format_it_is_read_as(tmp_path):
    """{prompt, answer, difficulty} is TRL's commonest row and rlvr's too: auto-detection reads it as
    rlvr, which dropped `difficulty`, so a trl-style reward taking it failed on every item (reward 0)."""
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "What is 1+1?", "answer": "2", "difficulty": 0}, {"prompt": "q", "answer": "3"}])
    for fmt in ("auto", "rlvr", "trl"):
        first, plain = load_problems({"source": "file", "path": path, "format": fmt})
        assert first.meta["difficulty"] == 0, fmt
    assert plain.meta is None or "difficulty" not in plain.meta
    (two_columns,) = load_problems({"source": "file", "path": _jsonl(tmp_path / "t.jsonl", [{"prompt": "Q?", "answer": 4}])})
    assert two_columns.meta is None  # no dict on every row of a million-row file
    named = _jsonl(tmp_path / "n.jsonl", [{"q": "What is 1+1?", "final": "2", "level": "easy"}])
    (p,) = load_problems({"source": "file", "path": named, "prompt_key": "q", "answer_key": "final"})
    assert p.meta == {"level": "easy"}


def test_a_trl_style_reward_gets_the_parsed_answer_whatever_other_columns_a_rlvr_row_has(tmp_path):
    """With the answer column kept in meta, a third column switched a trl-style reward's `answer`
    from the parsed gold ('72') to the raw column ('She sold 72. #### 72', or the int 42)."""
    from rlvr.rewards.calling import call_reward
    from rlvr.sandbox.messages import ScoreRequest, coerce_request

    rows = [{"prompt": "a", "answer": "She sold 72. #### 72"}, {"prompt": "b", "answer": "She sold 72. #### 72", "level": 1},
            {"prompt": "c", "answer": 72, "difficulty": 0}]
    seen = []

    def fn(prompts, completions, answer, **kw):
        seen.append(answer[0])
        return [1.0]

    for problem in load_problems({"source": "file", "path": _jsonl(tmp_path / "d.jsonl", rows)}):
        r = coerce_request(ScoreRequest.for_problem("72", problem))
        call_reward(fn, "trl", r.completion, r.answer, r.answer_type, r.prompt, r.meta)
    assert seen == ["72", "72", "72"]


@pytest.mark.parametrize("row", [
    {"prompt": "Q?", "answer": "ab\ud83d", "answer_type": "string"},
    {"prompt": [{"role": "system", "content": "be \ud83d brief"}, {"role": "user", "content": "Q?"}], "answer": 4},
])
def test_a_lone_surrogate_in_the_answer_or_a_chat_turn_is_a_row_error(tmp_path, row):
    answer_type = row.pop("answer_type", "number")
    with pytest.raises(DataError, match="not valid Unicode text"):
        load_problems({"source": "file", "path": _jsonl(tmp_path / "d.jsonl", [row]), "answer_type": answer_type})


def test_a_json_array_with_trailing_data_names_the_trailing_data(tmp_path):
    """Read as JSON Lines, it said "row 0: Expecting value", hiding where the extra data began."""
    body = "[" + ",\n".join(json.dumps({"prompt": f"q{i}", "answer": i}) for i in range(3)) + "]\n"
    path = tmp_path / "d.json"
    path.write_text(body + body)
    with pytest.raises(DataError, match="Extra data at line 4"):
        load_problems({"source": "file", "path": str(path)})


def test_a_math_trl_row_with_a_tests_column_keeps_its_answer(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": [{"role": "user", "content": "q"}], "answer": "7", "tests": ["assert f() == 7"]}])
    assert load_problems({"source": "file", "path": path, "answer_type": "number"})[0].answer == "7"


def test_parquet_is_read_in_batches_and_a_load_says_how_many_it_kept(tmp_path, caplog):
    """`read_table().to_pylist()` built every row's dict at once beside the table: 1M rows peaked at
    1.76 GB against 1.0 GB as JSONL. And a 17 s load of a million rows said only its format."""
    import logging
    import tracemalloc

    rows = [{"prompt": f"Problem {i}: a warehouse holds {i * 7} boxes; how many after one more day?", "answer": i} for i in range(20_000)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    peaks = {}
    for suffix in ("jsonl", "parquet"):
        tracemalloc.start()
        with caplog.at_level(logging.INFO, logger="rlvr"):
            assert len(load_problems({"source": "file", "path": str(tmp_path / f"t.{suffix}")})) == 20_000
        peaks[suffix] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks["parquet"] < 1.3 * peaks["jsonl"], peaks
    assert "t.parquet: 20000 problems in" in caplog.text
    with caplog.at_level(logging.INFO, logger="rlvr"):  # what the held-out split lost to the training questions
        load_problems({"source": "file", "path": str(tmp_path / "t.jsonl")}, exclude={rows[0]["prompt"]})
    assert "t.jsonl: 19999 problems in" in caplog.text and "(1 rows left out as training questions)" in caplog.text


# ---- files as users have them (a review, 2026-12-07) --------------------------------------------------


def test_a_whole_float_answer_above_2_to_the_53_keeps_its_written_value(tmp_path):
    """str(int(6.022e23)) wrote the float's binary value, 602200000000000027262976, as the gold
    answer, which no answer could match."""
    from rlvr.rewards import math_reward

    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "Avogadro?", "answer": 6.022e23}, {"prompt": "q", "answer": 1e23},
                                         {"prompt": "r", "answer": 2.0}, {"prompt": "s", "answer": -0.0}])
    problems = load_problems({"source": "file", "path": path})
    assert [p.answer for p in problems] == ["602200000000000000000000", "100000000000000000000000", "2", "0"]
    assert math_reward("\\boxed{100000000000000000000000}", problems[1].answer, "number") == 1.0


def test_a_lone_surrogate_is_a_row_error_naming_the_row(tmp_path):
    """A JSON "\\ud83d" (an emoji cut in half) loaded, then failed in the tokenizer with a TypeError
    that named no row, and skip_bad_rows did not skip it."""
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "What is 2+2? \\ud83d", "answer": "4"}\n{"prompt": "What is 3+3?", "answer": "6"}\n')
    with pytest.raises(DataError, match=r"row 0 .*not valid Unicode text: surrogates not allowed"):
        load_problems({"source": "file", "path": str(path)})
    assert [p.answer for p in load_problems({"source": "file", "path": str(path), "skip_bad_rows": True})] == ["6"]


def test_json_lines_in_a_dot_json_file_load(tmp_path):
    """datasets' to_json and pandas' lines=True write JSON Lines into a .json file: refused as
    "invalid JSON: Extra data"."""
    two = tmp_path / "two.json"
    two.write_text('{"prompt": "What is 1+1?", "answer": "2"}\n{"prompt": "What is 2+2?", "answer": "4"}\n')
    assert [p.answer for p in load_problems({"source": "file", "path": str(two)})] == ["2", "4"]
    one = tmp_path / "one.json"  # one object: a wrapper as likely as a row, so the message says what to do
    one.write_text('{"prompt": "What is 1+1?", "answer": "2"}\n')
    with pytest.raises(DataError, match="objects one a line .*got one dict .*name it .jsonl"):
        load_problems({"source": "file", "path": str(one)})
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text('{"data": [{"prompt": "q", "answer": "2"}],\n "version": 1}\n')
    with pytest.raises(DataError, match="must hold a list of objects"):
        load_problems({"source": "file", "path": str(wrapped)})


def test_class_label_answers_are_their_names_in_a_saved_dataset_and_its_parquet(tmp_path):
    """cais/mmlu's `answer` is a ClassLabel: read as its index, "0" was refused as a choice, or kept
    as the gold answer for "A" under answer_type=string."""
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"prompt": datasets.Value("string"), "answer": datasets.ClassLabel(names=["A", "B", "C", "D"])})
    ds = datasets.Dataset.from_dict({"prompt": ["Pick A", "Pick B"], "answer": [0, 1]}, features=features)
    ds.save_to_disk(str(tmp_path / "mmlu"))
    ds.to_parquet(str(tmp_path / "mmlu.parquet"))
    for path in ("mmlu", "mmlu.parquet"):
        assert [p.answer for p in load_problems({"source": "file", "path": str(tmp_path / path), "answer_type": "choice"})] == ["A", "B"]


def test_a_limit_on_a_file_is_a_seeded_sample_in_file_order(tmp_path):
    """eval.size took a file's first rows: of a test set ordered by subject, its first subject."""
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": f"q{i}", "answer": str(i)} for i in range(100)])
    first = load_problems({"source": "file", "path": path, "limit": 10})
    assert [p.answer for p in first] == [p.answer for p in load_problems({"source": "file", "path": path, "limit": 10})]
    indices = [int(p.answer) for p in first]
    assert indices == sorted(indices) and len(set(indices)) == 10 and indices != list(range(10)) and max(indices) >= 50
    assert len(load_problems({"source": "file", "path": path, "limit": 200})) == 100
