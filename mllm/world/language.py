"""What the synthetic world says about a scene: dense captions, alt-text, and benchmark-style questions.

Questions are produced as rows in the column layout of the lmms-eval dataset of each benchmark family, so
the same rows serve as mini-benchmark records and, through the benchmark's own prompt builder, as training
instructions: the training mix and the benchmarks can never disagree on phrasing.
"""

from __future__ import annotations

import random
from typing import Any

from mllm.world.scene import COLOURS, LOOKALIKES, POSITIONS, ROWS, SHAPES, WORDS, Scene, Shape

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six")
CORNERS = {"circle": 0, "ring": 0, "triangle": 3, "square": 4, "diamond": 4, "pentagon": 5, "hexagon": 6,
           "arrow": 7, "star": 10, "cross": 12}
MME_SUFFIX = " Please answer yes or no."
LETTERS = "ABCD"
Doc = dict[str, Any]


def where(cell: int) -> str:
    name = POSITIONS[cell]
    if name == "center":
        return "in the center"
    if name in ("left", "right"):
        return f"on the {name}"
    return f"at the {name}"


def describe(shape: Shape, size: bool = True) -> str:
    return f"{shape.size} {shape.colour} {shape.shape}" if size else f"{shape.colour} {shape.shape}"


ORDINALS = ("first", "second", "third", "fourth")


def dense_caption(scene: Scene) -> str:
    """The long synthetic caption (the world's counterpart of ReCap-DataComp's `re_caption`).

    Region by region: each object is introduced by where it is, then what it is.
    """
    if scene.kind == "chart":
        bars = ", ".join(f"{b.colour} {b.value}" for b in scene.bars)
        tallest = max(scene.bars, key=lambda b: b.value)
        return f"A bar chart with {NUMBER_WORDS[len(scene.bars)]} bars: {bars}. The tallest bar is {tallest.colour}."
    n = len(scene.shapes)
    parts = []
    if n:
        parts.append(f"{NUMBER_WORDS[n].capitalize()} object{'s' if n > 1 else ''}.")
        parts += [f"{POSITIONS[s.cell].capitalize()}: a {describe(s)}." for s in scene.shapes]
    if scene.text is not None:
        kind = "number" if scene.text.text.isdigit() else "word"
        row = "Middle" if scene.text.row == 1 else ROWS[scene.text.row].capitalize()
        parts.append(f"{row}: the {kind} {scene.text.text} in {scene.text.colour}.")
    return " ".join(parts)


def alt_text(scene: Scene) -> str:
    """The short web-style caption (the world's counterpart of `org_caption`)."""
    if scene.kind == "chart":
        return "bar chart of " + ", ".join(b.colour for b in scene.bars)
    things = [f"{s.colour} {s.shape}" for s in scene.shapes]
    if scene.text is not None:
        things.insert(0, f"sign {scene.text.text.lower()}")
    return " and ".join(things)


def _unique(scene: Scene, attr: str) -> list[Shape]:
    values = [getattr(s, attr) for s in scene.shapes]
    return [s for s in scene.shapes if values.count(getattr(s, attr)) == 1]


def _choices(rng: random.Random, right: str, pool: list[str], k: int = 4) -> tuple[list[str], int]:
    options = rng.sample([p for p in pool if p != right], k - 1) + [right]
    rng.shuffle(options)
    return options, options.index(right)


def textvqa(scene: Scene, rng: random.Random) -> list[Doc]:
    if scene.text is None:
        return []
    word = scene.text.text
    question = ("what number is written in the image?" if word.isdigit()
                else rng.choice(["what word is written in the image?", "what does the sign say?"]))
    return [{"question": question, "answers": [word.lower()] * 10, "ocr_tokens": [word]}]


def ocrbench(scene: Scene, rng: random.Random) -> list[Doc]:
    if scene.text is None:
        return []
    kind = "Digit String Recognition" if scene.text.text.isdigit() else "Regular Text Recognition"
    return [{"question": "what is written in the image?", "answer": [scene.text.text], "dataset": "synthetic",
             "question_type": kind}]


