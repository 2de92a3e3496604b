"""ScienceQA problems: one typed record, and the loader for the official file layout.

The official release is `problems.json` (pid -> record), `pid_splits.json` (split -> [pid]),
an optional `captions.json` ({"captions": {pid: text}}) and `images/<split>/<pid>/image.png` (a problem may also name a
sound in its optional `audio` field, e.g. "audio.wav", in the same folder).
Partial copies exist (some pids of a split missing, metadata `null`), so loading reports what
is missing instead of failing, while a record that is malformed fails loudly with its pid.

Bounds, checked before anything is tokenised: every text field (question, each choice, hint,
lecture, solution, caption) has at most ``MAX_TEXT_CHARS`` characters and a problem at most
``MAX_CHOICES`` choices; a longer one refuses its record in one line naming file, pid and field
(real ScienceQA's longest field, a lecture, has 2,658). Only regular files are read as data (a
FIFO would block the reader forever), and an image path must resolve inside the data folder's
``images/`` (a pid like "../../etc", or a symlink out of it, is refused).
"""

from __future__ import annotations

import logging
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from mm_adapter.errors import fail
from mm_adapter.files.text import json_problem, loads_json

log = logging.getLogger(__name__)

# Fields that partial copies of the benchmark may leave null; table columns over them say so.
METADATA_FIELDS = ("subject", "topic", "grade", "task", "category", "skill")
MAX_TEXT_CHARS = 20_000  # characters in one text field; ~7x real ScienceQA's longest
MAX_CHOICES = 26  # option letters A..Z


@dataclass(frozen=True)
class Problem:
    """One multiple-choice question. `answer` indexes `choices`; `image` is relative to the
    problem's image folder (official: "image.png") or None; metadata fields may be None."""

    pid: str
    question: str
    choices: tuple[str, ...]
    answer: int
    hint: str = ""
    image: str | None = None
    split: str | None = None
    subject: str | None = None
    grade: str | None = None
    topic: str | None = None
    category: str | None = None
    skill: str | None = None
    task: str | None = None
    lecture: str = ""
    solution: str = ""
    caption: str | None = None
    text_source: str | None = None  # provenance tag of reconstructed text, e.g. "llava_cqm_a"
    image_bytes: bytes | None = field(default=None, repr=False, compare=False)  # HF layout only
    audio: str | None = None  # a sound beside the image (official layout: "audio.wav"), relative like `image`

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_bytes is not None

    @property
    def has_context(self) -> bool:
        """The benchmark's TXT condition: a non-empty hint (official: any non-empty string)."""
        return self.hint != ""

    @property
    def no_context(self) -> bool:
        """The benchmark's NO condition: neither text nor image context."""
        return not self.has_context and not self.has_image

    @property
    def answer_text(self) -> str:
        return self.choices[self.answer]


@dataclass(frozen=True)
class LoadSummary:
    """What a load found: how many pids of the split were asked for and how many were absent."""

    split: str | None
    requested: int
    loaded: int
    missing_pids: tuple[str, ...] = ()
    captions: int = 0
    missing_images: int | None = None  # None when image files were not checked

    @property
    def missing(self) -> int:
        return len(self.missing_pids)

    def __str__(self) -> str:
        text = f"split {self.split or 'all'}: loaded {self.loaded} of {self.requested} problems"
        if self.missing:
            text += f" ({self.missing} listed in pid_splits.json but absent from problems.json)"
        text += f", {self.captions} with captions"
        if self.missing_images is not None:
            text += f", {self.missing_images} image files missing"
        return text


