"""Issue 12, class 8 (files): only regular files are read as data, image paths stay inside the data folder, and a
photo's EXIF orientation is applied before it is encoded.

A FIFO, a device or a folder given as a data file, problems.json, captions.json, pid_splits.json, parquet or image
is refused from its ``stat`` before it is opened (opening a FIFO for reading would block forever), as one line
through the library (``MMAdapterError``/``ScienceQAError``) and through the command (exit 2, one ``error:`` line,
no traceback, every file that was there left byte for byte). The tests never open a FIFO themselves, and every
call that could block runs under :func:`finishes` so that a regression fails instead of hanging.

Also the helpers the other issue-12 test modules use: :func:`snapshot`, :func:`finishes`, :func:`command`,
:func:`assert_refused`.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from PIL import ExifTags, Image

from mm_adapter import MMAdapterError
from mm_adapter.cli import main
from mm_adapter.data.alpaca import read_alpaca
from mm_adapter.data.features import compute_features
from mm_adapter.demo.predictor import check_image
from mm_adapter.encoders.clip import build_encoder
from mm_adapter.encoders.feature_cache import FeatureCache, cache_key, image_features, load_image
from mm_adapter.errors import ScienceQAError
from mm_adapter.scienceqa.data import Problem, image_path, read_official
from test_demo_predictor import TINY, DemoFiles, make_demo_files, png
from test_eval_run import single_thread  # noqa: F401 (autouse fixture)
from test_scienceqa_data import record, write_official

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


# --- helpers shared by the issue-12 test modules --------------------------------------------------------------

def snapshot(folder: Path) -> dict[str, Any]:
    """Every entry under ``folder``: a regular file by its bytes, anything else (FIFO, link, folder) by its mode;
    nothing but regular files is opened."""
    found = {}
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(parent, name)
            mode = path.lstat().st_mode
            found[str(path.relative_to(folder))] = path.read_bytes() if stat.S_ISREG(mode) else stat.filemode(mode)
    return found


def finishes(call: Callable[[], Any], seconds: float = 30) -> Any:
    """``call()``'s result or exception, failing (not hanging) when it blocks, as a read of a FIFO would."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed back to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s (a FIFO or device opened for reading?)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def command(argv: list[str], capfd) -> tuple[int, str, str]:
    """``mm-adapter ARGV`` in this process (guarded by :func:`finishes`): exit code, stdout, stderr."""
    capfd.readouterr()
    code = finishes(lambda: main(argv), 120)
    out, err = capfd.readouterr()
    return code, out, err


def assert_refused(code: int, err: str, *needles: str, last: bool = False) -> None:
    """Exit 2 and one ``error:`` line naming the needles, no traceback; ``last``: progress lines may come before."""
    assert code == 2 and "Traceback" not in err, err
    lines = err.splitlines()
    line = lines[-1] if last else err
    assert line.startswith("error: ") and (last or err.count("\n") == 1), err
    assert sum(x.startswith("error: ") for x in lines) == 1 and all(needle in line for needle in needles), err


def refuses(error_type: type[Exception], call: Callable[[], Any], *needles: str) -> str:
    """The one-line message of the error ``call`` raises promptly, checked to name every needle."""
    with pytest.raises(error_type) as info:
        finishes(call)
    message = str(info.value)
    assert "\n" not in message and all(needle in message for needle in needles), message
    return message


# --- fixtures -------------------------------------------------------------------------------------------------

