"""Tiny video clips for tests: GIF (PIL), MP4 (H.264) and WebM (VP9) through PyAV, a few frames of flat colours."""

from __future__ import annotations

import io

import av
import numpy as np
from PIL import Image

CODECS = {"mp4": "libx264", "webm": "libvpx-vp9"}


def frames_of(colours: list, size: int = 32) -> list[Image.Image]:
    """One flat frame per colour (a name or an RGB tuple); a corner pixel alternates black and white so that no two
    neighbours are equal (the GIF writer would merge them) while telling nothing of a frame's place but its parity."""
    frames = []
    for index, colour in enumerate(colours):
        frame = Image.new("RGB", (size, size), colour)
        frame.putpixel((0, 0), (0, 0, 0) if index % 2 else (255, 255, 255))
        frames.append(frame)
    return frames


def gif(colours: list, size: int = 32) -> bytes:
    frames = frames_of(colours, size)
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0, disposal=1)
    return buffer.getvalue()


def video(colours: list, container: str = "mp4", size: int = 32) -> bytes:
    """An MP4 (H.264) or WebM (VP9) clip of the colours; ``colours=[]`` writes a clip with no frames."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as output:
        stream = output.add_stream(CODECS[container], rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        output.start_encoding()  # the header, even with no frames to follow
        for frame in frames_of(colours, size):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def clip(colours: list, kind: str = "gif", size: int = 32) -> bytes:
    return gif(colours, size) if kind == "gif" else video(colours, kind, size)
