"""The main job: data -> multimodal adapter on SmolLM2 -> test table -> one demo answer (``mm-adapter main``).

Data, in order: a local official-layout ScienceQA given with ``data``; the Hugging Face copy when
the hub answers within seconds (never offline: ``HF_HUB_OFFLINE=1`` says no at once); else the
embedded default, a generated ScienceQA-format image set (``scienceqa.synthetic``) whose
answers are visible only in the images. Everything goes to one fresh folder.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from mm_adapter.data.config import ScienceQASource
from mm_adapter.demo.predictor import Prediction, Predictor
from mm_adapter.encoders.config import VisualConfig
from mm_adapter.eval.config import EvalConfig, TableConfig
from mm_adapter.eval.table import TableResult, build_table
from mm_adapter.files.output_folder import CONFIG_NAME, Output, outputs_in, write_config
from mm_adapter.jobs.configs.evaluation import EvalScienceQAConfig
from mm_adapter.jobs.configs.main_job import MainConfig
from mm_adapter.jobs.configs.training import TrainScienceQAConfig
from mm_adapter.jobs.eval_scienceqa import EvalResult, eval_outputs, eval_scienceqa
from mm_adapter.jobs.runtime import job_folder, resolve_device, use_threads
from mm_adapter.jobs.train_scienceqa import ScienceQATrainResult, scienceqa_outputs, train_scienceqa
from mm_adapter.model.config import AdapterConfig, ModelOptions
from mm_adapter.scienceqa.data import image_path, read_official
from mm_adapter.scienceqa.synthetic import generate
from mm_adapter.training.config import TrainConfig

COMMAND = "main"
HUB_HOST, HUB_DATASET = "huggingface.co", "derek-thomas/ScienceQA"
ADAPTER_DIR, TEST_DIR, DATA_DIR = "adapter", "test", "data"
TABLE_MD, TABLE_PNG, TABLE_JSON = "table.md", "table.png", "table.json"


@dataclass
class MainResult:
    out: Path
    data: str  # what data was used, in words
    train: ScienceQATrainResult
    eval: EvalResult
    table: TableResult | None  # None on the hub copy (no problems.json to table against)
    demo: Prediction | None
    demo_question: object | None  # the Problem the demo answered
    seconds: float


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers quickly; offline settings and closed networks say no in seconds."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def fresh_folder(root: Path) -> Path:
    """``root/main-<time>``: a new run never overwrites an earlier one."""
    folder = root / time.strftime("main-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def choose_data(config: MainConfig, out: Path) -> tuple[ScienceQASource, str]:
    """The data source, and a line saying what was chosen."""
    if config.data:
        return ScienceQASource(data=config.data), f"local ScienceQA at {config.data}"
    if config.hub and hub_reachable():
        return ScienceQASource(hf=HUB_DATASET), f"the hub copy {HUB_DATASET}"
    sizes = {"train": config.n_train, "val": config.n_val, "test": config.n_test}
    folder = generate(out / DATA_DIR, sizes, seed=config.seed)
    return ScienceQASource(data=str(folder)), (f"generated image questions ({config.n_train} train / {config.n_val} "
                                               f"val / {config.n_test} test) in {folder}; no ScienceQA given or "
                                               "reachable")


def first_image_problem(source: ScienceQASource, split: str):
    if source.data is None:
        return None, None
    for problem in read_official(source.data, split=split, captions=False)[0]:
        if problem.has_image:
            return problem, image_path(problem, source.data)
    return None, None


def main_outputs(config: MainConfig, out: Path) -> list[Output]:
    """Every path the job writes in ``out``, its training and test runs' included (none may be an input)."""
    generated = [] if config.data else [DATA_DIR]
    return (outputs_in("--out", out, [CONFIG_NAME, TABLE_MD, TABLE_PNG, TABLE_JSON], folders=generated)
            + scienceqa_outputs(out / ADAPTER_DIR) + eval_outputs(out / TEST_DIR))


def main_job(config: MainConfig) -> MainResult:
    started = time.perf_counter()
    use_threads(config.model.threads)
    out = Path(config.out) if config.out else fresh_folder(Path(config.runs))
    with job_folder(out, main_outputs(config, out), {"--data": config.data, "--base": config.model.base}):
        return _main_in(config, out, started)


def _main_in(config: MainConfig, out: Path, started: float) -> MainResult:
    """The job inside its locked output folder: data, training, test table, one demo answer."""
    write_config(out, COMMAND, config)
    source, said = choose_data(config, out)
    print(f"[1/4] data: {said}", flush=True)
    model = ModelOptions(base=config.model.base, dtype="bf16", device=config.model.device,
                         threads=config.model.threads)
    print(f"[2/4] training a multimodal adapter on {model.base} -> {out / ADAPTER_DIR}", flush=True)
    trained = train_scienceqa(TrainScienceQAConfig(
        out=str(out / ADAPTER_DIR), source=source, format=config.format, images=True, model=model,
        adapter=AdapterConfig(adapter_layers=config.adapter_layers),
        train=TrainConfig(epochs=config.epochs, warmup_epochs=0.5, lr=config.lr, batch_size=8, seed=config.seed,
                          progress=config.progress),
        visual=VisualConfig(clip_model=config.clip_model, clip_layers=config.clip_layers, visual_standardize=True)))
    print(f"[3/4] evaluating {trained.best_path.name} on test -> {out / TEST_DIR}", flush=True)
    evaluated = eval_scienceqa(EvalScienceQAConfig(
        split="test", out=str(out / TEST_DIR), source=source, adapter=str(trained.best_path),
        name=f"mm-adapter ({model.base}, images)", progress=config.progress,
        model=ModelOptions(base=model.base, device=model.device, threads=model.threads),
        eval=EvalConfig(bf16=True)))
    table = None
    if source.data is not None:
        data_name = "generated image set" if config.data is None else "ScienceQA"
        table = build_table(TableConfig(predictions=[str(evaluated.predictions)], problems=source.data,
                                        markdown=str(out / TABLE_MD), plot=str(out / TABLE_PNG),
                                        json=str(out / TABLE_JSON), bootstrap=1000, title=f"{data_name}, test"))
    problem, image = first_image_problem(source, "test")
    prediction = None
    if problem is not None:
        predictor = Predictor.load(model.base, trained.best_path, resolve_device(model.device))
        prediction = predictor.predict(image, problem.question, problem.choices, problem.hint)
    return MainResult(out, said, trained, evaluated, table, prediction, problem, time.perf_counter() - started)
