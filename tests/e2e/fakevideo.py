"""Fake camera clips for Chromium (``--use-file-for-fake-video-capture``).

Each participant gets a clip of its own colour (a plain background with a lighter
head-and-shoulders silhouette), so the test can tell whose video a tile shows:
a stream routed to the wrong tile would be the wrong colour.
"""

from __future__ import annotations

from pathlib import Path

WIDTH, HEIGHT, FPS, FRAMES = 320, 180, 15, 15


def _yuv(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Full-range BT.601 (what y4m's C420jpeg means)."""
    r, g, b = rgb
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return tuple(max(0, min(255, round(c))) for c in (y, u, v))  # type: ignore[return-value]


def _lighter(rgb: tuple[int, int, int], amount: float = 0.45) -> tuple[int, int, int]:
    return tuple(round(c + (255 - c) * amount) for c in rgb)  # type: ignore[return-value]


def _silhouette(x: float, y: float) -> bool:
    """A head and shoulders, in coordinates scaled to 0..1."""
    head = ((x - 0.5) / 0.11) ** 2 + ((y - 0.40) / 0.19) ** 2 <= 1
    shoulders = y >= 0.66 and ((x - 0.5) / 0.27) ** 2 + ((y - 1.02) / 0.36) ** 2 <= 1
    return head or shoulders


def write_clip(path: Path, rgb: tuple[int, int, int]) -> Path:
    """A short looping y4m clip: ``rgb`` background, lighter silhouette."""
    fg = _yuv(_lighter(rgb))
    bg = _yuv(rgb)
    plane_y = bytearray(WIDTH * HEIGHT)
    plane_u = bytearray(WIDTH * HEIGHT // 4)
    plane_v = bytearray(WIDTH * HEIGHT // 4)
    for row in range(HEIGHT):
        for col in range(WIDTH):
            inside = _silhouette(col / WIDTH, row / HEIGHT)
            plane_y[row * WIDTH + col] = (fg if inside else bg)[0]
            if row % 2 == 0 and col % 2 == 0:
                i = (row // 2) * (WIDTH // 2) + col // 2
                plane_u[i], plane_v[i] = (fg if inside else bg)[1:]
    frame = b"FRAME\n" + bytes(plane_y) + bytes(plane_u) + bytes(plane_v)
    header = f"YUV4MPEG2 W{WIDTH} H{HEIGHT} F{FPS}:1 Ip A1:1 C420jpeg\n".encode()
    path.write_bytes(header + frame * FRAMES)
    return path
