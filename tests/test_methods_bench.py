"""bench/methods/ on a tiny Llama and a tiny generated ScienceQA set: each method's learning rates are trained, the
best on val is evaluated on test once, and the comparison table (bootstrap intervals, McNemar against llama-adapter,
cost columns, chart) is written; a second call trains and evaluates nothing again. Issue 25's protocol: grids whose
choice is reported interior or at an edge, further seeds of the chosen lr, the seeds summary and its targets."""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import statistics
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_formats_training import tiny_sqa_folder, tiny_train_config

from bench.methods import cli, grid, lr_search, reports, seeds
from mm_adapter.jobs.train_scienceqa import train_scienceqa
from mm_adapter.scienceqa.data import read_problems


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return tiny_sqa_folder(tmp_path_factory.mktemp("methods"), {"train": 16, "val": 8, "test": 8})


def test_methods_are_searched_on_val_tested_once_and_tabled(tiny_set, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))
    base, data = tiny_set
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--base", str(base), "--only", "llama-adapter",
            "lora", "--adapter-len", "4", "--adapter-layers", "2", "--quiet", "--grid", "5e-4,5e-3"]
    assert cli.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    runs = [(row["method"], row["lr"]) for row in lines if "lr" in row]
    assert runs == [("llama-adapter", 5e-4), ("llama-adapter", 5e-3), ("lora", 5e-4), ("lora", 5e-3)]
    tested = {row["method"]: row for row in lines if "chosen_lr" in row}
    for name, row in tested.items():
        scores = {lr: lr_search.best_val(tmp_path / "out" / f"{name}-lr{lr:g}")[0] for lr in (r[1] for r in runs
                                                                                          if r[0] == name)}
        assert row["val"] == max(scores.values()) and scores[row["chosen_lr"]] == row["val"]
    assert set(tested) == {"llama-adapter", "lora"}
    table = (tmp_path / "out" / "table.md").read_text()
    assert "**llama-adapter**" in table and "**lora**" in table and "trainable" in table
    assert "| llama-adapter | lora |" in table  # the McNemar row against ours
    assert (tmp_path / "out" / "table.png").stat().st_size > 0
    rows = {row["method"]: row["costs"] for row in json.loads((tmp_path / "out" / "table.json").read_text())["rows"]}
    lora_lr = tested["lora"]["chosen_lr"]
    record = json.loads((tmp_path / "out" / f"lora-lr{lora_lr:g}" / "best" / "mm_adapter.json").read_text())
    assert rows["lora"]["trainable"] == record["trainable_parameters"]["total"]  # read from its folder
    assert rows["llama-adapter"]["trainable"] == 2 * (4 * 64 + 4)  # 2 layers x (4 prompts x 64 + 4 gates)
    assert (tmp_path / "out" / "costs.png").stat().st_size > 0
    search = (tmp_path / "out" / "search.md").read_text().splitlines()
    for name, row in tested.items():
        line = next(line for line in search if line.startswith(f"| {name} |"))
        chosen = f"{row['chosen_lr']:g}"
        assert f"{chosen}: **{100 * row['val']:.2f}**" in line and line.endswith(f"| {chosen} | edge: widen |")
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*") if p.suffix in (".safetensors", ".json")
              and "table" not in p.name and "seeds" not in p.name}  # the summaries are rewritten, the same
    assert cli.main(argv) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_llama_adapter_v2_is_searched_tested_and_tabled_with_its_count(tiny_set, tmp_path, capsys, monkeypatch):
    """The harness lists --method llama-adapter-v2 on the prompts' grid; its table row counts prompts, gates, the
    bias and scale of every linear layer and the norms (read from its best adapter file)."""
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))
    base, data = tiny_set
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--base", str(base), "--only", "llama-adapter-v2",
            "--adapter-len", "4", "--adapter-layers", "2", "--quiet", "--grid", "5e-3,1e-2"]
    assert cli.main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [row.get("lr", "test") for row in lines] == [5e-3, 1e-2, "test"]
    rows = {row["method"]: row["costs"] for row in json.loads((tmp_path / "out" / "table.json").read_text())["rows"]}
    linears = 64 + 32 + 32 + 64 + 96 + 96 + 64  # q, k, v, o, gate, up, down outputs of the tiny GQA Llama
    assert rows["llama-adapter-v2"]["trainable"] == 2 * (4 * 64 + 4) + 4 * 2 * linears + 9 * 64


