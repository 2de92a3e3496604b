"""Alpaca instruction data: reading, the two prompt templates, and tokenisation with loss on the response only.

Prompt and response are tokenised separately and concatenated, so the label boundary is exact and
generation (which tokenises the prompt alone, see :func:`prompt_text`) sees exactly the prompt ids
the adapter was trained on. The templates are the original LLaMA-Adapter/Stanford Alpaca ones.

Reading goes through ``datasets``: a local JSON list or JSONL file, or a hub dataset id
(``tatsu-lab/alpaca``; offline, or when the hub cannot be reached, the copy in the Hugging Face hub
cache). Its Arrow cache lives in ``cache_root()/datasets``; a local file's entry is keyed by the
file's bytes as well, because datasets keys it by path and modification time only. A local parquet file is
streamed by pyarrow, batch by batch (no cache: a small compressed file may expand to gigabytes). With a limit,
rows past it never become Python objects. What we check
ourselves: each field is text in every record (datasets reads a column that mixes strings with
other JSON values as JSON, which cannot tell ``"3"`` from ``3``, so such a file is refused whole,
naming the first such record), and each record's fields are present, non-empty and bounded.

Bounds: each field has at most ``MAX_TEXT_CHARS`` characters, checked before anything is
tokenised (a longer one is a bad record: refused in one line, or skipped and counted with
``skip_bad``); an example is then cut to ``max_seq_len`` tokens, or to the model's context when
that is given and shorter (right-truncation; a record whose prompt alone fills it is dropped and
counted). A local file is read only if it is a regular file of at most ``MAX_DATA_BYTES`` (never a
FIFO or device), checked through ``files.text`` before datasets opens it.
"""

from __future__ import annotations

import glob
import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from mm_adapter.errors import MMAdapterError
from mm_adapter.data.peek import FIELDS, check_local_split, is_hub_dataset, peek_alpaca_file, shape_problem
from mm_adapter.files.text import json_problem, loads_json, parse_json, read_bytes, read_text, regular_file_size
from mm_adapter.model.base import cache_root
from mm_adapter.training.batches import IGNORE_INDEX, Example

if TYPE_CHECKING:
    import datasets

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
MAX_TEXT_CHARS = 20_000  # characters in one field (the same bound as mm_adapter.scienceqa.data's)
MAX_DATA_BYTES = 256 * 2**20  # a data file larger than this is refused before it is read (52K Alpaca: 22 MB)
MAX_DECODED_BYTES = 2**30  # text the records of one source may expand to (a compressed parquet file; 52K Alpaca: 40 MB)
WHOLE_FILE = "(the whole file is refused: only records with a missing, empty or over-long field are skipped)"


@dataclass(frozen=True)
class AlpacaRecord:
    instruction: str
    input: str
    output: str


@dataclass
class AlpacaData:
    """Records read from one source, and how many bad ones were skipped (only with ``skip_bad``)."""

    source: str  # the local file, or "org/name[split]" for a hub dataset (how messages name it)
    records: list[AlpacaRecord]
    skipped: int = 0
    first_skipped: str | None = None  # "record 2335: field 'output' is empty"
    read: int = 0  # records looked at (the first ``limit`` of the source)

    def summary(self) -> str | None:
        """The one line a run prints about skipped records, or None when none was skipped."""
        if not self.skipped:
            return None
        return (f"skipped {self.skipped:,} of {self.read:,} records of {self.source} as empty or unusable (first: "
                f"{self.first_skipped}); --strict refuses them instead")


class _Opened(NamedTuple):
    dataset: datasets.Dataset | None  # None: a parquet file, streamed from ``parquet`` instead
    where: str  # how messages name the source
    json_file: Path | None = None  # a local JSON(L) file, re-read only to say where a problem is
    parquet: Path | None = None  # a local parquet file: its row groups are streamed, never cached whole


