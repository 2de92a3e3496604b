"""``mm-adapter convert``: official -> ours -> PEFT on a base folder, overwrite protection, one-line errors; the
documented ``mm-adapter convert`` in a real process."""

import json
import os
import re
import subprocess

import pytest
import torch
from entry_point import MM_ADAPTER
from safetensors import safe_open
from test_interop_litgpt import litgpt_file

from mm_adapter import load_adapter, load_base, read_adapter
from mm_adapter.cli import main
from mm_adapter.errors import ConfigError
from mm_adapter.interop import load_foreign_adapter
from mm_adapter.interop.litgpt import LAYOUTS, import_litgpt
from mm_adapter.jobs.configs.interop import LITGPT_LAYOUTS, ConvertConfig
from mm_adapter.jobs.convert import convert as convert_job
from mm_adapter.model.config import ModelOptions
from tiny_text import tiny_base_folder

COMMAND = [MM_ADAPTER, "convert"]


def convert(*args, capsys):
    """``mm-adapter convert ARGS`` in this process; returns (exit code, stdout, stderr) of that call alone."""
    capsys.readouterr()
    code = main(["convert", *(str(arg) for arg in args)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base_folder(tmp_path_factory.mktemp("base"))


def official_file(path, heads=4, layers=4, adapter_len=10):
    state = {"adapter_query.weight": torch.randn(adapter_len * 2, 64, generator=torch.Generator().manual_seed(2))}
    state.update({f"layers.{i}.attention.gate": torch.full((1, heads, 1, 1), 0.1 * (i + 1)) for i in range(layers)})
    torch.save(state, path)
    return path


def logits(model):
    with torch.no_grad():
        return model(input_ids=torch.arange(3, 12)[None]).logits


def test_official_to_ours_to_peft_and_back(base, tmp_path, capsys):
    """The official release converted to ours gives the same logits as loading the release directly (and records
    where it came from); ours -> PEFT -> ours gives them back; the command says what it wrote, nothing on stderr."""
    release = official_file(tmp_path / "release.pth")
    written = convert_job(ConvertConfig(input=str(release), output=str(tmp_path / "a.safetensors"), source="official",
                                        target="ours", model=ModelOptions(base=str(base))))
    assert written == tmp_path / "a.safetensors"
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as handle:
        assert handle.metadata()["imported_from"] == "official:release.pth"
    direct, _ = load_base(str(base))
    load_foreign_adapter(direct, "official", release)
    converted, _ = load_base(str(base))
    load_adapter(converted, tmp_path / "a.safetensors")  # our loader, with its base check
    assert torch.equal(logits(converted), logits(direct))

    code, out, err = convert("--from", "ours", "--to", "peft", "--base", base, tmp_path / "a.safetensors",
                             tmp_path / "peft", capsys=capsys)
    assert (code, err, out) == (0, "", f"wrote {tmp_path / 'peft'}\n")
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["adapter_len"] == 10
    code, _, err = convert("--from", "peft", "--to", "ours", "--base", base, tmp_path / "peft",
                           tmp_path / "b.safetensors", capsys=capsys)
    assert (code, err) == (0, "")
    back, _ = load_base(str(base))
    load_adapter(back, tmp_path / "b.safetensors")
    torch.testing.assert_close(logits(back), logits(direct), atol=1e-5, rtol=1e-5)


def test_existing_output_is_refused_unless_overwrite(base, tmp_path, capsys):
    """An existing OUTPUT is refused in one line and left untouched (the documented script in a real process: exit
    2, no traceback); with --overwrite it is replaced."""
    release = official_file(tmp_path / "release.pth")
    target = tmp_path / "a.safetensors"
    target.write_text("keep me")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*COMMAND, "--from", "official", "--to", "ours", "--base", str(base),
                           str(release), str(target)], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"error: {target}: already exists (use --overwrite to replace it)\n"
    assert target.read_text() == "keep me"
    code, _, err = convert("--from", "official", "--to", "ours", "--base", base, release, target, capsys=capsys)
    assert code == 2 and err == f"error: {target}: already exists (use --overwrite to replace it)\n"
    assert target.read_text() == "keep me"
    code, _, err = convert("--from", "official", "--to", "ours", "--base", base, "--overwrite", release, target,
                           capsys=capsys)
    assert (code, err) == (0, "")
    with safe_open(str(target), "pt") as handle:
        assert "layers.3.prompt" in handle.keys()


@pytest.mark.parametrize("case,match", [
    ("heads", r"r.pth: layers.2.attention.gate has shape \[1, 8, 1, 1\], expected \[1, 4, 1, 1\]"),
    ("spread", r"layer 2: per-head gates differ \(effective identity gate from 0 to 0.3, spread 0.3\)"),
    ("missing", r"nowhere.pth: no such file"),
])
def test_bad_input_is_one_line_and_exit_2(base, tmp_path, capsys, case, match):
    """A release of another shape, per-head gates PEFT cannot hold, a missing file: exit 2, one "error:" line naming
    the problem, no output written."""
    release = official_file(tmp_path / "r.pth", heads=8 if case == "heads" else 4)
    if case == "spread":
        state = torch.load(release)
        state["layers.2.attention.gate"] = torch.tensor([0.0, 0.1, 0.2, 0.3]).view(1, 4, 1, 1)
        torch.save(state, release)
    source = tmp_path / "nowhere.pth" if case == "missing" else release
    code, _, err = convert("--from", "official", "--to", "peft" if case == "spread" else "ours", "--base", base,
                           source, tmp_path / "out", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and re.match(f"error: .*{match}", err), err
    assert not (tmp_path / "out").exists()


def test_litgpt_layout_flag_reaches_the_importer(base, tmp_path, capsys):
    """--litgpt-layout reaches the litgpt importer: without it, a litgpt file on this GQA base is one line naming the
    flag (exit 2, nothing written); with it, the written adapter is the library's import in that layout, and the
    two layouts give different adapters. The flag's choices are the importer's."""
    litgpt = tmp_path / "lit_model.pth.adapter"
    litgpt_file(litgpt)
    code, _, err = convert("--from", "litgpt", "--base", base, litgpt, tmp_path / "none.safetensors", capsys=capsys)
    assert code == 2 and err.count("\n") == 1 and "pass --litgpt-layout pre-0.5.5 or --litgpt-layout 0.5.5+" in err
    assert not (tmp_path / "none.safetensors").exists()
    prompts = {}
    for layout in LAYOUTS:
        output = tmp_path / f"{layout}.safetensors"
        code, _, err = convert("--from", "litgpt", "--litgpt-layout", layout, "--base", base, litgpt, output,
                               capsys=capsys)
        assert (code, err) == (0, "")
        expected = import_litgpt(load_base(str(base))[0], litgpt, layout=layout)
        prompts[layout] = read_adapter(output).layers[3]["prompt"]
        assert torch.equal(prompts[layout], expected.layers[3]["prompt"])
    assert not torch.allclose(*prompts.values())
    assert LITGPT_LAYOUTS == LAYOUTS
    with pytest.raises(ConfigError, match="litgpt_layout: must be one of pre-0.5.5, 0.5.5\\+, got '0.5.4'"):
        ConvertConfig(input="a", output="b", source="litgpt", litgpt_layout="0.5.4")
