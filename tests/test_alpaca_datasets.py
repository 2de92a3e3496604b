"""Alpaca data through ``datasets`` (issue 13, item 4): local JSON, JSONL and parquet files, hub ids read offline
from a hand-built Hugging Face hub cache, the Arrow cache in our cache folder (a changed file is read again), and
the same one-line refusals and bounds as before.

Nothing here touches the network or a cache outside the test's folder: the hub cache, datasets' cache and ours are
all in tmp, and the hub is off (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, or their module constants in this process).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import datasets
import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mm_adapter.data import alpaca
from mm_adapter.data.alpaca import AlpacaRecord, read_alpaca
from mm_adapter.errors import MMAdapterError
from tiny_text import REPO, arguments, command_here, records, tiny_base_folder, write_records

SHARED_ALPACA = REPO.parent / "shared" / "data" / "alpaca" / "alpaca_5000.json"
REPO_ID = "org/name"


def hub_cache(root: Path, rows: list[dict], repo_id: str = REPO_ID) -> Path:
    """A Hugging Face hub cache holding ``repo_id`` as a download leaves it: the snapshot of one commit with
    ``data/train-00000-of-00001.parquet``, and ``refs/main`` naming that commit."""
    repo = root / f"datasets--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    data = repo / "snapshots" / commit / "data"
    data.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), data / "train-00000-of-00001.parquet")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch) -> Path:
    """This test's caches (ours, datasets', the hub's) in tmp and the hub off; returns the hub cache folder. The
    libraries read their environment at import, so their constants are set too."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    return hub


def as_dicts(data: alpaca.AlpacaData) -> list[dict]:
    return [asdict(record) for record in data.records]


def test_parquet_jsonl_and_json_read_the_same_records(tmp_path):
    """One set of records as a JSON list, JSONL and parquet (with an extra column, as tatsu-lab/alpaca has) reads to
    the same records; a file name with glob characters names that one file."""
    items = records(6)
    table = pa.Table.from_pylist([{**item, "text": "ignored"} for item in items])
    pq.write_table(table, tmp_path / "d.parquet")
    for path in (write_records(tmp_path / "d [1]*.json", items), write_records(tmp_path / "d.jsonl", items, jsonl=True),
                 tmp_path / "d.parquet"):
        data = read_alpaca(path)
        assert as_dicts(data) == items and data.skipped == 0 and data.source == str(path)


def test_a_changed_file_is_read_again_and_an_unchanged_one_from_the_cache(tmp_path):
    """datasets keys a local file's Arrow cache by path and mtime only: a rewrite keeping size and mtime (cp -p,
    tar, two writes in one clock tick) must still be read again. An unchanged file is served from the one cache
    entry in MM_ADAPTER_CACHE/datasets."""
    path = write_records(tmp_path / "d.json", [{"instruction": "Name a colour.", "input": "", "output": "red"}])
    assert read_alpaca(path).records[0].output == read_alpaca(path).records[0].output == "red"

    def entries() -> list[Path]:
        return sorted((tmp_path / "cache" / "datasets" / "json").iterdir())

    assert len(entries()) == 1
    before = path.stat()
    write_records(path, [{"instruction": "Name a colour.", "input": "", "output": "tan"}])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    assert read_alpaca(path).records[0].output == "tan" and len(entries()) == 2


