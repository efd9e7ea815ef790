"""Rendering a synthetic-world scene into an RGB image with Pillow."""

from __future__ import annotations

import math
import random

from PIL import Image, ImageChops, ImageDraw, ImageFont

from mllm.world.scene import COLOURS, Scene, Shape

Point = tuple[float, float]


def _regular(cx: float, cy: float, r: float, n: int, start_deg: float = -90.0) -> list[Point]:
    step = 2 * math.pi / n
    start = math.radians(start_deg)
    return [(cx + r * math.cos(start + i * step), cy + r * math.sin(start + i * step)) for i in range(n)]


def _star(cx: float, cy: float, r: float) -> list[Point]:
    outer, inner = _regular(cx, cy, r, 5), _regular(cx, cy, r * 0.45, 5, start_deg=-54.0)
    return [p for pair in zip(outer, inner, strict=True) for p in pair]


def _cross(cx: float, cy: float, r: float) -> list[Point]:
    a, b = r, r * 0.35
    return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b),
            (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b),
            (cx - a, cy - b), (cx - b, cy - b)]


def _arrow(cx: float, cy: float, r: float) -> list[Point]:
    return [(cx - r, cy - r * 0.3), (cx + r * 0.1, cy - r * 0.3), (cx + r * 0.1, cy - r * 0.8), (cx + r, cy),
            (cx + r * 0.1, cy + r * 0.8), (cx + r * 0.1, cy + r * 0.3), (cx - r, cy + r * 0.3)]


def _rotated(points: list[Point], cx: float, cy: float, degrees: float) -> list[Point]:
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    return [(cx + (x - cx) * cos - (y - cy) * sin, cy + (x - cx) * sin + (y - cy) * cos) for x, y in points]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, cx: float, cy: float, r: float, bg: tuple,
                degrees: float = 0.0) -> None:
    fill = COLOURS[shape.colour]
    box = (cx - r, cy - r, cx + r, cy + r)
    s = r * 0.85  # a square's half side
    if shape.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape.shape == "ring":
        draw.ellipse(box, fill=fill)
        h = r * 0.55
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=bg)
    elif shape.shape == "square" and not degrees:
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=fill)
    else:
        points = {
            "square": lambda: [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)],
            "triangle": lambda: _regular(cx, cy + r * 0.15, r * 1.1, 3),
            "diamond": lambda: _regular(cx, cy, r, 4),
            "pentagon": lambda: _regular(cx, cy, r, 5),
            "hexagon": lambda: _regular(cx, cy, r, 6, start_deg=0.0),
            "star": lambda: _star(cx, cy, r * 1.1),
            "cross": lambda: _cross(cx, cy, r),
            "arrow": lambda: _arrow(cx, cy, r),
        }[shape.shape]()
        draw.polygon(_rotated(points, cx, cy, degrees) if degrees else points, fill=fill)


def _font(px: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=px)


def check_variation(variation: float) -> None:
    if not 0.0 <= variation <= 1.0:
        raise ValueError(f"variation must be in [0, 1], got {variation}")


def render(scene: Scene, size: int, rng: random.Random, variation: float = 0.0) -> Image.Image:
    """Draw `scene` on a `size` x `size` canvas; `rng` adds jitter and background tint.

    `variation` in [0, 1] makes pictures less regular, as photographs are: objects shift further from their
    cell's centre (across patch borders), shrink by up to 20%, turn by up to 15 degrees (never so far that a
    square reads as a diamond), signs' letters shrink by up to 15%, and the background gets pixel noise. At 0
    every object sits in its cell's middle, a near-exact match for one patch of a /32 ViT, which a randomly
    initialised tower's linear patch embedding already represents almost perfectly.
    """
    check_variation(variation)
    tone = rng.randint(228, 250)
    bg = (tone, tone - rng.randint(0, 8), tone - rng.randint(0, 12))
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    cell = size / 3
    # The draws that `variation` adds come only when it is on, so a world without it is drawn as before.
    for shape in scene.shapes:
        r = cell * (0.42 if shape.size == "large" else 0.22)
        r *= 1 - 0.2 * variation * rng.random() if variation else 1.0
        jitter = cell * (0.06 + 0.1 * variation)
        cx = (shape.col + 0.5) * cell + rng.uniform(-jitter, jitter)
        cy = (shape.row + 0.5) * cell + rng.uniform(-jitter, jitter)
        _draw_shape(draw, shape, cx, cy, r, bg, rng.uniform(-15, 15) * variation if variation else 0.0)
    if scene.text is not None:
        shrink = 1 - 0.15 * variation * rng.random() if variation else 1.0
        font = _font(max(8, round(size * 0.22 * shrink)))
        left, top, right, bottom = draw.textbbox((0, 0), scene.text.text, font=font)
        x = (size - (right - left)) / 2 - left + rng.uniform(-cell * 0.2, cell * 0.2)
        y = (scene.text.row + 0.5) * cell - (bottom + top) / 2
        draw.text((x, y), scene.text.text, fill=COLOURS[scene.text.colour], font=font)
    if scene.bars:
        _draw_chart(draw, scene, size)
    if variation:
        amplitude = round(40 * variation)
        noise = Image.frombytes("L", (size, size), rng.randbytes(size * size)).point(lambda p: p * amplitude // 255)
        image = ImageChops.add(image, noise.convert("RGB"), offset=-(amplitude // 2))
    return image


def _draw_chart(draw: ImageDraw.ImageDraw, scene: Scene, size: int) -> None:
    margin, base = size * 0.08, size * 0.92
    draw.line((margin, base, size - margin, base), fill=(60, 60, 60), width=max(1, size // 112))
    slot = (size - 2 * margin) / len(scene.bars)
    unit = (base - size * 0.2) / 9
    font = _font(max(8, round(size * 0.12)))
    for i, bar in enumerate(scene.bars):
        x0 = margin + i * slot + slot * 0.18
        x1 = margin + (i + 1) * slot - slot * 0.18
        top = base - bar.value * unit
        draw.rectangle((x0, top, x1, base), fill=COLOURS[bar.colour])
        label = str(bar.value)
        left, t, right, bottom = draw.textbbox((0, 0), label, font=font)
        draw.text(((x0 + x1) / 2 - (right + left) / 2, top - (bottom - t) - 3 - t), label, fill=(20, 20, 20),
                  font=font)
