"""``python -m bench.audio_families``: issue 24's per-family comparison of runs on a generated audio set; accuracies,
McNemar counts and the ≥ 25-point target come from the predictions given, and bad input is one line, exit 2."""

from __future__ import annotations

import json

from bench.audio_families import main


def write_set(root, families):
    problems = {str(i + 1): {"question": "Which?", "choices": ["a", "b"], "answer": 0, "hint": "", "image": None,
                             "split": "test", "family": family} for i, family in enumerate(families)}
    (root / "problems.json").write_text(json.dumps(problems))
    (root / "pid_splits.json").write_text(json.dumps({"test": list(problems)}))
    return root


def write_run(folder, answers):
    folder.mkdir()
    (folder / "predictions.json").write_text(json.dumps({"method": folder.name,
                                                         "results": {str(i + 1): a for i, a in enumerate(answers)}}))
    return folder


def test_families_pooled_and_the_target(tmp_path, capsys):
    """Sound right on 30 of 30 beep problems and 20 of 30 tone problems, silence on 10 and 15, the hint control
    right for both: pooled over the audio families 83.3 against 41.7 (+41.7 points: met); McNemar counts the
    problems only one run got right; the control is left out of the pool."""
    data = write_set(tmp_path, ["beep_count"] * 30 + ["higher_tone"] * 30 + ["control_hint"] * 10)
    sound = write_run(tmp_path / "sound", [0] * 30 + [0] * 20 + [1] * 10 + [0] * 10)
    silence = write_run(tmp_path / "silence", [0] * 10 + [1] * 20 + [0] * 15 + [1] * 15 + [0] * 10)
    out = tmp_path / "families.md"
    assert main([str(sound), str(silence), "--data", str(data), "--silence", "silence", "--out", str(out)]) == 0
    numbers = json.loads(out.with_suffix(".json").read_text())
    pooled = numbers["families"]["audio families"]
    assert pooled["n"] == 60 and pooled["runs"]["sound"]["acc"] == 83.33 and pooled["runs"]["silence"]["acc"] == 41.67
    assert numbers["families"]["control_hint"]["runs"]["silence"]["acc"] == 100.0
    assert pooled["mcnemar"]["silence"]["only_first"] == 20 + 5 and pooled["mcnemar"]["silence"]["only_other"] == 0
    assert numbers["target"] == {"first": "sound", "silence": "silence", "points": 41.67, "verdict": "met"}
    assert "**met**" in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, capsys):
    data = write_set(tmp_path, ["beep_count"] * 4)
    run = write_run(tmp_path / "run", [0, 0, 1, 3])  # 3 is out of range for two choices
    assert main([str(run), "--data", str(data), "--silence", "run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choice index 3 out of range" in err
    assert main([str(run), "--data", str(data), "--silence", "other"]) == 2
    assert "--silence other: no such run" in capsys.readouterr().err
