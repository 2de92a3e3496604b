"""Alpaca data: templates, tokenisation with loss on the response only, and bad records named precisely."""

from __future__ import annotations

import json

import pytest

from mm_adapter.data.alpaca import AlpacaRecord, encode_alpaca, encode_record, format_prompt, prompt_text, read_alpaca
from mm_adapter.errors import MMAdapterError
from mm_adapter.training.batches import IGNORE_INDEX
from tiny_text import records, tiny_tokenizer, write_records


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """datasets' Arrow cache (under MM_ADAPTER_CACHE/datasets) in this test's folder, not the user's cache (not for
    the SmolLM2 test: its converted weights live in the real one)."""
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))


def test_templates_are_the_originals_and_input_block_only_when_given():
    """The two Alpaca templates, verbatim, chosen by whether the input is non-blank."""
    with_input = format_prompt("Add.", "2 and 3")
    assert with_input == ("Below is an instruction that describes a task, paired with an input that provides further "
                          "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                          "Add.\n\n### Input:\n2 and 3\n\n### Response:")
    assert format_prompt("Add.", "  ") == format_prompt("Add.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nAdd.\n\n### Response:")


def test_encoding_masks_the_prompt_and_matches_the_generation_prompt():
    """[bos] prompt response [eos]; loss only on response + EOS; prompt ids = what the generate job feeds the model."""
    tokenizer = tiny_tokenizer()
    record = AlpacaRecord("What colour is the ?", "sky", "blue blue .")
    example = encode_record(tokenizer, record, max_seq_len=512)
    prompt_ids = tokenizer(prompt_text(tokenizer, record.instruction, record.input),
                           add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(record.output, add_special_tokens=False)["input_ids"]
    assert prompt_ids[0] == tokenizer.bos_token_id
    assert example["input_ids"] == prompt_ids + response_ids + [tokenizer.eos_token_id]
    assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids + [tokenizer.eos_token_id]


def test_real_tokenizer_boundary_is_exact():
    """With SmolLM2's byte-level BPE the prompt ids are a prefix of the example (no merge across the boundary)."""
    from mm_adapter.model.base import smollm2_folder

    transformers = pytest.importorskip("transformers")
    try:
        folder = smollm2_folder()
    except MMAdapterError as error:
        pytest.skip(str(error))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    record = AlpacaRecord("Give three tips for staying healthy.", "", "1. Eat well.\n2. Sleep.")
    example = encode_record(tokenizer, record, 512)
    prompt = tokenizer(prompt_text(tokenizer, record.instruction), add_special_tokens=False)["input_ids"]
    assert example["input_ids"][:len(prompt)] == prompt
    assert tokenizer.decode(example["input_ids"][len(prompt):-1]) == record.output
    assert example["input_ids"][-1] == tokenizer.eos_token_id


def test_truncation_and_records_without_any_label_are_dropped():
    """max_seq_len cuts the tail; a record whose prompt alone fills it would train nothing and is counted out."""
    tokenizer = tiny_tokenizer()
    kept = encode_record(tokenizer, AlpacaRecord("What colour is the ?", "sky", "blue blue ."), max_seq_len=20)
    assert kept is None  # the prompt is longer than 20 words
    items = [AlpacaRecord(**r) for r in records(6)]
    examples, dropped = encode_alpaca(tokenizer, items, max_seq_len=38)
    assert dropped == sum(1 for r in items if r.input)  # the with-input prompts are ~45 tokens
    assert all(len(e["input_ids"]) <= 38 for e in examples)


@pytest.mark.usefixtures("own_cache")
@pytest.mark.parametrize("jsonl", [False, True])
def test_json_list_and_jsonl_read_the_same(tmp_path, jsonl):
    """A JSON list and JSONL of the same records read to the same records, none skipped."""
    items = records(5)
    data = read_alpaca(write_records(tmp_path / "d.json", items, jsonl=jsonl))
    assert [r.__dict__ for r in data.records] == items and data.skipped == 0


@pytest.mark.usefixtures("own_cache")
@pytest.mark.parametrize("bad, field", [
    ({"instruction": "x", "output": "y"}, "'input' is missing"),
    ({"instruction": None, "input": "", "output": "y"}, "'instruction' is missing (or null)"),
    ({"instruction": "x", "input": "", "output": "  "}, "'output' is empty"),
])
def test_bad_record_names_file_index_and_field(tmp_path, bad, field):
    """A record with a missing, null or empty field stops with file, record index and field; skip_bad drops it and
    counts it."""
    path = write_records(tmp_path / "d.json", records(3) + [bad] + records(2))
    with pytest.raises(MMAdapterError) as error:
        read_alpaca(path)
    assert str(path) in str(error.value) and "record 3" in str(error.value) and field in str(error.value)
    data = read_alpaca(path, skip_bad=True)
    assert data.skipped == 1 and len(data.records) == 5


@pytest.mark.usefixtures("own_cache")
@pytest.mark.parametrize("bad, problem", [
    ({"instruction": "x", "input": 3, "output": "y"}, "field 'input' is a JSON number, expected a string"),
    ({"instruction": ["x"], "input": "", "output": "y"}, "field 'instruction' is a JSON array, expected a string"),
    (["not", "an", "object"], "is a JSON array, expected an object"),
])
def test_a_record_that_is_not_text_refuses_the_file_naming_it(tmp_path, bad, problem):
    """A record that is not an object, or a field that is not a string: datasets cannot read that file as rows of
    text (a column mixing strings and numbers comes back as JSON, where "3" and 3 look alike), so the file is
    refused even with skip_bad, in one line naming file, record index and field."""
    path = write_records(tmp_path / "d.json", records(3) + [bad, {**records(1)[0], "output": "3"}])
    for skip_bad in (False, True):
        with pytest.raises(MMAdapterError) as error:
            read_alpaca(path, skip_bad=skip_bad)
        assert str(error.value).startswith(f"{path}: record 3: {problem}") and "\n" not in str(error.value)


@pytest.mark.usefixtures("own_cache")
def test_jsonl_line_that_is_not_json(tmp_path):
    """A JSONL line that is not JSON refuses the file (datasets reads it whole) naming file, record and line."""
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(records(1)[0]) + "\n{broken\n" + json.dumps(records(1)[0]) + "\n")
    for skip_bad in (False, True):
        with pytest.raises(MMAdapterError, match=r"d\.jsonl: record 1: line 2 is not JSON \(Expecting property"):
            read_alpaca(path, skip_bad=skip_bad)


@pytest.mark.usefixtures("own_cache")
def test_broken_json_list_and_missing_file(tmp_path):
    """A truncated JSON list names the file, line and column; a missing file is one clear error."""
    path = tmp_path / "d.json"
    path.write_text('[{"instruction": "a",\n "input": ""')
    with pytest.raises(MMAdapterError, match=r"d\.json: data file is not valid JSON \(.* at line 2, column"):
        read_alpaca(path)
    with pytest.raises(MMAdapterError, match="no such data file"):
        read_alpaca(tmp_path / "missing.json")
