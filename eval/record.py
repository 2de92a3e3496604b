"""What an evaluation folder evaluated: ``eval.json``, written by ``eval scienceqa`` before it answers.

The record holds every path resolved when the evaluation ran (absolute), so a reader in any other folder finds the
same files: the adapter (and the training run it came from, whose ``run.json`` has the costs), its digest (a
retrained adapter at the same path is told apart), the base, the split and ``--limit``, the prompt format and
mode, the problems file and a fingerprint of the problems answered. ``table`` names its rows and finds their costs
and problems from it.

Folders written before the record existed have only ``config.yaml`` (the flags as given): :func:`eval_record`
reads what it can from them, and a relative ``--adapter`` there is left unresolved (the folder it was relative
to is not known), never guessed against the reader's working folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mm_adapter.errors import MMAdapterError
from mm_adapter.files.atomic import atomic_write_json
from mm_adapter.files.output_folder import CONFIG_NAME
from mm_adapter.files.text import BOOLEAN, STRING, Rule, check_fields, read_json, read_text
from mm_adapter.scienceqa.data import Problem

EVAL_RECORD = "eval.json"
EVAL_FORMAT = "mm-adapter-eval/1"
ZERO_SHOT = "zero-shot"
MAX_CONFIG_BYTES = 1 << 20  # an eval folder's config.yaml is a few hundred bytes
_OBJECT = Rule(lambda value: isinstance(value, dict), "a JSON object")
_ABSOLUTE = Rule(lambda value: isinstance(value, str) and os.path.isabs(value), "an absolute path")
_LIMIT = Rule(lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= 1,
              "a positive integer")
_REQUIRED = {"format": STRING, "method": STRING, "split": STRING, "prompt_format": STRING, "data": _OBJECT}
_OPTIONAL = {"command": STRING, "name": STRING, "base": STRING, "adapter": _OBJECT, "limit": _LIMIT, "mode": STRING,
             "calibrate": BOOLEAN, "captions": BOOLEAN, "problems": _LIMIT}
_ADAPTER = {"path": _ABSOLUTE}
_ADAPTER_OPTIONAL = {"given": STRING, "name": STRING, "run": _ABSOLUTE, "digest": STRING}
_DATA_OPTIONAL = {"source": STRING, "problems_file": _ABSOLUTE, "fingerprint": STRING}


FINGERPRINTED = ("pid", "question", "choices", "answer", "hint", "image")  # what problems.json says of a problem


def problems_fingerprint(problems: Sequence[Problem]) -> str:
    """16 hex digits of sha256 over the problems answered, by pid: what problems.json says of each (text, options,
    answer, image name), so ``table`` can tell whether the file it scores against still says it."""
    digest = hashlib.sha256()
    for problem in sorted(problems, key=lambda p: p.pid):
        fields = {key: getattr(problem, key) for key in FINGERPRINTED}
        digest.update(json.dumps(fields, sort_keys=True, default=str).encode() + b"\n")
    return digest.hexdigest()[:16]


def absolute(spec: str | os.PathLike | None) -> str | None:
    """A local path made absolute (a hub id, which names no local file, as given)."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    return str(path.resolve()) if os.path.lexists(path) else str(spec)


def write_eval_record(out: Path, *, name: str | None, method: str, base: str, adapter: dict[str, Any] | None,
                      split: str, limit: int | None, problems: Sequence[Problem], prompt_format: str, mode: str,
                      calibrate: bool, captions: bool, source: dict[str, Any]) -> Path:
    """``out/eval.json`` (see the module docstring); ``adapter``: given, path, name, run, digest."""
    record = {"format": EVAL_FORMAT, "command": "eval scienceqa", "name": name, "method": method,
              "base": absolute(base), "adapter": adapter, "split": split, "limit": limit, "problems": len(problems),
              "prompt_format": prompt_format, "mode": mode, "calibrate": calibrate, "captions": captions,
              "data": {**source, "fingerprint": problems_fingerprint(problems)}}
    return atomic_write_json(out / EVAL_RECORD, record, indent=2)