def format_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt, ending in ``### Response:``; the input block only when the input is non-empty."""
    if input.strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def prompt_text(tokenizer, instruction: str, input: str = "") -> str:
    """BOS (as text, when the tokenizer has one) + prompt; tokenise with ``add_special_tokens=False``."""
    return (tokenizer.bos_token or "") + format_prompt(instruction, input)


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or log lines from datasets while it loads: it logs a parse failure itself, and a refusal
    must stay one line. Restores what was set before."""
    import datasets

    logger = logging.getLogger("datasets")
    level, bars_were_off = logger.level, datasets.are_progress_bars_disabled()
    logger.setLevel(logging.CRITICAL + 1)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _load_failures() -> tuple[type[BaseException], ...]:
    """What datasets (and pyarrow under it) raise for data it cannot read or find."""
    import datasets
    import pyarrow

    return datasets.exceptions.DatasetsError, pyarrow.ArrowException, ValueError, OSError


def _reason(error: BaseException) -> str:
    """The parser's message under datasets' generic "An error occurred while generating the dataset"."""
    if isinstance(error.__cause__, Exception):
        error = error.__cause__
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load(source: str, split: str, **options) -> datasets.Dataset:
    """``datasets.load_dataset`` into our cache folder, quietly."""
    import datasets

    with _quiet_datasets():
        return datasets.load_dataset(source, split=split, cache_dir=str(cache_root() / "datasets"), **options)


def _open_file(path: Path, split: str) -> _Opened:
    """A local file through datasets' parquet builder (``.parquet``) or its json builder (any other name: a JSON
    list or JSONL, as before datasets). The cache entry is keyed by the file's bytes: datasets' own key, path and
    mtime, is blind to a rewrite that keeps the mtime (``cp -p``, ``tar``, ``rsync -t``, two writes in one tick)."""
    check_local_split(path, split)
    peek_alpaca_file(path)  # a file that is no instruction data is named in milliseconds, not after datasets read it
    if path.suffix.lower() == ".parquet":  # streamed by pyarrow (see _rows): checked here, never read whole
        size = regular_file_size(path, "data file")
        if size > MAX_DATA_BYTES:
            raise MMAdapterError(f"{path}: data file is {size:,} bytes, more than the {MAX_DATA_BYTES:,} a data file "
                                 "may have")
        if size == 0:
            raise MMAdapterError(f"{path}: no records (the file is empty)")
        return _Opened(None, str(path), None, path)
    data = read_bytes(path, "data file", MAX_DATA_BYTES)  # a regular file (never a FIFO or device), size bounded
    if not data.strip():
        raise MMAdapterError(f"{path}: no records (the file is empty)")
    key = hashlib.blake2b(data, digest_size=16).hexdigest()
    try:
        dataset = _load("json", "train", name=f"alpaca-{key}", data_files={"train": [glob.escape(str(path))]})
    except _load_failures() as error:
        problem = _json_problem(path)
        if problem is None and "corresponds to no data" in str(error):  # datasets' words for a file of no rows
            problem = "no records (no JSON object with instruction, input and output)"
        reason = problem or f"datasets cannot read it as json ({_reason(error)})"
        raise MMAdapterError(f"{path}: {reason}") from None
    return _Opened(dataset, str(path), path)


def _cached_snapshot(repo_id: str) -> str:
    """The folder of ``repo_id``'s snapshot in the Hugging Face hub cache, never asking the hub."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
    except (LocalEntryNotFoundError, ValueError):  # not cached; ValueError: an id the hub would refuse
        raise MMAdapterError(f"{repo_id}: no such data file, and hub dataset {repo_id!r} is not in the Hugging Face "
                             f"cache ({constants.HF_HUB_CACHE}) and the hub is not asked (offline) or cannot be "
                             f"reached: fetch it once online, or pass a local file") from None


def _open_hub(repo_id: str, split: str) -> _Opened:
    """A hub dataset: from the hub when online (its files land in the hub cache); offline (HF_HUB_OFFLINE or
    HF_DATASETS_OFFLINE), or when the hub cannot be reached, from the snapshot in the hub cache."""
    import datasets

    where = f"{repo_id}[{split}]"
    if not datasets.config.HF_HUB_OFFLINE:
        try:
            return _Opened(_load(repo_id, split), where)
        except ConnectionError:
            pass  # unreachable: read the hub cache, as offline
        except _load_failures() as error:
            raise MMAdapterError(f"{where}: datasets cannot load it ({_reason(error)})") from None
    snapshot = _cached_snapshot(repo_id)
    try:
        return _Opened(_load(snapshot, split), where)
    except _load_failures() as error:
        raise MMAdapterError(f"{where}: datasets cannot load the cached copy {snapshot} ({_reason(error)})") from None