def chartqa(scene: Scene, rng: random.Random) -> list[Doc]:
    """Two questions per chart: one value read off a named bar, one about the tallest bar."""
    if not scene.bars:
        return []
    tallest = max(scene.bars, key=lambda b: b.value)
    bar = rng.choice(scene.bars)
    return [
        {"question": f"What is the value of the {bar.colour} bar?", "answer": str(bar.value),
         "type": "augmented_test"},
        rng.choice([
            {"question": "Which colour is the tallest bar?", "answer": tallest.colour, "type": "human_test"},
            {"question": "What is the value of the tallest bar?", "answer": str(tallest.value),
             "type": "human_test"},
        ]),
    ]


def mme(scene: Scene, rng: random.Random) -> list[Doc]:
    """A yes/no pair about one image, as MME asks them: same category, one true and one false."""
    options = []
    if scene.text is not None:
        other = rng.choice([w for w in WORDS if w != scene.text.text])
        options.append(("OCR", f'Is the word "{scene.text.text}" written in the image?',
                        f'Is the word "{other}" written in the image?'))
    if scene.shapes:
        s = rng.choice(scene.shapes)
        absent = rng.choice([x for x in SHAPES if x not in {t.shape for t in scene.shapes}])
        options.append(("existence", f"Is there a {s.colour} {s.shape} in this image?",
                        f"Is there a {rng.choice(list(COLOURS))} {absent} in this image?"))
        n = len(scene.shapes)
        wrong = rng.choice([k for k in range(1, 6) if k != n])
        options.append(("count", f"Are there {n} objects in this image?",
                        f"Are there {wrong} objects in this image?"))
        other_cell = rng.choice([c for c in range(9) if c != s.cell])
        options.append(("position", f"Is the {s.colour} {s.shape} {where(s.cell)}?",
                        f"Is the {s.colour} {s.shape} {where(other_cell)}?"))
    if scene.shapes and _unique(scene, "shape"):
        s = rng.choice(_unique(scene, "shape"))
        wrong = rng.choice([c for c in COLOURS if c != s.colour])
        options.append(("color", f"Is the {s.shape} {s.colour}?", f"Is the {s.shape} {wrong}?"))
    if not options:
        return []
    category, yes, no = rng.choice(options)
    return [{"question": yes + MME_SUFFIX, "answer": "Yes", "category": category},
            {"question": no + MME_SUFFIX, "answer": "No", "category": category}]


def seed(scene: Scene, rng: random.Random) -> list[Doc]:
    if not scene.shapes:
        return []
    options: list[tuple[str, str, list[str]]] = []
    if _unique(scene, "colour"):
        s = rng.choice(_unique(scene, "colour"))
        options.append((f"What shape is the {s.colour} object?", s.shape, list(SHAPES)))
    if _unique(scene, "shape"):
        s = rng.choice(_unique(scene, "shape"))
        options.append((f"What colour is the {s.shape}?", s.colour, list(COLOURS)))
    options.append(("How many objects are in the image?", str(len(scene.shapes)), [str(k) for k in range(1, 7)]))
    s = rng.choice(scene.shapes)
    options.append((f"Where is the {s.colour} {s.shape}?", POSITIONS[s.cell], list(POSITIONS)))
    question, right, pool = rng.choice(options)
    choices, index = _choices(rng, right, pool)
    doc: Doc = {"question": question, "answer": LETTERS[index], "data_type": "image"}
    doc.update({f"choice_{letter.lower()}": c for letter, c in zip(LETTERS, choices, strict=False)})
    return [doc]