@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.json"
    os.mkfifo(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> DemoFiles:
    return make_demo_files(tmp_path_factory.mktemp("special"))


@pytest.fixture(scope="module")
def encoder():
    return build_encoder(TINY)


def official(root: Path, problems: dict | None = None) -> Path:
    """A small official layout: pid 1 text-only, pid 2 with an image in images/test/2/image.png."""
    problems = problems or {"1": record(), "2": record(image="image.png")}
    write_official(root, problems, {"test": list(problems)}, captions={"2": "A red square."})
    (root / "images" / "test" / "2").mkdir(parents=True)
    (root / "images" / "test" / "2" / "image.png").write_bytes(png("red"))
    return root


def with_fifo(root: Path, name: str) -> Path:
    """``root`` with ``name`` replaced by a FIFO."""
    (root / name).unlink(missing_ok=True)
    os.mkfifo(root / name)
    return root


# --- the library ----------------------------------------------------------------------------------------------

def test_the_library_refuses_fifos_devices_and_folders_as_data(tmp_path, fifo):
    """Alpaca data, problems.json, pid_splits.json, captions.json (FIFO or folder) and parquet files (a FIFO given
    directly or found in a folder) are each refused in one line naming the file, without being opened."""
    refuses(MMAdapterError, lambda: read_alpaca(fifo), str(fifo), "FIFO")
    refuses(MMAdapterError, lambda: read_alpaca(os.devnull), os.devnull, "character device")
    refuses(MMAdapterError, lambda: read_alpaca(tmp_path), str(tmp_path), "folder")
    for name in ("problems.json", "pid_splits.json", "captions.json"):
        root = with_fifo(official(tmp_path / name), name)
        refuses(ScienceQAError, lambda: read_official(root, "test"), str(root / name), "not a regular file")
    root = official(tmp_path / "folder-captions")
    (root / "captions.json").unlink()
    (root / "captions.json").mkdir()
    refuses(ScienceQAError, lambda: read_official(root, "test"), "captions.json", "is a folder")
    from mm_adapter.scienceqa.hf import load_hf

    parquet = tmp_path / "test-00000-of-00001.parquet"
    os.mkfifo(parquet)
    refuses(ScienceQAError, lambda: load_hf(parquet, "test"), str(parquet), "not a regular file")
    refuses(ScienceQAError, lambda: load_hf(tmp_path, "test"), str(parquet), "not a regular file")


def test_the_library_refuses_or_skips_images_that_are_not_regular_files(tmp_path, fifo, encoder):
    """An image that is a FIFO, a device or a folder is one line (the demo's check, the image loader, the feature
    path), or with the skip option a problem without an image, counted."""
    refuses(MMAdapterError, lambda: load_image(fifo), str(fifo), "FIFO")
    refuses(MMAdapterError, lambda: check_image(fifo), str(fifo), "FIFO")
    refuses(MMAdapterError, lambda: check_image(os.devnull), "character device")
    refuses(MMAdapterError, lambda: image_features(encoder, [png("red"), tmp_path], cache=False), "is a folder")
    found = finishes(lambda: image_features(encoder, [png("red"), fifo, os.devnull], cache=False, on_error="skip"))
    assert found.mask.tolist() == [True, False, False] and len(found.skipped) == 2
    root = official(tmp_path / "data")
    with_fifo(root / "images" / "test" / "2", "image.png")
    problems, _ = read_official(root, "test")
    refuses(MMAdapterError, lambda: compute_features(encoder, problems, root), "image.png", "FIFO")
    features = finishes(lambda: compute_features(encoder, problems, root, skip_bad=True))
    assert features.by_pid == {} and len(features.skipped) == 1 and "FIFO" in features.skipped[0]


def escaping_layout(tmp_path: Path) -> Path:
    """Pid 2 is fine; pid "../../../outside" climbs out of images/; pid 3's image is a symlink to a file outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "image.png").write_bytes(png("blue"))
    problems = {"2": record(image="image.png"), "../../../outside": record(image="image.png"),
                "3": record(image="image.png")}
    root = official(tmp_path / "data", problems)
    (root / "images" / "test" / "3").mkdir(parents=True)
    (root / "images" / "test" / "3" / "image.png").symlink_to(outside / "image.png")
    return root


def test_image_paths_stay_inside_the_data_folder(tmp_path, encoder):
    """A pid that climbs out of images/ ("../../../outside") and a symlink out of it are refused in one line naming
    the pid, or skipped and counted with skip_bad; an images/ folder that is itself a link elsewhere is fine."""
    root = escaping_layout(tmp_path)
    problems = {p.pid: p for p in read_official(root, "test")[0]}
    for pid in ("../../../outside", "3"):
        refuses(ScienceQAError, lambda: image_path(problems[pid], root), f"pid {pid}", "leads outside")
    refuses(ScienceQAError, lambda: compute_features(encoder, list(problems.values()), root),
            "pid ../../../outside", "--skip-bad-images")
    features = compute_features(encoder, list(problems.values()), root, skip_bad=True)
    assert list(features.by_pid) == ["2"] and len(features.skipped) == 2
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "images").symlink_to(root / "images", target_is_directory=True)
    assert image_path(problems["2"], linked).is_file()


# --- EXIF orientation -----------------------------------------------------------------------------------------

def sideways_jpeg() -> tuple[bytes, Image.Image]:
    """A JPEG stored 48 wide x 24 high (left red, right blue) whose EXIF says "rotate 90 degrees clockwise to view"
    (orientation 6), and its pixels as decoded, before any rotation."""
    stored = Image.new("RGB", (48, 24), "red")
    stored.paste(Image.new("RGB", (24, 24), "blue"), (24, 0))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif)
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    decoded.load()
    return buffer.getvalue(), decoded


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_exif_orientation_is_applied_before_encoding(encoder, tmp_path):
    """A JPEG taken sideways (EXIF orientation 6) loads upright (24 wide, red on top) and its features equal those of
    the same pixels rotated by hand, not those of the stored pixels; its cache entry is not the unrotated one's."""
    data, decoded = sideways_jpeg()
    upright = load_image(data)
    assert upright.size == (24, 48)
    top, bottom = upright.getpixel((12, 4)), upright.getpixel((12, 44))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]
    by_hand = png_of(decoded.transpose(Image.Transpose.ROTATE_270))
    features = image_features(encoder, [data, by_hand, png_of(decoded)], cache=False).features
    assert torch.allclose(features[0], features[1], atol=1e-6)
    assert not torch.allclose(features[0], features[2], atol=1e-3)
    assert cache_key(data).endswith("-exif6") and "-" not in cache_key(by_hand)
    cache = FeatureCache(encoder, tmp_path / "cache")
    cached = image_features(encoder, [data], cache=cache).features
    assert cache.misses == 1 and torch.allclose(image_features(encoder, [data], cache=cache).features, cached)
    assert cache.hits == 1