def test_two_workers_split_one_search_with_lr_and_the_last_one_tests(tiny_set, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))
    base, data = tiny_set
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--base", str(base), "--only", "llama-adapter",
            "--adapter-len", "4", "--adapter-layers", "2", "--quiet", "--grid", "5e-3,1e-2"]
    assert cli.main([*argv, "--lr", "0.01"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(row["method"], row["lr"]) for row in lines] == [("llama-adapter", 1e-2)]  # 5e-3 untrained: no test
    assert not (tmp_path / "out" / "llama-adapter-test").exists()
    assert "| llama-adapter | 0.005: (not trained), 0.01: " in (tmp_path / "out" / "search.md").read_text()
    assert "| search not finished |" in (tmp_path / "out" / "search.md").read_text()
    assert cli.main([*argv, "--lr", "0.005"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [row.get("lr", "test") for row in lines] == [5e-3, "test"]
    assert (tmp_path / "out" / "llama-adapter-test" / "predictions.json").is_file()


def test_an_lr_outside_the_grids_is_one_line_and_exit_2(tiny_set, tmp_path, capsys):
    _, data = tiny_set
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--data", str(data), "--out", str(tmp_path / "out"), "--only", "lora", "--lr", "0.02"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith("--lr 0.02 is in no chosen method's grid (0.0005, 0.002, 0.005, 0.01)")
    assert not (tmp_path / "out").exists()


def _fake_run(out, name: str, val: float, finished: bool = True) -> None:
    """A run folder as the search reads it: its validation log, and its final adapter when it finished."""
    out.mkdir(parents=True, exist_ok=True)
    out.joinpath(name).mkdir()
    out.joinpath(name, "validation.jsonl").write_text(json.dumps({"step": 1, "val_acc": val}) + "\n")
    if finished:
        out.joinpath(name, "adapter.safetensors").write_bytes(b"")


def test_the_search_says_whether_the_choice_is_interior_or_at_an_edge(tmp_path):
    """Every lr's best val is shown; a best at either end of the grid is reported "edge: widen", never hidden; a
    grid point not yet finished leaves the choice open; lr folders of other methods and seeds are not this grid's."""
    out = tmp_path / "out"
    for lr, val in ((5e-3, 0.4), (1e-2, 0.5), (2e-2, 0.45)):
        _fake_run(out, f"llama-adapter-lr{lr:g}", val)
    for lr, val in ((5e-4, 0.3), (2e-3, 0.35)):
        _fake_run(out, f"lora-lr{lr:g}", val)
    _fake_run(out, "lora-r16-all-lr0.002", 0.9)  # another method's folder: not lora's
    _fake_run(out, "lora-lr0.002-seed1", 0.9)  # a further seed: not the search
    _fake_run(out, "full-lr1e-05", 0.2)
    _fake_run(out, "full-lr5e-05", 0.3, finished=False)
    prompts = grid.Method("llama-adapter", None, (5e-3, 1e-2, 2e-2))
    found = lr_search.search(lr_search.Places(out), dataclasses.replace(prompts, tuning=grid.METHODS[1].tuning))
    assert (found.chosen, found.position) == (1e-2, "interior")
    lora = lr_search.search(lr_search.Places(out), dataclasses.replace(grid.METHODS[4], lrs=(5e-4, 2e-3)))
    assert lora.lrs == (5e-4, 2e-3) and (lora.chosen, lora.position) == (2e-3, "edge: widen")
    (out / "grids.json").write_text(json.dumps({"llama-adapter": [5e-3, 1e-2, 2e-2], "lora": [5e-4, 2e-3]}))
    table = reports.search_table(lr_search.Places(out))
    assert "| llama-adapter | 0.005: 40.00, 0.01: **50.00**, 0.02: 45.00 | 0.01 | interior |" in table
    assert "| lora | 0.0005: 30.00, 0.002: **35.00** | 0.002 | edge: widen |" in table
    assert "| lora-r16-all | 0.0005: (not trained), 0.002: **90.00**" not in table  # its default grid is unfinished
    assert "| full | 1e-05: 20.00, 5e-05: 30.00, 0.0001: (not trained) |  | search not finished |" in table


def test_a_grid_given_once_is_recorded_and_only_ever_widened(tmp_path):
    """The other worker and later calls search what --grid widened the grid to (OUT/grids.json), not GRIDS."""
    lora = grid.METHODS[4]
    assert [m.lrs for m in grid.with_grids(tmp_path, [lora], None)] == [grid.GRIDS["lora"]]
    grid.record_grids(tmp_path, grid.with_grids(tmp_path, [lora], (1e-4, 1e-3)))
    assert [m.lrs for m in grid.with_grids(tmp_path, [lora], None)] == [(1e-4, 1e-3)]
    grid.record_grids(tmp_path, grid.with_grids(tmp_path, [lora], (3e-3,)))
    assert [m.lrs for m in grid.with_grids(tmp_path, [lora], None)] == [(1e-4, 1e-3, 3e-3)]
    assert all(len(lrs) >= 3 for lrs in grid.GRIDS.values())  # a default choice can be interior


def _lines(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_further_seeds_retrain_the_chosen_lr_and_workers_split_them(tiny_set, tmp_path, capsys, monkeypatch):
    """--seed 0 is the search; --seed N trains and tests seed N of the chosen lr only, in {method}-lr{lr}-seed{N};
    seed 0's folder keeps issue 14's name and is never retrained; a finished seed is skipped; the summary has every
    seed's test Avg and its mean ± sample sd."""
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))
    base, data = tiny_set
    out = tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--base", str(base), "--only", "llama-adapter",
            "--adapter-len", "4", "--adapter-layers", "2", "--quiet", "--grid", "5e-3,1e-2", "--seeds", "0", "1", "2"]
    assert cli.main([*argv, "--seed", "2"]) == 0  # no search yet: a seed worker has nothing to do
    assert _lines(capsys) == [] and not list(out.glob("llama-adapter-lr*"))
    assert cli.main([*argv, "--seed", "0"]) == 0
    lines = _lines(capsys)
    assert [(row.get("lr"), row["seed"]) for row in lines] == [(5e-3, 0), (1e-2, 0), (None, 0)]
    chosen = lines[-1]["chosen_lr"]
    seed0 = out / f"llama-adapter-lr{chosen:g}"
    stamps = {p: p.stat().st_mtime_ns for p in seed0.rglob("*.safetensors")}
    assert cli.main([*argv, "--seed", "2"]) == 0
    assert [(row.get("lr"), row["seed"]) for row in _lines(capsys)] == [(chosen, 2), (None, 2)]
    assert cli.main(argv) == 0  # seed 2 finished: only seed 1 is left
    assert [(row.get("lr"), row["seed"]) for row in _lines(capsys)] == [(chosen, 1), (None, 1)]
    assert cli.main(argv) == 0
    assert _lines(capsys) == []
    assert cli.main([*argv, "--epochs", "2"]) == 2  # finished at 1 epoch: not this call's run, never reported
    assert capsys.readouterr().err.strip() == (f"error: {out / 'llama-adapter-lr0.005'}: finished with train.epochs "
                                               "1, but this call trains 2; give the flags it was trained with, or "
                                               "another --out")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    for seed in (1, 2):
        run = out / f"llama-adapter-lr{chosen:g}-seed{seed}"
        assert json.loads((run / "run.json").read_text())["seed"] == seed
        assert (out / f"llama-adapter-test-seed{seed}" / "predictions.json").is_file()
    assert not list(out.glob("*-seed0*"))
    summary = json.loads((out / "seeds.json").read_text())
    row = next(row for row in summary["methods"] if row["name"] == "llama-adapter")
    avgs = [row["test"][str(seed)] for seed in (0, 1, 2)]
    assert avgs[0] == json.loads((out / "llama-adapter-test" / "summary.json").read_text())["Avg"]
    assert row["mean"] == pytest.approx(statistics.mean(avgs)) and row["sd"] == pytest.approx(statistics.stdev(avgs))
    assert row["trainable"] == 2 * (4 * 64 + 4)
    assert f"| llama-adapter | {chosen:g} | edge: widen |" in (out / "seeds.md").read_text()


def test_the_seed_changes_the_adapter_and_the_same_seed_repeats_it(tiny_set, tmp_path):
    """TrainConfig.seed reaches the initialisation and the data order: two seeds train different adapters, the same
    seed the same one."""
    base, data = tiny_set
    trained = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        config = tiny_train_config(base, data, tmp_path / name)
        config.train.seed = seed
        train_scienceqa(config)
        trained[name] = load_file(tmp_path / name / "adapter.safetensors")
    assert all(torch.equal(trained["a"][key], trained["b"][key]) for key in trained["a"])
    assert not all(torch.equal(trained["a"][key], trained["c"][key]) for key in trained["a"])


def _predictions(folder, name: str, answers: dict[str, int]):
    folder.mkdir(parents=True)
    (folder / "predictions.json").write_text(json.dumps({"method": name, "results": answers}))
    return folder / "predictions.json"


def test_the_seeds_table_has_mean_sd_and_mcnemar_against_full_at_the_same_seed(tiny_set, tmp_path):
    """Hand-made test outputs on the tiny set's 8 test problems: Avg per seed, mean ± sample sd (n - 1), and
    McNemar of each method against full's run of the same seed (zero-shot's one run against each)."""
    _, data = tiny_set
    problems = read_problems(data / "problems.json")
    test = sorted(pid for pid, problem in problems.items() if problem.split == "test")
    gold = {pid: problems[pid].answer for pid in test}

    def right(count: int) -> dict[str, int]:  # the first `count` problems right, the rest wrong
        return {pid: gold[pid] if i < count else (gold[pid] + 1) % len(problems[pid].choices)
                for i, pid in enumerate(test)}

    runs = {"llama-adapter": (2, 4, 6), "full": (8, 4, 5)}
    made = [seeds.MethodSeeds(name, 1e-2, "interior", tuple(
        seeds.SeedRun(seed, 0.5, _predictions(tmp_path / f"{name}-{seed}", name, right(count)))
        for seed, count in enumerate(counts))) for name, counts in runs.items()]
    made.append(seeds.MethodSeeds("zero-shot", None, None, (
        seeds.SeedRun(0, None, _predictions(tmp_path / "zero", "zero-shot", right(1))),)))
    text, summary = seeds.summarise(made, data / "problems.json", [0, 1, 2])
    rows = {row["name"]: row for row in summary["methods"]}
    assert rows["llama-adapter"]["test"] == {0: 25.0, 1: 50.0, 2: 75.0}
    assert rows["llama-adapter"]["mean"] == 50.0 and rows["llama-adapter"]["sd"] == 25.0  # sample sd, not 20.41
    assert "| llama-adapter | 0.01 | interior | 50.00 | 25.00 | 50.00 | 75.00 | 50.00 ± 25.00 | 3 |" in text
    assert "| zero-shot |  |  |  | 12.50 |  |  | 12.50 | 1 | 0 |" in text
    tests = {(t["a"], t["seed"]): (t["only_a"], t["only_b"], t["n"]) for t in summary["mcnemar"]}
    assert tests[("llama-adapter", 0)] == (0, 6, 8) and tests[("llama-adapter", 1)] == (0, 0, 8)
    assert tests[("llama-adapter", 2)] == (1, 0, 8)
    assert tests[("zero-shot", 0)] == (0, 7, 8) and tests[("zero-shot", 1)] == (0, 3, 8)
    assert "| llama-adapter | 2 | 8 | 1 | 0 | exact binomial | 1 |" in text


def _row(name: str, val: float, test: dict[int, float], trainable: int, complete: bool = True):
    return seeds.Row(name, 1e-2, "interior", test, {seed: val for seed in test}, trainable, 10.0, complete)


def test_the_targets_are_checked_from_the_numbers_on_val_choices():
    """The adapter (v1 or V2) with the higher mean val is the one checked against full: within a point of its mean
    test Avg and under 1/25 of its trainable count; the recipe with the highest mean val must reach 55. A target
    whose seeds are not all in is pending."""
    full = _row("full", 56.0, {0: 50.0, 1: 50.6}, 134_515_000)
    v1 = _row("llama-adapter", 52.0, {0: 49.0, 1: 50.0}, 173_070)
    v2 = _row("llama-adapter-v2", 51.0, {0: 56.0, 1: 56.0}, 400_000)  # better on test, worse on val: not chosen
    within, fewer, recipe = seeds.targets([full, v1, v2])
    assert within["target"].startswith("best adapter on val (llama-adapter) within 1 point")
    assert (within["status"], within["value"]) == ("met", "49.50 vs 50.30 (gap 0.80)")
    assert fewer["status"] == "met" and fewer["value"] == "173,070 vs 134,515,000 / 25 = 5,380,600"
    assert recipe["status"] == "missed" and recipe["value"] == "50.30" and "(full)" in recipe["target"]
    far = _row("llama-adapter", 52.0, {0: 48.0, 1: 49.0}, 6_000_000)
    assert [c["status"] for c in seeds.targets([full, far])] == ["missed", "missed", "missed"]
    high = _row("full", 56.0, {0: 55.0, 1: 55.5}, 134_515_000)
    assert seeds.targets([high, v1])[2]["status"] == "met"
    waiting = _row("llama-adapter-v2", 53.0, {0: 56.0}, 400_000, complete=False)
    assert [c["status"] for c in seeds.targets([full, v1, waiting])] == ["pending", "pending", "pending"]
    assert "waiting for llama-adapter-v2" in seeds.targets([full, v1, waiting])[0]["value"]


def test_adapter_layers_default_to_the_bases_depth_and_more_is_one_line(tiny_set, tmp_path, capsys):
    """A base shallower than 30 layers (Gemma-3-270m: 18) gets all of its layers by default; asking for more than
    it has is refused before anything is trained or written."""
    base, data = tiny_set
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--base", str(base), "--only", "llama-adapter"]
    assert cli.parse(argv).adapter_layers == 4  # the tiny Llama's depth
    assert cli.parse([*argv, "--adapter-layers", "3"]).adapter_layers == 3
    with pytest.raises(SystemExit) as stopped:
        cli.main([*argv, "--adapter-layers", "5"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].endswith(f"--adapter-layers 5: the base {base} has 4 decoder layers")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--seeds", "0", "-1"], "argument --seeds: -1 is negative; seeds are 0, 1, 2, ..."),
    (["--seeds", "0", "1", "1"], "--seeds 0 1 1 repeats a seed"),
    (["--seeds", "1", "2"], "--seeds must include 0: seed 0 is the search run the lr is chosen from"),
    (["--seeds", "0", "1", "--seed", "2"], "--seed 2 is not one of --seeds (0 1)"),
    (["--grid", ""], "argument --grid: empty: give a comma list of learning rates such as 5e-3,1e-2,2e-2"),
    (["--grid", "0.01,0"], "argument --grid: learning rate 0 is not a positive number"),
    (["--grid=-1e-3"], "argument --grid: learning rate -0.001 is not a positive number"),
    (["--grid", "0.01,abc"], ("argument --grid: '0.01,abc' is not a comma list of learning rates such as "
                             "5e-3,1e-2,2e-2")),
    (["--only", "zero-shot", "--grid", "0.01"], ("--grid: none of the chosen methods trains (zero-shot has no "
                                                "learning rate)")),
])
def test_bad_protocol_flags_are_one_line_and_exit_2(tiny_set, tmp_path, capsys, flags, message):
    base, data = tiny_set
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--data", str(data), "--out", str(tmp_path / "out"), "--base", str(base), *flags])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].endswith(message)
    assert not (tmp_path / "out").exists()


