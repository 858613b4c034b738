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