# --- the command ----------------------------------------------------------------------------------------------

def test_the_command_refuses_special_files_in_one_line(tmp_path, fifo, files, capfd):
    """``mm-adapter train alpaca``, ``eval scienceqa`` (official and parquet layouts) and ``demo`` given a FIFO, a
    device or a folder where a data file or image belongs: exit 2, one line naming it, no traceback, no output
    folder, every file there unchanged."""
    root = official(tmp_path / "data")
    fifo_problems = with_fifo(official(tmp_path / "fifo-problems"), "problems.json")
    folder_splits = official(tmp_path / "folder-splits")
    (folder_splits / "pid_splits.json").unlink()
    (folder_splits / "pid_splits.json").mkdir()
    parquet = tmp_path / "test-00000-of-00001.parquet"
    os.mkfifo(parquet)
    out = tmp_path / "out"
    evaluate = ["eval", "scienceqa", "--split", "test", "--out", str(out), "--base", str(files.base), "--device", "cpu"]
    question = ["--base", str(files.base), "--question", "Which?", "--choices", "a", "b"]
    cases = [
        (["train", "alpaca", "--data", str(fifo), "--out", str(out)], (str(fifo), "FIFO")),
        (["train", "alpaca", "--data", os.devnull, "--out", str(out)], (os.devnull, "character device")),
        ([*evaluate, "--data", str(fifo_problems)], ("problems.json", "not a regular file")),
        ([*evaluate, "--data", str(folder_splits)], ("pid_splits.json", "is a folder")),
        ([*evaluate, "--hf", str(parquet)], (str(parquet), "not a regular file")),
        (["demo", *question, "--image", str(fifo)], (str(fifo), "FIFO")),
        (["demo", *question, "--image", os.devnull], (os.devnull, "character device")),
        (["demo", *question, "--image", str(root)], (str(root), "is a folder")),
    ]
    for argv, needles in cases:
        before = snapshot(tmp_path)
        code, stdout, err = command(argv, capfd)
        assert_refused(code, err, *needles)
        assert stdout == "" and not out.exists() and snapshot(tmp_path) == before


def test_the_command_refuses_or_skips_images_outside_the_data_folder(tmp_path, files, capfd):
    """``mm-adapter eval scienceqa`` with an image adapter on a data set whose image paths leave the data folder:
    exit 2 naming the pid (after the progress lines), or with --skip-bad-images a run that counts them; no input
    file changes either way."""
    root = escaping_layout(tmp_path)
    argv = ["eval", "scienceqa", "--data", str(root), "--split", "test", "--base", str(files.base), "--adapter",
            str(files.visual), "--device", "cpu", "--no-progress", "--bootstrap", "0"]
    before = snapshot(tmp_path)
    code, stdout, err = command([*argv, "--out", str(tmp_path / "refused")], capfd)
    assert_refused(code, err, "pid ../../../outside", "leads outside", last=True)
    assert not (tmp_path / "refused" / "predictions.json").exists()
    code, stdout, err = command([*argv, "--out", str(tmp_path / "skipped"), "--skip-bad-images"], capfd)
    assert code == 0 and "test: 2 bad image(s) skipped" in err and "Traceback" not in err, err
    after = snapshot(tmp_path)
    assert {name: after[name] for name in before} == before


def test_a_fifo_as_data_in_a_real_process_is_one_line(tmp_path, fifo):
    """``python -m mm_adapter train alpaca --data FIFO`` in a real process: exit 2 within seconds, one line naming
    the FIFO, no traceback, no output folder."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "mm_adapter", "train", "alpaca", "--data", str(fifo), "--out",
                           str(out)], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
    assert_refused(done.returncode, done.stderr, str(fifo), "FIFO")
    assert done.stdout == "" and not out.exists() and stat.S_ISFIFO(fifo.lstat().st_mode)


def test_problems_are_written_as_read(tmp_path):
    """The layouts above are what the loader reads (pid 2 has its image), so the refusals are about the files."""
    root = official(tmp_path / "data")
    problems, summary = read_official(root, "test", check_images=True)
    assert [p.pid for p in problems] == ["1", "2"] and summary.missing_images == 0
    assert isinstance(problems[1], Problem) and problems[1].caption == "A red square."
    assert json.loads((root / "pid_splits.json").read_text()) == {"test": ["1", "2"]}
