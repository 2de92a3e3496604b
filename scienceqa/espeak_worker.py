"""The speech worker: eSpeak NG (the library and voice data of the pinned ``espeakng-loader`` wheel, through ctypes),
run as its own process by :mod:`mm_adapter.scienceqa.speech`.

Why a process of its own, and a fork per utterance: libespeak-ng keeps state in C statics that neither
``espeak_Terminate`` nor a new ``espeak_Initialize`` resets (the same word said twice in one process comes out with
different samples), so an utterance is reproducible only when synthesised from the state just after initialising.
This process initialises once, then forks a child per request that synthesises from that pristine state and exits;
it is single-threaded and imports only the standard library, so forking it is safe (forking the caller, which may
run torch's threads, would not be). Where there is no ``fork`` it answers one request (``--once``) and the caller
starts one process per utterance.

Protocol: one JSON request per line on stdin, ``{"text", "voice", "rate", "pitch"}``; the answer on stdout is a JSON
line ``{"samples": n, "rate": hz}`` then ``n`` little-endian int16 samples, or ``{"error": "..."}``.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys

AUDIO_OUTPUT_SYNCHRONOUS = 2
ESPEAK_RATE, ESPEAK_PITCH = 1, 3
POS_CHARACTER, ESPEAK_CHARS_UTF8 = 1, 1
CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Engine:
    """libespeak-ng loaded and initialised (synchronous output: samples come back through a callback)."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                          ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        data = espeakng_loader.get_data_path().encode()
        self.rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.rate}) with the data at {data.decode()}")
        self.chunks: list[bytes] = []
        self._callback = CALLBACK(self._collect)  # kept referenced: the library calls it
        self.lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, count: int, _events) -> int:
        if count > 0:
            self.chunks.append(ctypes.string_at(wav, count * 2))
        return 0  # 0: go on synthesising

    def synth(self, text: str, voice: str, rate: int, pitch: int) -> bytes:
        """int16 samples at ``self.rate`` of ``text`` said by ``voice`` (e.g. "en-us+f3") at ``rate`` words a minute
        and ``pitch`` (0-99)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"voice {voice!r} is not in the eSpeak NG data")
        self.lib.espeak_SetParameter(ESPEAK_RATE, int(rate), 0)
        self.lib.espeak_SetParameter(ESPEAK_PITCH, int(pitch), 0)
        encoded = text.encode()
        self.chunks = []
        status = self.lib.espeak_Synth(encoded, len(encoded) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_UTF8, None, None)
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed ({status}) on {text!r}")
        self.lib.espeak_Synchronize()
        return b"".join(self.chunks)


def _answer(engine: Engine, line: bytes) -> bytes:
    try:
        request = json.loads(line)
        samples = engine.synth(request["text"], request["voice"], request["rate"], request["pitch"])
    except Exception as error:  # noqa: BLE001 (any failure goes back to the caller, which names the text and voice)
        return json.dumps({"error": f"{type(error).__name__}: {error}"}).encode() + b"\n"
    return json.dumps({"samples": len(samples) // 2, "rate": engine.rate}).encode() + b"\n" + samples


def _in_child(engine: Engine, line: bytes) -> bytes:
    """The answer computed in a forked child, so this process keeps the pristine state for the next request."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        data = _answer(engine, line)
        view = memoryview(data)
        while view:
            view = view[os.write(write, view):]
        os._exit(0)
    os.close(write)
    parts = []
    while chunk := os.read(read, 1 << 16):
        parts.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    if not parts:
        return json.dumps({"error": f"the synthesising child died (wait status {status})"}).encode() + b"\n"
    return b"".join(parts)


def main() -> int:
    engine = Engine()
    once = "--once" in sys.argv
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        out.write(_answer(engine, line) if once else _in_child(engine, line))
        out.flush()
        if once:
            break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