@dataclass(frozen=True)
class EvalRecord:
    """What a row of the table was evaluated from; fields an old folder does not say are None."""

    folder: Path
    method: str | None = None  # "zero-shot", or the training method of the adapter
    name: str | None = None  # the --name the evaluation was given
    label: str | None = None  # the adapter's name (RUN/best), or the base for zero-shot
    adapter: Path | None = None  # absolute
    adapter_digest: str | None = None
    run: Path | None = None  # the training run folder the adapter came from (absolute)
    split: str | None = None
    limit: int | None = None
    prompt_format: str | None = None
    problems_file: Path | None = None
    fingerprint: str | None = None
    unresolved: str | None = None  # an old folder's relative --adapter (its base folder is unknown)
    mode: str | None = None
    calibrate: bool = False

    @property
    def split_tag(self) -> str | None:
        """``test``, or ``val[:40]`` for a limited run; None when not recorded."""
        if self.split is None:
            return None
        return self.split + (f"[:{self.limit}]" if self.limit else "")

    def row_name(self) -> str | None:
        """What the row is: method, run (or base), format, split; None for an old folder (its file's name)."""
        if self.method is None:
            return None
        variant = [self.mode] if self.mode not in (None, "score") else []
        variant += ["calibrated"] if self.calibrate else []
        parts = (self.method, self.label, self.prompt_format, *variant, self.split_tag)
        return " ".join(part for part in parts if part)


def eval_record(folder: Path) -> EvalRecord | None:
    """The record of an eval folder: ``eval.json``, else what an older folder's ``config.yaml`` says; None for a
    folder that has neither (a predictions file given alone)."""
    path = folder / EVAL_RECORD
    if os.path.lexists(path):
        return _read_record(folder, path)
    if os.path.lexists(folder / CONFIG_NAME):
        return _read_old_config(folder, folder / CONFIG_NAME)
    return None


def _read_record(folder: Path, path: Path) -> EvalRecord:
    data = read_json(path, "eval record", expect=dict)
    check_fields(data, path, "eval record", _REQUIRED, _OPTIONAL)
    if data["format"] != EVAL_FORMAT:
        raise MMAdapterError(f"{path}: field 'format' is {data['format'][:60]!r}, expected {EVAL_FORMAT!r}")
    adapter = data.get("adapter") or {}
    if adapter:
        check_fields(adapter, path, "eval record 'adapter'", _ADAPTER, _ADAPTER_OPTIONAL)
    check_fields(data["data"], path, "eval record 'data'", {}, _DATA_OPTIONAL)
    label = adapter.get("name") if adapter else Path(data.get("base") or "").name or None
    return EvalRecord(folder, data["method"], data.get("name"), label,
                      Path(adapter["path"]) if adapter else None, adapter.get("digest"),
                      Path(adapter["run"]) if adapter.get("run") else None, data["split"], data.get("limit"),
                      data["prompt_format"], _path(data["data"].get("problems_file")), data["data"].get("fingerprint"),
                      mode=data.get("mode"), calibrate=bool(data.get("calibrate")))


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def _read_old_config(folder: Path, path: Path) -> EvalRecord | None:
    """An eval folder from before ``eval.json``: its flags as given. A relative adapter stays unresolved."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        """The writer (``yaml.safe_dump`` of fresh objects) never makes aliases; one here is not its file."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError("an alias (*name); a config.yaml written by mm-adapter has none")
            return super().compose_node(parent, index)

    try:
        data = yaml.load(read_text(path, "eval config", MAX_CONFIG_BYTES), Loader=NoAliases)  # noqa: S506
    except yaml.YAMLError as error:
        raise MMAdapterError(f"{path}: not a config.yaml of mm-adapter ({' '.join(str(error).split())[:120]})") \
            from None
    if not isinstance(data, dict):
        raise MMAdapterError(f"{path}: eval config must be a mapping of settings")
    if data.get("command", "eval scienceqa") != "eval scienceqa":
        return None  # another command's folder: its predictions.json has no eval behind it to read
    optional = {"adapter": STRING, "split": STRING, "limit": _LIMIT, "name": STRING}
    check_fields(data, path, "eval config", {}, optional)
    settings = data.get("eval") if isinstance(data.get("eval"), dict) else {}
    fmt = settings.get("format") if isinstance(settings.get("format"), str) else None
    adapter, unresolved = data.get("adapter"), None
    if adapter is not None and not os.path.isabs(os.path.expanduser(adapter)):
        adapter, unresolved = None, adapter
    return EvalRecord(folder, split=data.get("split"), limit=data.get("limit"), prompt_format=fmt,
                      adapter=Path(adapter).expanduser() if adapter else None, unresolved=unresolved)