def _list_problem(text: str, path: Path) -> str | None:
    values = parse_json(text, path, "data file", expect=list)  # not JSON: raises naming line and column
    if not values:
        return "no records (an empty list)"
    for index, value in enumerate(values):
        problem = shape_problem(value)
        if problem:
            return f"record {index}: {problem} {WHOLE_FILE}"
    return None


def _lines_problem(text: str) -> str | None:
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    for index, (number, line) in enumerate(lines):
        try:
            problem = shape_problem(loads_json(line))
        except ValueError as error:  # the shared JSON checks: syntax, NaN, a lone surrogate, too deep
            problem = f"is not JSON ({json_problem(error)})"
        if problem:
            return f"record {index}: line {number} {problem} {WHOLE_FILE}"
    return None


def _json_problem(path: Path) -> str | None:
    """The first place where a JSON list or JSONL file is not a list of objects with text fields. Asked only after
    datasets failed, or read a field as something other than text, so that the refusal can say where."""
    text = read_text(path, "data file", MAX_DATA_BYTES)  # not UTF-8: raises naming the line
    return _list_problem(text, path) if text.lstrip().startswith("[") else _lines_problem(text)


def _is_text(arrow_type) -> bool:
    """A column of strings (plain, or dictionary-encoded as pandas' categories are), or of nulls only (every record
    lacks the field)."""
    import pyarrow as pa

    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_null(arrow_type)


def _text_bytes(column) -> int:
    """Bytes of text ``column`` holds once decoded (a dictionary column's repeated values counted each time),
    computed on the lengths alone, before anything is decoded."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_null(column.type):
        return 0
    if pa.types.is_dictionary(column.type):
        lengths = pc.binary_length(column.dictionary).take(column.indices)
    else:
        lengths = pc.binary_length(column)
    return int(pc.sum(lengths).as_py() or 0)


def _not_text(opened: _Opened, name: str, column_type) -> MMAdapterError:
    """The refusal of a field datasets read as something other than text (say where, for a local JSON file)."""
    import pyarrow as pa

    problem = _json_problem(opened.json_file) if opened.json_file else None
    if problem:
        return MMAdapterError(f"{opened.where}: {problem}")
    dates = " (datasets reads a column whose every value looks like a date as dates)"
    dates = dates if pa.types.is_temporal(column_type) else ""
    return MMAdapterError(f"{opened.where}: field {name!r} is read as {opened.dataset.features[name]}, expected text "
                          f"in every record{dates}")


def _rows(opened: _Opened, limit: int | None) -> Iterator[tuple[str | None, ...]]:
    """The three fields of each record (str, or None when missing or null), at most ``limit`` of them: the table
    is sliced, or the parquet file streamed batch by batch, before any row becomes Python objects, so a small
    compressed file that expands to gigabytes costs only the rows used. The decoded text is bounded too."""
    if opened.parquet is not None:
        batches = _parquet_batches(opened, limit)
    else:
        table = opened.dataset.data
        table = table.slice(0, limit) if limit is not None else table
        for name in FIELDS:
            if name in table.column_names and not _is_text(table.schema.field(name).type):
                raise _not_text(opened, name, table.schema.field(name).type)
        batches = table.to_batches(max_chunksize=4096)
    decoded = 0
    for batch in batches:
        names = batch.schema.names
        decoded += sum(_text_bytes(batch.column(names.index(name))) for name in FIELDS if name in names)
        if decoded > MAX_DECODED_BYTES:  # checked on lengths, before the batch becomes Python strings
            raise MMAdapterError(f"{opened.where}: its records expand to more than {MAX_DECODED_BYTES:,} bytes of "
                                 "text; use --limit to read fewer")
        columns = [batch.column(names.index(name)).to_pylist() if name in names else [None] * batch.num_rows
                   for name in FIELDS]
        yield from zip(*columns)


def _parquet_batches(opened: _Opened, limit: int | None):
    """A parquet file's text columns, batch by batch, until ``limit`` rows (pyarrow reads one row group at a time)."""
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(opened.parquet)
        schema = handle.schema_arrow
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise MMAdapterError(f"{opened.where}: not a readable parquet file ({_reason(error)})") from None
    for name in FIELDS:
        if name in schema.names and not _is_text(schema.field(name).type):
            raise MMAdapterError(f"{opened.where}: field {name!r} is stored as {schema.field(name).type}, expected "
                                 "text in every record")
    present = [name for name in FIELDS if name in schema.names]
    if not present:
        return
    remaining = limit
    try:
        for batch in handle.iter_batches(batch_size=1024, columns=present):
            if remaining is not None:
                batch = batch.slice(0, remaining)
                remaining -= batch.num_rows
            yield batch
            if remaining == 0:
                return
    except (OSError, ValueError) as error:
        raise MMAdapterError(f"{opened.where}: not a readable parquet file ({_reason(error)})") from None


