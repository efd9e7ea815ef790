"""Scene sampling for the synthetic world: what is in an image, before anything is drawn or said.

Three kinds of scene: `objects` (coloured shapes on a 3x3 grid), `sign` (a written word or number in one
row, shapes in the others) and `chart` (a bar chart with labelled values). Held-out combinations (a colour
on a shape, a word in a colour, a value on a coloured bar) never appear in training scenes and appear at
least once in every benchmark scene, so the mini-benchmarks test generalisation, not recall.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "diamond", "pentagon", "hexagon", "cross", "ring", "arrow",
)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 160, 60),
    "blue": (35, 75, 215),
    "yellow": (230, 195, 20),
    "purple": (135, 55, 175),
    "orange": (240, 125, 25),
    "brown": (125, 75, 35),
    "black": (20, 20, 20),
}
TEXT_COLOURS: tuple[str, ...] = ("black", "red", "blue", "green", "purple")
SIZES: tuple[str, ...] = ("small", "large")
# Row-major 3x3 grid; the phrase is how captions and questions name each cell.
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right",
)
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
# Twelve words with distinct first letters: a handful a tiny encoder can learn to read on a CPU.
WORDS: tuple[str, ...] = (
    "STOP", "OPEN", "EXIT", "CAFE", "PARK", "BOOK", "FISH", "MILK", "RAIN", "TREE", "LAMP", "WAVE",
)
# Shapes that look alike: POPE's "adversarial" negatives are drawn from these.
LOOKALIKES: dict[str, tuple[str, ...]] = {
    "circle": ("ring", "hexagon"), "ring": ("circle",), "square": ("diamond",), "diamond": ("square",),
    "pentagon": ("hexagon", "circle"), "hexagon": ("pentagon", "circle"), "star": ("cross",),
    "cross": ("star",), "triangle": ("arrow",), "arrow": ("triangle",),
}
KINDS: tuple[str, ...] = ("objects", "sign", "chart")


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    size: str
    cell: int  # index into POSITIONS

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]

    @property
    def row(self) -> int:
        return self.cell // 3

    @property
    def col(self) -> int:
        return self.cell % 3


@dataclass(frozen=True)
class Text:
    text: str  # a word from WORDS or a number; rendered upper-case as written here
    colour: str
    row: int  # 0 top, 1 middle, 2 bottom


@dataclass(frozen=True)
class Bar:
    colour: str
    value: int  # 1..9


@dataclass
class Scene:
    kind: str
    shapes: list[Shape] = field(default_factory=list)
    text: Text | None = None
    bars: list[Bar] = field(default_factory=list)


@dataclass(frozen=True)
class Holdout:
    """Combinations reserved for the benchmarks: one colour for every shape and every word, one value for
    every bar colour.

    One per item, not a random share of all pairs: a random share leaves some words and shapes with no
    held-out pair, so they never reach a benchmark, and gives others two or three, so they fill it (one
    word was then 18% of TextVQA's answers, and "always that word" set the benchmark's chance level).
    """

    shape_colour: frozenset[tuple[str, str]]
    word_colour: frozenset[tuple[str, str]]
    bar_value: frozenset[tuple[str, int]]

    @classmethod
    def sample(cls, seed: int) -> Holdout:
        rng = random.Random(f"holdout-{seed}")

        def one_each(items: Sequence, partners: Sequence) -> frozenset:
            """A partner for each item, every partner used as evenly as the counts allow."""
            deck: list = []
            while len(deck) < len(items):
                deck += rng.sample(list(partners), len(partners))
            return frozenset(zip(items, deck, strict=False))

        return cls(
            shape_colour=one_each(SHAPES, list(COLOURS)),
            word_colour=one_each(WORDS, TEXT_COLOURS),
            bar_value=one_each(list(COLOURS), range(1, 10)),
        )

    def held_out_in(self, scene: Scene) -> int:
        """How many held-out combinations the scene contains."""
        n = sum((s.shape, s.colour) in self.shape_colour for s in scene.shapes)
        if scene.text is not None:
            n += (scene.text.text, scene.text.colour) in self.word_colour
        return n + sum((b.colour, b.value) in self.bar_value for b in scene.bars)


def _shapes(rng: random.Random, cells: list[int], count: int) -> list[Shape]:
    """`count` shapes in distinct cells with distinct (shape, colour) pairs, so "the red star" names one."""
    looks = rng.sample([(s, c) for s in SHAPES for c in COLOURS], count)
    places = sorted(rng.sample(cells, count))
    return [Shape(s, c, rng.choice(SIZES), cell) for (s, c), cell in zip(looks, places, strict=True)]


def _draw(rng: random.Random, kind: str) -> Scene:
    if kind == "objects":
        count = rng.choices((1, 2, 3, 4), weights=(4, 3, 2, 1))[0]  # uncluttered scenes are the common case
        return Scene(kind, shapes=_shapes(rng, list(range(9)), count))
    if kind == "sign":
        row = rng.randrange(3)
        word = rng.choice(WORDS) if rng.random() < 0.75 else str(rng.randint(10, 99))
        free = [c for c in range(9) if c // 3 != row]
        return Scene(kind, shapes=_shapes(rng, free, rng.randint(0, 2)), text=Text(word, rng.choice(TEXT_COLOURS), row))
    if kind == "chart":
        colours = rng.sample(list(COLOURS), rng.randint(3, 4))
        values = [rng.randint(1, 9) for _ in colours]
        while values.count(max(values)) > 1:  # a unique tallest bar keeps "which is tallest" answerable
            values = [rng.randint(1, 9) for _ in colours]
        return Scene(kind, bars=[Bar(c, v) for c, v in zip(colours, values, strict=True)])
    raise ValueError(f"unknown scene kind {kind!r}; expected one of {KINDS}")


def sample_scene(rng: random.Random, kind: str, holdout: Holdout, held_out: bool) -> Scene:
    """Draw a scene of `kind`; training scenes avoid every held-out pair, benchmark scenes contain one.

    Rejection sampling is cheap here: about 15% of pairs are held out, so a handful of draws suffice.
    """
    for _ in range(10_000):
        scene = _draw(rng, kind)
        n = holdout.held_out_in(scene)
        if (n > 0) == held_out:
            return scene
    raise RuntimeError(f"could not sample a {'held-out' if held_out else 'training'} {kind} scene")
