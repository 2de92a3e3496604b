"""Stress of issue 23, class 10: ``mm-adapter serve`` stopped by SIGTERM/SIGINT while handler threads are alive, many
times over with the other cores kept busy; prints how often each exit code came (not a timed test).

    python -m bench.serve_signals                          # 40 rounds of this checkout
    python -m bench.serve_signals --rounds 60 --baseline OLD_CHECKOUT   # and the same rounds of an older checkout

Each round starts the documented command on a tiny base with a visual adapter (made once, in a temporary folder),
waits for its address line, then keeps handler threads busy in the ways the flaky test met: /health requests in a
loop (each logs a line as its answer goes out), a /predict upload (a computation), and a client stalled mid-upload;
it sends SIGTERM (expect 143) or SIGINT (expect 130) at a random moment in the next 0-200 ms, and records the exit
code and whether stderr holds "Fatal Python error" or a traceback. A busy-loop process per other core runs
throughout. ``--baseline`` runs an older checkout's code (its folder first on PYTHONPATH) in the same rounds,
interleaved, so both see the same load.
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {signal.SIGTERM: 143, signal.SIGINT: 130}


def make_files(folder: Path) -> tuple[Path, Path]:
    """A tiny base folder and a visual adapter for it (the demo tests' files)."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_demo_predictor import make_demo_files

    files = make_demo_files(folder)
    return files.base, files.visual


def _burn(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _multipart() -> tuple[bytes, str]:
    boundary = "mmadapterbench"
    fields = {"question": "Which solution has a higher concentration of green particles?",
              "choices": "Solution A\nSolution B", "context": ""}
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


def _traffic(port: int, stop: threading.Event) -> None:
    """Handler threads alive in every state: logging /health answers, a prediction, a stalled upload."""
    url = f"http://127.0.0.1:{port}/"
    body, content_type = _multipart()

    def health() -> None:
        while not stop.is_set():
            try:
                urllib.request.urlopen(url + "health", timeout=5).read()
            except Exception:  # noqa: BLE001 - the server going away mid-answer ends this client
                return

    def predict() -> None:
        while not stop.is_set():
            try:
                request = urllib.request.Request(url + "predict", data=body, headers={"Content-Type": content_type})
                urllib.request.urlopen(request, timeout=5).read()
            except Exception:  # noqa: BLE001 - the server going away mid-answer ends this client
                return

    def stalled() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                client.sendall(b"POST /predict HTTP/1.0\r\nContent-Type: " + content_type.encode() +
                               b"\r\nContent-Length: 100000\r\n\r\n" + body[:20])
                stop.wait(10)
        except Exception:  # noqa: BLE001
            return

    for target in (health, health, predict, stalled):
        threading.Thread(target=target, daemon=True).start()


def one_round(base: Path, adapter: Path, stop_signal: int, pythonpath: str | None, rng: random.Random) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [str(Path(sys.executable).with_name("mm-adapter")), "serve", "--base", str(base), "--adapter",
               str(adapter), "--port", "0", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               cwd=tempfile.gettempdir())
    stop = threading.Event()
    err_lines: list[str] = []  # drained as it comes: a full stderr pipe would block the server's log writes
    drain = threading.Thread(target=lambda: err_lines.extend(process.stderr), daemon=True)
    drain.start()
    try:
        found = re.match(r"demo at http://127\.0\.0\.1:(\d+)/", process.stdout.readline())
        if not found:
            return {"code": process.wait(), "fatal": False, "traceback": False, "started": False}
        _traffic(int(found.group(1)), stop)
        time.sleep(0.3 + rng.random() * 0.2)
        process.send_signal(stop_signal)
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        code = "hung"
    finally:
        stop.set()
    drain.join(10)
    err = "".join(err_lines)
    return {"code": code, "fatal": "Fatal Python error" in err, "traceback": "Traceback" in err, "started": True,
            "tail": err.strip().splitlines()[-3:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--baseline", type=Path, help="an older checkout to run the same rounds with")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    burn_stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=_burn, args=(burn_stop,), daemon=True)
               for _ in range(max(1, (os.cpu_count() or 2) - 1))]
    for burner in burners:
        burner.start()
    trees = {"this checkout": None, **({"baseline": str(args.baseline.resolve())} if args.baseline else {})}
    tallies = {name: collections.Counter() for name in trees}
    try:
        with tempfile.TemporaryDirectory() as folder:
            base, adapter = make_files(Path(folder))
            for number in range(args.rounds):
                stop_signal = (signal.SIGTERM, signal.SIGINT)[number % 2]
                for name, pythonpath in trees.items():
                    result = one_round(base, adapter, stop_signal, pythonpath, rng)
                    good = result["code"] == EXPECTED[stop_signal] and not result["fatal"] and not result["traceback"]
                    tallies[name][(signal.Signals(stop_signal).name, result["code"], "ok" if good else "BAD")] += 1
                    if not good:
                        print(f"  {name}: {signal.Signals(stop_signal).name} -> {result['code']}, stderr ends "
                              f"{result.get('tail')}", file=sys.stderr, flush=True)
                print(f"round {number + 1}/{args.rounds} " + "  ".join(
                    f"{name}: {sum(v for k, v in t.items() if k[2] == 'BAD')} bad" for name, t in tallies.items()),
                    file=sys.stderr, flush=True)
    finally:
        burn_stop.set()
        for burner in burners:
            burner.join(5)
    for name, tally in tallies.items():
        rows = [{"signal": s, "exit_code": c, "verdict": v, "count": n} for (s, c, v), n in sorted(tally.items(),
                                                                                             key=str)]
        print(json.dumps({"tree": name, "rounds": args.rounds, "counts": rows}))
        bad = sum(n for (_, _, v), n in tally.items() if v == "BAD")
        print(f"{name}: {args.rounds - bad}/{args.rounds} rounds exited 143/130 with one line; {bad} did not")


if __name__ == "__main__":
    main()
