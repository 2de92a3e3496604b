"""Evaluate a base model, with or without an adapter, on a ScienceQA split (``mm-adapter eval scienceqa``).

An adapter trained with images records its visual config: its encoder and projection are
rebuilt from the file and each problem's image is encoded once (feature cache) and added to the
adaption prompts. Another method's folder (``--method`` of the training jobs) loads through
``inference.loading.load_answering``: PEFT's on the base, a full fine-tune as the base. Predictions go
to ``OUT/predictions.json`` in the official shape, appended to ``OUT/predictions.partial.jsonl`` as
they are computed, so rerunning after a kill resumes.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mm_adapter.data.features import ImageOffsets, OffsetSum, compute_audio_features, compute_features, report_skipped
from mm_adapter.data.problems import load_problems
from mm_adapter.encoders.projection import frames_note
from mm_adapter.errors import MMAdapterError
from mm_adapter.eval.record import EVAL_RECORD, ZERO_SHOT, EvalRecord, absolute, write_eval_record
from mm_adapter.eval.run import RunSummary, check_fit, partial_path, refuse_finished, resolve_format, run
from mm_adapter.files.atomic import atomic_write_json, atomic_write_text
from mm_adapter.files.output_folder import CONFIG_NAME, Output, config_dict, outputs_in, write_config
from mm_adapter.inference.loading import answering_method, identity_of, load_answering, load_hearing
from mm_adapter.jobs.configs.evaluation import EvalScienceQAConfig
from mm_adapter.jobs.runtime import job_folder, precision_line, prepare, source_inputs
from mm_adapter.methods.config import LLAMA_ADAPTER
from mm_adapter.methods.folders import adapter_digest
from mm_adapter.methods.run_record import run_of
from mm_adapter.pretrained import adapter_name, locate_adapter
from mm_adapter.scienceqa.metrics import Scores, score
from mm_adapter.scienceqa.predictions import load_predictions
from mm_adapter.scienceqa.report import markdown, read_reference, to_dict

COMMAND = "eval scienceqa"
PREDICTIONS, TABLE, SUMMARY = "predictions.json", "table.md", "summary.json"


@dataclass
class EvalResult:
    """What the run computed and where it wrote it."""

    summary: RunSummary
    scores: Scores
    table: str  # the Markdown table (with reference rows when given)
    out: Path
    seconds: float

    @property
    def predictions(self) -> Path:
        return self.out / PREDICTIONS


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def eval_outputs(out: str | Path, flag: str = "--out") -> list[Output]:
    """Every path the job writes in ``out`` (none may be one of its inputs; ``main`` names them by its own flag)."""
    names = [PREDICTIONS, partial_path(Path(PREDICTIONS)).name, TABLE, SUMMARY, CONFIG_NAME, EVAL_RECORD]
    return outputs_in(flag, out, names)


def eval_scienceqa(config: EvalScienceQAConfig) -> EvalResult:
    """Answer every problem of the split into ``out``; returns the run summary and the scored table."""
    started = time.perf_counter()
    device = prepare(config.model)
    out = Path(config.out)
    if str(config.out).endswith(".json"):
        _say(f"note: --out is a folder; the predictions go to {out / PREDICTIONS}")
    # a hub id is fetched (or refused) here; another method's adapter is its folder
    method, adapter = locate_adapter(config.adapter, say=_say) if config.adapter else (LLAMA_ADAPTER, None)
    inputs = {"--adapter": adapter, "--reference": config.reference, **source_inputs(config.source),
              "--base": config.model.base}
    with job_folder(out, eval_outputs(out), inputs):
        refuse_finished(out / PREDICTIONS, config.overwrite)  # never over a finished run unless asked
        return _evaluate(config, method, adapter, out, device, started)


def _names(config: EvalScienceQAConfig, method: str) -> tuple[str, str]:
    """(method, label) of the row: the training method and the adapter's name (RUN/best), or zero-shot and the
    base."""
    if config.adapter is None:
        return ZERO_SHOT, Path(config.model.base).name
    return method, adapter_name(config.adapter)


def _recorded(config: EvalScienceQAConfig, adapter: Path | None) -> dict:
    """What ``eval.json`` says of the adapter and the data, every local path absolute (resolved now, in the folder
    the evaluation runs in)."""
    found = None
    if adapter is not None:
        run = run_of(adapter)
        found = {"given": str(config.adapter), "path": str(adapter.resolve()), "name": adapter_name(config.adapter),
                 "run": str(run.resolve()) if run else None, "digest": adapter_digest(adapter)}
    data = config.source.data
    source = {"source": absolute(data if data is not None else config.source.hf),
              "problems_file": str((Path(data).expanduser() / "problems.json").resolve()) if data else None}
    return {"adapter": found, "source": source}


def _evaluate(config: EvalScienceQAConfig, method: str, adapter: Path | None, out: Path, device: torch.device,
              started: float) -> EvalResult:
    """The job inside its locked output folder: problems, base (and ``adapter``, the file or method folder
    config.adapter names), answers, table, summary."""
    fmt = resolve_format(config.eval.format, adapter, warn=_say)
    eval_config = dataclasses.replace(config.eval, format=fmt)
    problems = load_problems(config.source, config.split, eval_config.captions, config.limit, _say)
    reference = read_reference(config.reference) if config.reference else None
    hearing = load_hearing(method, adapter, device, config.audio_encoder)  # a mismatched encoder: before the base
    if config.blank_audio and hearing is None:
        raise MMAdapterError(f"--blank-audio: {adapter or 'no adapter'} has no audio part (it was not trained with "
                             "--audio), so there is no sound to blank")
    model, tokenizer, visual = load_answering(config.model.base, method, adapter, device, config.model.dtype, _say)
    _say(precision_line(model, eval_config.bf16, device))
    check_fit(model, tokenizer, problems, eval_config)  # one line naming a pid too long, before anything is written
    parts = OffsetSum()
    identity = {"base": config.model.base, "base_fingerprint": identity_of(model).fingerprint,
                "adapter": adapter_digest(adapter) if adapter else None}
    if visual is not None:
        encoder, projection = visual
        features = compute_features(encoder, problems, config.source.data, config.skip_bad_images)
        report_skipped(features, config.split)
        _say(f"images: {len(features.by_pid)} of {len(problems)} problems, encoder {encoder.config.clip_model}"
             f"{frames_note(encoder.config)}")
        parts.append(ImageOffsets(projection, features))
        identity["image_features"] = features.fingerprint(problems)  # which were used: a skipped one changes answers
    if hearing is not None:
        encoder, projection = hearing
        features = compute_audio_features(encoder, problems, config.source.data, config.skip_bad_audio,
                                          blank=config.blank_audio)
        report_skipped(features, f"{config.split} (sound)")
        blanked = ", every one blanked to silence" if config.blank_audio else ""
        _say(f"sound: {len(features.by_pid)} of {len(problems)} problems{blanked}, {encoder.describe()}")
        parts.append(ImageOffsets(projection, features))
        identity["audio_features"] = features.fingerprint(problems)
        if config.blank_audio:
            identity["audio_blanked"] = True
    offsets = parts[0] if len(parts) == 1 else parts or None
    row_method, label = _names(config, answering_method(model, method))
    name = config.name or EvalRecord(out, row_method, None, label, split=config.split, limit=config.limit,
                                     prompt_format=fmt, mode=eval_config.mode,
                                     calibrate=eval_config.calibrate).row_name()
    write_config(out, COMMAND, dataclasses.replace(config, eval=eval_config))
    write_eval_record(out, name=config.name, method=row_method, base=config.model.base, split=config.split,
                      limit=config.limit, problems=problems, prompt_format=fmt, mode=eval_config.mode,
                      calibrate=eval_config.calibrate, captions=eval_config.captions, **_recorded(config, adapter))
    summary = run(model, tokenizer, problems, out / PREDICTIONS, eval_config, identity, name, config.overwrite,
                  progress=config.progress, offsets=offsets)
    _say(f"{config.split}: {summary.total} problems ({summary.resumed} resumed), accuracy {summary.accuracy:.2%}, "
         f"{summary.no_answer} unparsed, {summary.questions_per_second:.2f} questions/s over {summary.computed} "
         f"computed in {summary.seconds:.1f} s -> {out / PREDICTIONS}")
    scores = score(load_predictions(out / PREDICTIONS), {p.pid: p for p in problems}, n_boot=config.bootstrap)
    table = markdown([scores], reference)
    atomic_write_text(out / TABLE, table)
    seconds = time.perf_counter() - started
    atomic_write_json(out / SUMMARY, {"split": config.split, "name": name, **to_dict(scores),
                                      "questions_per_second": summary.questions_per_second, "wall_s": round(seconds, 1),
                                      "config": config_dict(eval_config)}, indent=1)
    return EvalResult(summary, scores, table, out, seconds)
