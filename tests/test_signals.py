"""Ctrl-C (SIGINT) or a scheduler's SIGTERM never costs work nor prints a traceback.

Training stops at the next step boundary with a checkpoint there and one line saying where it is
and that --resume continues (exit 128 + signal: 130 for SIGINT, 143 for SIGTERM); the resumed run
ends with the same adapter tensors as a run never stopped. The signal is sent by the process to
itself after a given step (``MM_ADAPTER_KILL_AT_STEP=N:SIGNAL``, as the SIGKILL test does).
Evaluation interrupted by Ctrl-C ends with the one line "interrupted" (after its progress notes) and
exit 130, and the same command resumes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from test_bad_checkpoints import finished  # noqa: F401 (module fixture: an uninterrupted one-epoch run)
from test_train_resume import same_layers

import mm_adapter.eval.run as runner
from mm_adapter.eval.run import partial_path
from mm_adapter.scienceqa.predictions import load_predictions
from mm_adapter.training.process import KILL_ENV, StopRequest, TrainingInterrupted, stop_requests
from test_eval_run_script import base_folder, official_layout  # noqa: F401 (module fixture)
from tiny_text import REPO, arguments, command_here, finetune_here, one_thread  # noqa: F401 (autouse fixture)

EXIT_CODE = {"SIGINT": 130, "SIGTERM": 143}


def stopped_line(name: str, step: int, out) -> str:
    return (f"stopped by {name} after step {step} of 10; checkpoint {out / 'checkpoints' / f'step-{step:08d}'}; "
            "run the same command with --resume to continue")


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_stop_signal_checkpoints_at_the_step_boundary_and_resume_is_exact(finished, tmp_path,  # noqa: F811
                                                                          monkeypatch, name):
    """The job function raises TrainingInterrupted (a KeyboardInterrupt) after the step the signal came in, with a
    checkpoint at that step (not only at the last multiple of --checkpoint-every), no adapter yet, the signal
    handlers as they were; --resume continues to bit-identical adapter tensors and one metrics line per step."""
    base, data, whole = finished
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    monkeypatch.setenv(KILL_ENV, f"4:{name}")
    with pytest.raises(TrainingInterrupted) as raised:
        finetune_here(base, data, tmp_path / "run", epochs=1)
    monkeypatch.delenv(KILL_ENV)
    assert str(raised.value) == stopped_line(name, 4, tmp_path / "run") and raised.value.exit_code == EXIT_CODE[name]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000003", "step-00000004"]
    assert not (tmp_path / "run" / "adapter.safetensors").exists()
    assert finetune_here(base, data, tmp_path / "run", epochs=1, resume=True).steps == 10
    same_layers(whole / "adapter.safetensors", tmp_path / "run" / "adapter.safetensors")
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 10


def test_a_second_signal_stops_at_once_and_handlers_come_back():
    """The first signal is only noted (the step finishes); a second one raises KeyboardInterrupt at once, for a user
    who will not wait for a long step; leaving restores the previous handlers."""
    before = signal.getsignal(signal.SIGTERM)
    with stop_requests() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop.note
        stop.note(signal.SIGTERM, None)
        assert stop.signal_number == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            stop.note(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGTERM) == before and StopRequest().signal_number == 0


def test_the_command_says_where_the_checkpoint_is_and_resume_continues(finished, tmp_path, capsys,  # noqa: F811
                                                                       monkeypatch):
    """``mm-adapter train alpaca`` stopped by Ctrl-C: exit 130 and exactly one stderr line (where the checkpoint is,
    that --resume continues); the same command with --resume finishes with the uninterrupted run's adapter."""
    base, data, whole = finished
    argv = ["train", "alpaca", *arguments(base, data, tmp_path / "run", "--epochs", "1")]
    monkeypatch.setenv(KILL_ENV, "5:SIGINT")
    code, _, err = command_here(argv, capsys)
    monkeypatch.delenv(KILL_ENV)
    assert (code, err) == (130, stopped_line("SIGINT", 5, tmp_path / "run") + "\n")
    code, _, err = command_here([*argv, "--resume"], capsys)
    assert code == 0, err
    same_layers(whole / "adapter.safetensors", tmp_path / "run" / "adapter.safetensors")


def test_sigterm_in_a_real_process_is_one_line_and_exit_143(finished, tmp_path):  # noqa: F811
    """``python -m mm_adapter train alpaca`` sent SIGTERM after step 5: the signal acknowledged at once (one line),
    then exit 143 with one line, no traceback; the checkpoint it names resumes to the uninterrupted run's adapter."""
    base, data, whole = finished
    argv = ["train", "alpaca", *arguments(base, data, tmp_path / "run", "--epochs", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", KILL_ENV: "5:SIGTERM"}
    done = subprocess.run([sys.executable, "-m", "mm_adapter", *argv], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=120, check=False)
    heard = "SIGTERM: stopping after this step (a checkpoint there; --resume continues); SIGTERM again to stop now\n"
    assert (done.returncode, done.stderr) == (143, heard + stopped_line("SIGTERM", 5, tmp_path / "run") + "\n")
    assert finetune_here(base, data, tmp_path / "run", epochs=1, resume=True).steps == 10
    same_layers(whole / "adapter.safetensors", tmp_path / "run" / "adapter.safetensors")


def eval_argv(base, data, out) -> list[str]:
    return ["eval", "scienceqa", "--base", str(base), "--data", str(data), "--split", "val", "--batch-size", "3",
            "--out", str(out), "--bootstrap", "0", "--no-progress", "--name", "tiny", "--device", "cpu"]


def test_ctrl_c_during_evaluation_is_one_line_and_the_rerun_resumes(base_folder, tmp_path, capsys,  # noqa: F811
                                                                     monkeypatch):
    """Ctrl-C in the second batch: exit 130, one line, the first batch kept in the partial file; the same command
    again resumes those answers and ends with the predictions of a run never interrupted."""
    data = official_layout(tmp_path / "data")
    assert command_here(eval_argv(base_folder, data, tmp_path / "whole"), capsys)[0] == 0
    answer, calls = runner.answer_batch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return answer(*args, **kwargs)

    monkeypatch.setattr(runner, "answer_batch", interrupted)
    code, out, err = command_here(eval_argv(base_folder, data, tmp_path / "run"), capsys)
    assert (code, out, err.splitlines()[-1]) == (130, "", "interrupted") and "Traceback" not in err
    assert len(partial_path(tmp_path / "run" / "predictions.json").read_text().splitlines()) == 1 + 3
    monkeypatch.setattr(runner, "answer_batch", answer)
    code, _, err = command_here(eval_argv(base_folder, data, tmp_path / "run"), capsys)
    assert code == 0 and "7 problems (3 resumed)" in err
    expected = load_predictions(tmp_path / "whole" / "predictions.json").results
    assert load_predictions(tmp_path / "run" / "predictions.json").results == expected
