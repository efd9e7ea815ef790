"""VQA answer normalisation, behaving exactly like the EvalAI / MMF answer processor.

TextVQA accuracy compares a normalised prediction against ten normalised human answers. lmms-eval
(`EvalAIAnswerProcessor`) and LLaVA (`m4c_evaluator`) both use the MMF port of the EvalAI processor,
so this module reproduces that processor's behaviour, quirks included:

1. lowercase; delete every ``,`` and ``?``; split the possessive ``'s`` off as its own token ``" 's"``;
2. for each punctuation mark in a fixed list: delete it if the text has it next to a space, otherwise
   turn it into a space (so ``"coca-cola"`` becomes ``"coca cola"``);
3. delete each ``.`` that is not followed by a digit (at most 32 of them, see below);
4. number words ``none``/``zero``..``ten`` become digits, the articles a/an/the are dropped, and
   contractions written without an apostrophe are repaired (``"dont"`` -> ``"don't"``).
"""

from __future__ import annotations

import re

# The marks handled by step 2. Note what is absent: '.', "'", ':', '#', '$', '%', '&', '*' etc. survive.
_PUNCTUATION: tuple[str, ...] = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)

# Upstream intends "a period not between digits" but writes the look-behind as `(?!<=\d)`, which is a
# look-ahead that can never fail at a '.'; the effective rule is "a period not followed by a digit".
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# Upstream passes `re.UNICODE` (== 32) positionally to `Pattern.sub`, where it lands in `count`.
_MAX_PERIOD_DELETIONS = 32

_NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

_ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# "written form -> repaired form", the EvalAI table. Upstream also lists "Id've", "I'dve", "Im" and "Ive";
# they are left out because the text is lowercased before lookup, so capitalised keys can never match.
# The odd "somebody'd -> somebodyd" entry is upstream's and is kept for fidelity.
_CONTRACTION_PAIRS = """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's
howd:how'd howll:how'll hows:how's isnt:isn't itd:it'd itd've:it'd've it'dve:it'd've itll:it'll
let's:let's maam:ma'am mightnt:mightn't mightnt've:mightn't've mightn'tve:mightn't've mightve:might've
mustnt:mustn't mustve:must've neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't
ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've
she's:she's shouldve:should've shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've
somebody'd:somebodyd somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll
somebodys:somebody's someoned:someone'd someoned've:someone'd've someone'dve:someone'd've
someonell:someone'll someones:someone's somethingd:something'd somethingd've:something'd've
something'dve:something'd've somethingll:something'll thats:that's thered:there'd thered've:there'd've
there'dve:there'd've therere:there're theres:there's theyd:they'd theyd've:they'd've they'dve:they'd've
theyll:they'll theyre:they're theyve:they've twas:'twas wasnt:wasn't wed've:we'd've we'dve:we'd've
weve:we've werent:weren't whatll:what'll whatre:what're whats:what's whatve:what've whens:when's
whered:where'd wheres:where's whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll
whos:who's whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've
wouldnt:wouldn't wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll
y'allll:y'all'll yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd
youd've:you'd've you'dve:you'd've youll:you'll youre:you're youve:you've
"""
_CONTRACTIONS: dict[str, str] = dict(pair.split(":", 1) for pair in _CONTRACTION_PAIRS.split())


def _process_punctuation(text: str) -> str:
    """Delete or space out punctuation marks, then delete periods that are not followed by a digit."""
    out = text
    for mark in _PUNCTUATION:
        # The "next to a space" test looks at the text as it was on entry, not at `out`. Upstream also
        # deletes every mark when a comma sits between digits, but commas are already gone by now.
        if mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIOD_DELETIONS)


def normalize_vqa_answer(text: str) -> str:
    """Normalise one answer (prediction or ground truth) the way the EvalAI VQA evaluator does.

    >>> normalize_vqa_answer("the Coca-Cola.")
    'coca cola'
    >>> normalize_vqa_answer("Two")
    '2'
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _process_punctuation(text)
    words = [_NUMBER_WORDS.get(word, word) for word in text.split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)