def test_a_test_of_another_choice_than_the_searchs_is_refused_not_kept(tiny_set, tmp_path, capsys, monkeypatch):
    """A grid widened after its test can move the choice: the old test is then named in one line (exit 2), never
    reported as the new choice's nor overwritten."""
    monkeypatch.setenv("MM_ADAPTER_CACHE", str(tmp_path / "cache"))
    base, data = tiny_set
    out = tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--base", str(base), "--only", "llama-adapter",
            "--adapter-len", "4", "--adapter-layers", "2", "--quiet", "--grid"]
    assert cli.main([*argv, "5e-3"]) == 0
    shutil.copytree(out / "llama-adapter-lr0.005", out / "llama-adapter-lr0.01")  # a better lr, as if trained
    (out / "llama-adapter-lr0.01" / "validation.jsonl").write_text(json.dumps({"step": 1, "val_acc": 1.0}) + "\n")
    recipe = out / "llama-adapter-lr0.01" / "config.yaml"
    recipe.write_text(recipe.read_text().replace("\n  lr: 0.005\n", "\n  lr: 0.01\n"))
    before = (out / "llama-adapter-test" / "predictions.json").read_bytes()
    capsys.readouterr()
    assert cli.main([*argv, "5e-3,1e-2"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"error: {out / 'llama-adapter-test'}: it evaluated ")
    assert error[0].endswith("move the folder aside to test the new choice")
    assert (out / "llama-adapter-test" / "predictions.json").read_bytes() == before


def test_the_documented_protocol_commands_parse(tiny_set, tmp_path):
    """docs/comparison.md's issue-25 commands are this harness's flags (data, out and base swapped for the tiny
    world's), so the protocol a researcher copies runs as written."""
    base, data = tiny_set
    page = (Path(__file__).parents[1] / "docs" / "comparison.md").read_text()
    block = page.split("## Protocol (issue 25)")[1].split("```bash")[1].split("```")[0]
    commands = [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.startswith("python")]
    assert len(commands) == 6
    for words in commands:
        assert words[:3] == ["python", "-m", "bench.methods"]
        swapped = {"--data": str(data), "--out": str(tmp_path / "out"), "--base": str(base)}
        argv = [swapped.get(before, word) for before, word in zip(["", *words[3:]], words[3:])]
        args = cli.parse([*argv, "--base", str(base)] if "--base" not in argv else argv)
        assert args.epochs == 2 and args.seeds == [0, 1, 2]
    assert not (tmp_path / "out").exists()