def not_regular(mode: int) -> str | None:
    """Why a file of this ``st_mode`` is not read as data (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    return "is a folder, not a file" if stat.S_ISDIR(mode) else "is not a regular file (a FIFO, device or socket)"


def require_file(path: Path) -> None:
    """Refuse, before opening, what is not a regular file: opening a FIFO for reading blocks forever."""
    reason = not_regular(path.stat().st_mode)
    if reason:
        raise fail(path, reason)


def read_benchmark_json(path: str | Path) -> Any:
    """json.load with errors turned into one-line ScienceQAErrors naming the file."""
    path = Path(path)
    try:
        require_file(path)
        with path.open(encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise fail(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise fail(path, f"cannot read: {e}") from None
    try:
        return loads_json(text)
    except ValueError as e:  # syntax, NaN/Infinity, a lone surrogate, nested too deeply (the shared checks)
        raise fail(path, f"not valid JSON ({json_problem(e)})") from None


def _text(record: Mapping[str, Any], name: str, source: object, pid: str, *, optional: bool) -> str | None:
    """A string field; missing/None is allowed only when `optional` (returned as None)."""
    value = record.get(name)
    if value is None:
        if optional:
            return None
        raise fail(source, "is missing", pid, name)
    if not isinstance(value, str):
        raise fail(source, f"must be a string, got {type(value).__name__}", pid, name)
    return bounded(value, source, pid, name)


def bounded(text: str, source: object, pid: str | None, name: str) -> str:
    """``text`` when it has at most ``MAX_TEXT_CHARS`` characters; else one line naming where it is."""
    if len(text) > MAX_TEXT_CHARS:
        raise fail(source, f"has {len(text):,} characters, over the limit of {MAX_TEXT_CHARS:,} (MAX_TEXT_CHARS)",
                   pid, name)
    return text


def problem_from_record(
    pid: str,
    record: Any,
    source: object,
    *,
    split: str | None = None,
    caption: str | None = None,
    image_bytes: bytes | None = None,
) -> Problem:
    """Validate one official-format record and build a Problem; `source` names the file in errors."""
    if not isinstance(record, Mapping):
        raise fail(source, f"record must be an object, got {type(record).__name__}", pid)
    question = _text(record, "question", source, pid, optional=False)
    if not question.strip():
        raise fail(source, "must be a non-empty string", pid, "question")
    choices = record.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise fail(source, "must be a list of at least two strings", pid, "choices")
    if len(choices) > MAX_CHOICES:
        raise fail(source, f"has {len(choices)} choices, more than the {MAX_CHOICES} option letters", pid, "choices")
    for number, choice in enumerate(choices, start=1):
        bounded(choice, source, pid, f"choices[{number}]")
    answer = record.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise fail(source, f"must be an int in [0, {len(choices)}), got {answer!r}", pid, "answer")
    image = _text(record, "image", source, pid, optional=True)
    if image is not None and not image.strip():
        raise fail(source, "must be a file name or null", pid, "image")
    audio = _text(record, "audio", source, pid, optional=True)
    if audio is not None and not audio.strip():
        raise fail(source, "must be a file name or null", pid, "audio")
    meta = {name: _text(record, name, source, pid, optional=True) for name in METADATA_FIELDS}
    texts = {name: _text(record, name, source, pid, optional=True) or "" for name in ("hint", "lecture", "solution")}
    return Problem(
        pid=str(pid),
        question=question,
        choices=tuple(choices),
        answer=answer,
        image=image,
        split=_text(record, "split", source, pid, optional=True) or split,
        caption=caption,
        text_source=_text(record, "text_source", source, pid, optional=True),
        image_bytes=image_bytes,
        audio=audio,
        **meta,
        **texts,
    )


def read_problems(path: str | Path, captions: Mapping[str, str] | None = None) -> dict[str, Problem]:
    """Read and validate an official `problems.json` (a dict of pid -> record dicts)."""
    path = Path(path)
    if path.is_dir():
        path = path / "problems.json"
    raw = read_benchmark_json(path)
    if not isinstance(raw, dict):
        raise fail(path, f"must be a JSON object of pid -> record, got {type(raw).__name__}")
    captions = captions or {}
    return {str(pid): problem_from_record(str(pid), rec, path, caption=captions.get(str(pid))) for pid, rec in raw.items()}


def read_captions(path: str | Path) -> dict[str, str]:
    """Read `captions.json` ({"captions": {pid: text}}) or return {} when the file is absent."""
    path = Path(path)
    if not path.exists():
        return {}
    raw = read_benchmark_json(path)
    captions = raw.get("captions") if isinstance(raw, dict) else None
    if not isinstance(captions, dict) or not all(isinstance(v, str) for v in captions.values()):
        raise fail(path, 'must be {"captions": {pid: text}}')
    return {str(k): bounded(v, path, str(k), "caption") for k, v in captions.items()}


def read_split(root: str | Path, split: str) -> list[str]:
    """The ordered pid list of `split` from `pid_splits.json`."""
    path = Path(root) / "pid_splits.json"
    raw = read_benchmark_json(path)
    if not isinstance(raw, dict):
        raise fail(path, "must be a JSON object of split -> [pid]")
    if split not in raw:
        raise fail(path, f"no split {split!r} (has {', '.join(sorted(raw))})")
    pids = raw[split]
    if not isinstance(pids, list) or not all(isinstance(p, (str, int)) and not isinstance(p, bool) for p in pids):
        raise fail(path, "must be a list of pids (strings)", field=split)
    pids = [str(p) for p in pids]
    seen: set[str] = set()
    for index, pid in enumerate(pids):
        if pid in seen:
            raise fail(path, f"lists problem {pid} twice (again at position {index}); each problem once", field=split)
        seen.add(pid)
    return pids


def media_path(problem: Problem, root: str | Path, name: str | None, field: str = "image",
               must_exist: bool = False) -> Path | None:
    """Official media location `root/images/<split>/<pid>/<name>` (the image, or the sound beside it), or None.

    The path must resolve inside `root/images` (which may itself be a link to another disk): a
    pid, split or file name with "..", an absolute name or a symlink out of it is refused."""
    if name is None:
        return None
    if problem.split is None:
        raise fail(root, f"problem has no split, so its {field} folder is unknown", problem.pid, "split")
    images = (Path(root) / "images").resolve()
    path = images / problem.split / problem.pid / name
    if not path.resolve().is_relative_to(images):
        raise fail(root, f"{field} path {str(path)!r} leads outside the data folder's images/", problem.pid, field)
    if must_exist and not path.is_file():
        raise fail(path, f"{field} file not found", problem.pid, field)
    return path


def image_path(problem: Problem, root: str | Path, must_exist: bool = False) -> Path | None:
    """:func:`media_path` of the problem's image."""
    return media_path(problem, root, problem.image, "image", must_exist)


