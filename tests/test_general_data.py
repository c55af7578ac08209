import json

import pytest

from vlmflow.prompting.general_data import (
    GeneralDataError,
    demo_general_records,
    read_general_records,
    sample_general_records,
    split_held_out,
)


def write(tmp_path, name, records):
    path = tmp_path / name
    text = (
        "\n".join(json.dumps(r, ensure_ascii=False) for r in records)
        if name.endswith(".jsonl")
        else json.dumps(records)
    )
    path.write_text(text, encoding="utf-8")
    return path


def test_alpaca_records_become_chat_records_with_input_history_and_system(tmp_path):
    path = write(
        tmp_path,
        "general.json",
        [
            {"instruction": "翻译", "input": "你好", "output": "hello", "system": "助手", "history": [["1+1?", "2"]]},
            {"instruction": "计算 2+3", "input": "", "output": "5"},
        ],
    )
    first, second = read_general_records(path, "alpaca")
    assert first == {
        "messages": [
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "2"},
            {"role": "user", "content": "翻译\n你好"},
            {"role": "assistant", "content": "hello"},
        ],
        "system": "助手",
    }
    assert second == {"messages": [{"role": "user", "content": "计算 2+3"}, {"role": "assistant", "content": "5"}]}


def test_sharegpt_reads_both_tag_styles_from_json_lines(tmp_path):
    path = write(
        tmp_path,
        "general.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "s"},
                    {"from": "human", "value": "q"},
                    {"from": "gpt", "value": "a"},
                ]
            },
            {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]},
        ],
    )
    records = read_general_records(path, "sharegpt")
    assert records[0] == {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        "system": "s",
    }
    assert records[1]["messages"][1] == {"role": "assistant", "content": "a2"}


@pytest.mark.parametrize(
    ("data_format", "record", "message"),
    [
        ("alpaca", {"instruction": "", "output": "x"}, "record 1: 'instruction'"),
        ("alpaca", {"instruction": "q"}, "record 1: 'output'"),
        ("sharegpt", {"messages": [{"role": "user", "content": "q"}]}, "record 1: turns must alternate"),
        ("sharegpt", {"conversations": [{"from": "robot", "value": "q"}]}, "record 1: unreadable turn"),
        ("sharegpt", {"text": "q"}, "record 1: needs a non-empty"),
    ],
)
def test_a_bad_record_fails_naming_its_position_and_problem(tmp_path, data_format, record, message):
    good = (
        {"instruction": "q", "output": "a"}
        if data_format == "alpaca"
        else {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    )
    path = write(tmp_path, "general.json", [good, record])
    with pytest.raises(GeneralDataError, match=message):
        read_general_records(path, data_format)


def test_sampling_follows_the_ratio_without_repeats_and_caps_at_the_file():
    records = [{"messages": [{"role": "user", "content": str(i)}]} for i in range(10)]
    sample = sample_general_records(records, n_classification=40, ratio=0.1, seed=0)
    assert len(sample) == 4 and len({r["messages"][0]["content"] for r in sample}) == 4
    assert sample == sample_general_records(records, n_classification=40, ratio=0.1, seed=0)
    assert len(sample_general_records(records, n_classification=1000, ratio=0.5, seed=0)) == 10


def test_the_demo_set_reads_back_with_checkable_answers(tmp_path):
    records = demo_general_records(30, seed=1)
    path = write(tmp_path, "general.json", records)
    chats = read_general_records(path, "alpaca")
    assert len(chats) == 30
    sums = [r for r in records if r["instruction"].startswith("计算")]
    assert sums and all(
        int(r["output"]) == int(r["instruction"].split()[1]) + int(r["instruction"].split()[3]) for r in sums
    )


def test_the_demo_split_is_disjoint_deterministic_and_adds_up():
    records = demo_general_records(100, seed=3)
    assert len({(record["instruction"], record["input"]) for record in records}) == 100  # no repeat to leak
    mixed, held_out = split_held_out(records, 40, seed=3)
    assert (len(mixed), len(held_out)) == (60, 40)
    assert sorted(map(json.dumps, mixed + held_out)) == sorted(map(json.dumps, records))
    assert not {json.dumps(record) for record in mixed} & {json.dumps(record) for record in held_out}
    assert (mixed, held_out) == split_held_out(records, 40, seed=3)
    assert held_out != split_held_out(records, 40, seed=4)[1]
    assert [records.index(record) for record in held_out] == sorted(records.index(record) for record in held_out)
    with pytest.raises(GeneralDataError, match="cannot hold out 101 of 100"):
        split_held_out(records, 101, seed=3)