def test_a_file_over_the_size_bound_is_refused_before_datasets_reads_it(tmp_path, monkeypatch):
    """A data file over MAX_DATA_BYTES is one line naming it and the bound; datasets never runs (no cache)."""
    path = write_records(tmp_path / "d.json", records(4))
    monkeypatch.setattr(alpaca, "MAX_DATA_BYTES", 100)
    with pytest.raises(MMAdapterError, match=r"d\.json: data file is [\d,]+ bytes, more than the 100"):
        read_alpaca(path)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name, content, needle", [
    ("d.parquet", b"PAR1 not parquet", "not a readable parquet file (Parquet magic bytes not found"),
    ("d.json", b"[]", "no records (an empty list)"),
    ("d.json", b" \n", "no records (the file is empty)"),
    ("d.json", b'[{"instruction": "a\xff", "input": "", "output": "b"}]', "not UTF-8 text (byte 0xff at line 1"),
])
def test_a_file_datasets_cannot_read_is_one_line_naming_it(tmp_path, name, content, needle):
    """Corrupt parquet, an empty list or file, bytes that are not UTF-8: one line naming the file and what is
    wrong, never datasets' own exception or log lines."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MMAdapterError) as error:
        read_alpaca(path, skip_bad=True)
    assert str(error.value).startswith(f"{path}: ") and needle in str(error.value) and "\n" not in str(error.value)


def test_a_parquet_column_that_is_not_text_is_refused(tmp_path):
    """A parquet file whose input column holds numbers: one line naming the file, field and type."""
    pq.write_table(pa.Table.from_pylist([{"instruction": "a", "input": 3, "output": "b"}]), tmp_path / "d.parquet")
    with pytest.raises(MMAdapterError, match=r"d\.parquet: field 'input' is stored as int64, expected text"):
        read_alpaca(tmp_path / "d.parquet", skip_bad=True)


def test_a_limit_reads_only_the_rows_it_uses(tmp_path):
    """Issue 23, class 4: a parquet file of a few hundred KB (one 20,000-character string, dictionary-encoded) holds
    1,000,000 rows that expand to 40 GB of text. With ``limit`` only that many rows are decoded (pyarrow streams
    row groups; nothing is cached); without one the expansion is refused from the text's lengths, before it is
    decoded, in one line naming the file and --limit."""
    import resource

    long = pa.DictionaryArray.from_arrays(pa.array([0] * 10_000, pa.int32()), pa.array(["x" * 20_000]))
    empty = pa.DictionaryArray.from_arrays(pa.array([0] * 10_000, pa.int32()), pa.array([""]))
    block = pa.table({"instruction": long, "input": empty, "output": long})
    path = tmp_path / "bomb.parquet"
    with pq.ParquetWriter(path, block.schema) as writer:
        for _ in range(100):
            writer.write_table(block)
    assert path.stat().st_size < 4 * 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = read_alpaca(path, limit=3)
    assert len(data.records) == 3 and data.records[0].instruction == "x" * 20_000
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KiB: far below 40 GB
    with pytest.raises(MMAdapterError, match=r"bomb\.parquet: its records expand to more than [\d,]+ bytes of text; "
                                             r"use --limit"):
        read_alpaca(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 2 * 2**20  # KiB: refused under 2 GiB


def test_a_bad_record_past_the_limit_is_not_read(tmp_path):
    path = write_records(tmp_path / "d.json", [*records(2), {"instruction": "", "input": "", "output": ""}])
    assert len(read_alpaca(path, limit=2).records) == 2
    with pytest.raises(MMAdapterError, match="record 2: field 'instruction' is empty"):
        read_alpaca(path)


@pytest.mark.parametrize("name, make", [
    ("empty.parquet", lambda p: pq.write_table(pa.table({f: pa.array([], pa.string()) for f in
                                                         ("instruction", "input", "output")}), p)),
    ("nocolumns.parquet", lambda p: pq.write_table(pa.table({}), p)),
    ("object.json", lambda p: p.write_text("{}")),
    ("blank.jsonl", lambda p: p.write_text("\n\n")),
])
def test_an_empty_table_says_no_records_plainly(tmp_path, name, make):
    """Not datasets' "BatchSize must be greater than 0" or "Instruction 'train' corresponds to no data!"."""
    make(tmp_path / name)
    with pytest.raises(MMAdapterError) as error:
        read_alpaca(tmp_path / name)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / name}: no records") and "BatchSize" not in message, message


def test_a_local_file_has_only_the_train_split(tmp_path):
    """--split names a split of a hub dataset; with a local file any other split is refused, not ignored."""
    path = write_records(tmp_path / "d.json", records(2))
    with pytest.raises(MMAdapterError, match="a local data file is one split, 'train'; --split 'test' is for hub"):
        read_alpaca(path, split="test")


def test_a_hub_id_reads_offline_from_the_hub_cache(offline):
    """``org/name`` with the hub off: the snapshot in the hub cache, through datasets; its bad records are named
    ``org/name[train]: record N: field`` and counted with skip_bad, as a file's are."""
    rows = records(4)
    rows[1] = {**rows[1], "output": " "}
    hub_cache(offline, rows)
    with pytest.raises(MMAdapterError, match=r"^org/name\[train\]: record 1: field 'output' is empty"):
        read_alpaca(REPO_ID)
    data = read_alpaca(REPO_ID, skip_bad=True)
    assert data.source == "org/name[train]" and data.skipped == 1
    assert as_dicts(data) == rows[:1] + rows[2:]