def audio_path(problem: Problem, root: str | Path, must_exist: bool = False) -> Path | None:
    """:func:`media_path` of the problem's sound (its ``audio`` field), confined like its image."""
    return media_path(problem, root, problem.audio, "audio", must_exist)


def read_official(
    root: str | Path, split: str | None = None, captions: bool = True, check_images: bool = False
) -> tuple[list[Problem], LoadSummary]:
    """Load problems of `split` (pid_splits.json order; all of problems.json when None) plus a
    summary of pids listed in the split but absent from problems.json (partial copies)."""
    root = Path(root)
    caption_map = read_captions(root / "captions.json") if captions else {}
    by_pid = read_problems(root / "problems.json", caption_map)
    pids = list(by_pid) if split is None else read_split(root, split)
    problems = [by_pid[p] for p in pids if p in by_pid]
    missing_images = None
    if check_images:
        missing_images = sum(1 for p in problems if p.image and not image_path(p, root).is_file())
    summary = LoadSummary(
        split=split,
        requested=len(pids),
        loaded=len(problems),
        missing_pids=tuple(p for p in pids if p not in by_pid),
        captions=sum(p.caption is not None for p in problems),
        missing_images=missing_images,
    )
    return problems, summary


def load_official(
    root: str | Path, split: str | None = None, captions: bool = True, check_images: bool = False
) -> list[Problem]:
    """`read_official` for callers that only want the problems; the summary goes to the log."""
    problems, summary = read_official(root, split, captions, check_images)
    (log.warning if summary.missing or summary.missing_images else log.info)("%s: %s", root, summary)
    return problems


def null_counts(problems: Iterable[Problem], fields: Iterable[str] = METADATA_FIELDS) -> dict[str, int]:
    """For each metadata field, how many problems have it null (partial copies of the data)."""
    problems = list(problems)
    return {name: sum(getattr(p, name) is None for p in problems) for name in fields}