def _record(values: tuple[str | None, ...]) -> AlpacaRecord:
    for name, value in zip(FIELDS, values):
        if value is None:
            raise MMAdapterError(f"field {name!r} is missing (or null)")
        if len(value) > MAX_TEXT_CHARS:
            raise MMAdapterError(f"field {name!r} has {len(value):,} characters, over the limit of "
                                 f"{MAX_TEXT_CHARS:,} (MAX_TEXT_CHARS)")
    record = AlpacaRecord(*values)
    if not record.instruction.strip():
        raise MMAdapterError("field 'instruction' is empty")
    if not record.output.strip():
        raise MMAdapterError("field 'output' is empty")
    return record


def read_alpaca(source: str | Path, skip_bad: bool = False, split: str = "train",
                limit: int | None = None) -> AlpacaData:
    """Read ``{instruction, input, output}`` records from a local JSON list, JSONL or parquet file, or from split
    ``split`` of a hub dataset id (see :func:`is_hub_dataset`); with ``limit``, only the first ``limit`` records
    are read, and taken before any is checked: the rest never become Python objects (a parquet file is not cached
    at all), and a bad record further on does not matter to a limited run.

    A bad record (a field missing, empty or over-long) raises :class:`MMAdapterError` naming file (or id), record
    index and field, unless ``skip_bad``, which drops it and counts it (``skipped``, ``summary()``). A file that is
    no instruction data, that datasets cannot read, or a field that is not text in every record, is refused in one
    line either way; a source of no records says so.
    """
    source = str(source)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise MMAdapterError(f"limit must be a positive integer, got {limit!r}")
    opened = _open_hub(source, split) if is_hub_dataset(source) else _open_file(Path(source), split)
    records, skipped, first, read = [], 0, None, 0
    for index, values in enumerate(_rows(opened, limit)):
        read = index + 1
        try:
            records.append(_record(values))
        except MMAdapterError as error:
            if not skip_bad:
                raise MMAdapterError(f"{opened.where}: record {index}: {error} (--strict refuses bad records; "
                                     "without it they are skipped and counted)") from None
            skipped, first = skipped + 1, first or f"record {index}: {error}"
    if not read:
        raise MMAdapterError(f"{opened.where}: no records (the table is empty)")
    if not records:
        raise MMAdapterError(f"{opened.where}: no usable records (all {read:,} read were bad; first: {first})")
    return AlpacaData(opened.where, records, skipped, first, read)


def encode_record(tokenizer, record: AlpacaRecord, max_seq_len: int) -> Example | None:
    """``[bos] prompt response [eos]`` ids, labels only on response + EOS; ``None`` if truncation leaves no label."""
    prompt_ids = tokenizer(prompt_text(tokenizer, record.instruction, record.input),
                           add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(record.output, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    input_ids = (prompt_ids + response_ids)[:max_seq_len]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_seq_len]
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return {"input_ids": input_ids, "labels": labels}


def encode_alpaca(tokenizer, records: list[AlpacaRecord], max_seq_len: int = 512,
                 context: int | None = None) -> tuple[list[Example], int]:
    """Tokenise records, each cut to ``max_seq_len`` tokens or the model's ``context`` when that is shorter;
    returns the examples and how many were dropped because the prompt fills that bound."""
    limit = min(max_seq_len, context or max_seq_len)
    examples = [encode_record(tokenizer, record, limit) for record in records]
    kept = [example for example in examples if example is not None]
    return kept, len(examples) - len(kept)