def test_a_hub_id_not_in_the_cache_or_without_the_split_is_one_line(offline):
    """Offline, a hub id missing from the hub cache is one line saying so, where the cache is, and what to do; a
    split the dataset lacks is one line naming it."""
    with pytest.raises(MMAdapterError) as error:
        read_alpaca("org/absent")
    message = str(error.value)
    assert message.startswith("org/absent: no such data file, and hub dataset 'org/absent' is not in the Hugging "
                              f"Face cache ({offline})") and "fetch it once online, or pass a local file" in message
    hub_cache(offline, records(2))
    with pytest.raises(MMAdapterError, match=r"^org/name\[test\]: datasets cannot load .*Unknown split \"test\""):
        read_alpaca(REPO_ID, split="test")


def test_an_unreachable_hub_falls_back_to_the_hub_cache(offline, monkeypatch):
    """Online but the hub cannot be reached (datasets raises ConnectionError): the hub cache is read, as offline."""
    hub_cache(offline, records(3))
    real = datasets.load_dataset

    def unreachable(path, *args, **kwargs):
        if path == REPO_ID:
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    assert as_dicts(read_alpaca(REPO_ID)) == records(3)


def test_a_local_path_wins_over_a_hub_id_and_data_file_names_are_never_hub_ids(tmp_path, monkeypatch):
    """A path that exists is a file even when shaped like org/name; a missing name ending in .json is "no such data
    file", never a hub lookup."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    write_records(tmp_path / REPO_ID, records(2))
    assert as_dicts(read_alpaca(REPO_ID)) == records(2)
    assert not alpaca.is_hub_dataset("org/data.json") and alpaca.is_hub_dataset("tatsu-lab/alpaca")
    with pytest.raises(MMAdapterError, match="org/data.json: no such data file$"):
        read_alpaca("org/data.json")


def test_train_alpaca_takes_a_hub_id_and_a_split(tmp_path, offline, capsys):
    """``mm-adapter train alpaca --data org/name --split train`` trains from the hub cache and records both in
    config.yaml; ``--split test`` is one line naming the split, before any output folder exists."""
    hub_cache(offline, records(16))
    base = tiny_base_folder(tmp_path / "base")

    def train(out: str, split: str) -> list[str]:
        return ["train", "alpaca", *arguments(base, Path(REPO_ID), tmp_path / out, "--epochs", "1", "--split", split)]

    code, _, err = command_here(train("run", "train"), capsys)
    assert code == 0, err
    written = (tmp_path / "run" / "config.yaml").read_text()
    assert "data: org/name\n" in written and "split: train\n" in written
    code, _, err = command_here(train("other", "test"), capsys)
    assert code == 2 and err.count("\n") == 1 and 'org/name[test]: datasets cannot load' in err, err
    assert not (tmp_path / "other").exists()


def test_as_a_user_runs_it_offline_nothing_outside_tmp_is_used(tmp_path):
    """A fresh process with HF_HUB_CACHE, HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1 and every cache and HOME in tmp:
    the hub id is read from the hub cache, the Arrow cache lands in MM_ADAPTER_CACHE/datasets, nothing is
    written to HOME or HF_DATASETS_CACHE, and a hub id that is not cached is one line."""
    hub_cache(tmp_path / "hub", records(3))
    env = {**os.environ, "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "home" / ".cache"),
           "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
           "MM_ADAPTER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    script = ("import json; from mm_adapter.data.alpaca import read_alpaca; from mm_adapter.errors import MMAdapterError\n"
              "data = read_alpaca('org/name')\n"
              "try: read_alpaca('org/absent')\n"
              "except MMAdapterError as error: refusal = str(error)\n"
              "print(json.dumps([data.source, len(data.records), refusal]))")
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    source, count, refusal = json.loads(done.stdout)
    assert (source, count) == ("org/name[train]", 3) and refusal.startswith("org/absent: no such data file")
    assert any((tmp_path / "cache" / "datasets").rglob("*.arrow"))
    assert not any((tmp_path / name).exists() for name in ("home", "hf-home", "hf-datasets"))


@pytest.mark.skipif(not SHARED_ALPACA.is_file(), reason=f"{SHARED_ALPACA} not found (../shared is not distributed)")
def test_the_5000_record_file_reads_as_plain_json_does():
    """The project's 5,000-record Alpaca file through datasets: exactly the records json.load gives, less the two
    with an empty output (skipped and counted)."""
    data = read_alpaca(SHARED_ALPACA, skip_bad=True)
    expected = [AlpacaRecord(r["instruction"], r["input"], r["output"]) for r in json.loads(SHARED_ALPACA.read_text())
                if r["output"].strip()]
    assert data.records == expected and data.skipped == 2