def sqa_img(scene: Scene, rng: random.Random) -> list[Doc]:
    if not scene.shapes:
        return []
    present = {s.shape for s in scene.shapes}
    options: list[Doc] = []
    absent = [x for x in SHAPES if x not in present]
    k = rng.randint(2, 4)
    right = rng.choice(sorted(present))
    choices, index = _choices(rng, right, [right] + absent, k)
    options.append({"question": "Which of these shapes is in the image?", "choices": choices, "answer": index,
                    "hint": ""})
    big = [s for s in scene.shapes if s.size == "large"]
    small = [s for s in scene.shapes if s.size == "small"]
    pairs = [(b, s) for b in big for s in small if (b.colour, b.shape) != (s.colour, s.shape)]
    if pairs:
        b, s = rng.choice(pairs)
        choices, index = _choices(rng, f"the {b.colour} {b.shape}", [f"the {s.colour} {s.shape}"], 2)
        options.append({"question": "Which object is larger?", "choices": choices, "answer": index,
                        "hint": "The objects are drawn in two sizes."})
    by_corners: dict[int, str] = {CORNERS[s]: s for s in sorted(present)}
    if len(by_corners) >= 2:
        names = rng.sample(sorted(by_corners.values()), min(len(by_corners), 3))
        right = max(names, key=CORNERS.__getitem__)
        choices, index = _choices(rng, right, names, len(names))
        hint = " ".join(f"A {n} has {CORNERS[n]} corners." for n in sorted(names))
        options.append({"question": "Which shape in the image has the most corners?", "choices": choices,
                        "answer": index, "hint": hint})
    return [rng.choice(options)]


def gqa(scene: Scene, rng: random.Random) -> list[Doc]:
    if not scene.shapes:
        return []
    s = rng.choice(scene.shapes)
    options = [(f"What shape is {where(s.cell)}?", s.shape),
               (f"What size is the {s.colour} {s.shape}?", s.size)]
    if _unique(scene, "shape"):
        u = rng.choice(_unique(scene, "shape"))
        options.append((f"What colour is the {u.shape}?", u.colour))
    pairs = [(a, b) for a in scene.shapes for b in scene.shapes if a is not b]
    if pairs:
        a, b = rng.choice(pairs)
        if a.col != b.col:
            options.append((f"Is the {describe(a, False)} to the left of the {describe(b, False)}?",
                            "yes" if a.col < b.col else "no"))
        if a.row != b.row:
            options.append((f"Is the {describe(a, False)} above the {describe(b, False)}?",
                            "yes" if a.row < b.row else "no"))
    question, answer = rng.choice(options)
    return [{"question": question, "answer": answer}]


def pope(scene: Scene, rng: random.Random, category: str, popular: list[str]) -> list[Doc]:
    """One present and one absent object, the absent one chosen by POPE's negative-sampling strategy."""
    if not scene.shapes:
        return []
    present = {s.shape for s in scene.shapes}
    absent = [x for x in SHAPES if x not in present]
    if category == "adversarial":
        pool = [x for s in sorted(present) for x in LOOKALIKES[s] if x in absent]
    elif category == "popular":
        pool = [x for x in popular if x in absent]
    else:
        pool = absent
    negative = rng.choice(pool or absent)
    positive = rng.choice(sorted(present))
    return [{"question": f"Is there a {positive} in the image?", "answer": "yes", "category": category},
            {"question": f"Is there a {negative} in the image?", "answer": "no", "category": category}]


def training_answer(family: str, doc: dict[str, Any]) -> str:
    """The assistant's reply that a benchmark row's gold answer implies."""
    if family == "textvqa":
        return doc["answers"][0]
    if family == "ocrbench":
        return doc["answer"][0]
    if family == "sqa_img":
        return LETTERS[doc["answer"]]
    return doc["answer"]


def record(key: str, turns: list[tuple[str, str]], suffix: str = "") -> dict[str, Any]:
    """A LLaVA-format record of training image `key` asking `turns` (question, answer), the image first."""
    conversations = []
    for i, (question, answer) in enumerate(turns):
        conversations.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + question})
        conversations.append({"from": "gpt", "value": answer})
    return {"id": key + suffix, "image": f"train/{key}.jpg", "conversations": conversations}


FAMILY_KINDS: dict[str, tuple[str, ...]] = {
    "textvqa": ("sign",), "chartqa": ("chart",), "ocrbench": ("sign",), "mme": ("objects", "sign"),
    "seed": ("objects",), "sqa_img": ("objects",), "gqa": ("objects",), "pope": ("objects", "sign"),
}
