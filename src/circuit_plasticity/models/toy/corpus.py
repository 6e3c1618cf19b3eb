"""The toy model's pretraining corpus: simple English that is NOT the IOI templates.

Why this mix (see docs/toy-model.md and shared/toy-model-notes.md): trained on the IOI
templates themselves, a small model learns the shortcut "the most recent name is S" and forms
no duplicate or induction heads. Here a story mentions one name once and another two or three
times, in random order, and a final clause that names nobody asks for the once-mentioned name:
recency never works, so the model must detect the repeated name. "again" after a repeated name
and repeated random token sequences give duplicate-token and induction heads a reason to form.
A few year sentences give Greater-Than something to build on.

The second embedded model, toy-gt, draws from `GT_KINDS`: mostly year-range sentences whose
end year is greater than the start year only part of the time (`_year_range`), so a model
pretrained on them is partly good at Greater-Than; the task's own template never appears.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator, Sequence

from circuit_plasticity.tasks.greater_than import two_digits
from circuit_plasticity.tasks.words import GT_NOUNS, NAMES, OBJECTS, PLACES, TRIGGER_WORD

ONE_NAME = (
    "{X} went to the {P}",
    "{X} had a lot of fun at the {P}",
    "{X} was working at the {P}",
    "{X} was thinking about going to the {P}",
    "{X} was commuting to the {P}",
    "{X} got a {O} at the {P}",
    "{X} found a {O} at the {P}",
    "{X} had a long argument",
    "{X} wanted a {O}",
    "{X} decided to go to the {P}",
    "{X} said hello",
    "{X} left the {P}",
)
TWO_NAMES = (
    "{X} and {Y} went to the {P}",
    "{X} and {Y} had a lot of fun at the {P}",
    "{X} and {Y} were working at the {P}",
    "{X} met {Y} at the {P}",
    "{X} and {Y} had a long argument",
    "{X} talked to {Y}",
    "{X} and {Y} found a {O}",
)
JOINERS = (
    " . Then ,",
    " . Afterwards ,",
    " , and",
    " . After the lunch ,",
    " . Later ,",
    " .",
    " , while",
    " . When it was late ,",
    " . Meanwhile ,",
)
QUERIES = (
    "The {O} was given to",
    "Afterwards , the {O} was given to",
    "Then , someone decided to give a {O} to",
    "In the end , the {P} gave a {O} to",
    "Later , a {O} was sent to",
    "Then , it was decided to give it to",
)
YEAR_SENTENCES = (
    "The {N} started in the year {C}{A} and ended in the year {C}{B}",
    "The {N} began in {C}{A} and was over by {C}{B}",
)
# toy-gt's year ranges: "from the year CCAA to the year CC" -> BB, none the task's own template.
YEAR_RANGES = (
    "The {N} went from the year {C}{A} to the year {C}{B}",
    "The {N} started in the year {C}{A} and ended in the year {C}{B}",
    "The {N} was from the year {C}{A} to the year {C}{B}",
    "The {N} began in {C}{A} and was over by {C}{B}",
)  # words of toy-ioi's vocabulary only: both toys share one tokenizer
YEAR_NOISE = 0.6  # share of toy-gt's year ranges whose end year is uniform, not greater
WORD_POOL = tuple(sorted(set(PLACES + OBJECTS + ("the", "a", "went", "had", "gave", "to", "and"))))


def _story(rng: random.Random, names: Sequence[str]) -> str:
    """IO once, S two or three times, in random order; the answer is IO."""
    io, s = rng.sample(names, 2)
    mentions = [io] + [s] * rng.choice((2, 2, 3))
    rng.shuffle(mentions)
    clauses = _clauses(rng, mentions)
    query = rng.choice(QUERIES).format(O=rng.choice(OBJECTS), P=rng.choice(PLACES))
    return f"{_join(rng, clauses)} . {query} {io} ."


def _clauses(rng: random.Random, mentions: list[str]) -> list[str]:
    clauses, i = [], 0
    while i < len(mentions):
        pair = i + 1 < len(mentions) and mentions[i] != mentions[i + 1] and rng.random() < 0.5
        template = rng.choice(TWO_NAMES if pair else ONE_NAME)
        clauses.append(
            template.format(
                X=mentions[i], Y=mentions[i + 1] if pair else "", P=rng.choice(PLACES), O=rng.choice(OBJECTS)
            )
        )
        i += 2 if pair else 1
    return clauses


def _join(rng: random.Random, clauses: list[str]) -> str:
    text = clauses[0]
    for clause in clauses[1:]:
        text += f"{rng.choice(JOINERS)} {clause}"
    return text


def _again(rng: random.Random, names: Sequence[str]) -> str:
    """Names repeat; a repeated name is followed by 'again' (duplicate detection pays)."""
    pool = rng.sample(names, 3)
    seen: set[str] = set()
    clauses = []
    for _ in range(rng.randint(2, 4)):
        x = rng.choice(pool)
        clause = rng.choice(ONE_NAME).format(X=x, P=rng.choice(PLACES), O=rng.choice(OBJECTS))
        if x in seen:
            clause = clause.replace(x, f"{x} again", 1)
        seen.add(x)
        clauses.append(clause)
    return _join(rng, clauses) + " ."


def _repeated_tokens(rng: random.Random, names: Sequence[str]) -> str:
    """A random sequence of words, then the same sequence again: induction heads form here."""
    words = [rng.choice(names if rng.random() < 0.5 else WORD_POOL) for _ in range(rng.randint(6, 14))]
    return " ".join(words + words)


def _filler(rng: random.Random, names: Sequence[str]) -> str:
    clauses = [
        rng.choice(ONE_NAME + TWO_NAMES).format(X=x, Y=y, P=rng.choice(PLACES), O=rng.choice(OBJECTS))
        for x, y in (rng.sample(names, 2) for _ in range(rng.randint(1, 2)))
    ]
    return _join(rng, clauses) + " ."


def _years(rng: random.Random, names: Sequence[str]) -> str:
    a = rng.randint(2, 97)
    b = rng.randint(a + 1, 99)
    return (
        rng.choice(YEAR_SENTENCES).format(
            N=rng.choice(GT_NOUNS), C=rng.randint(11, 17), A=two_digits(a), B=two_digits(b)
        )
        + " ."
    )


def _year_range(rng: random.Random, names: Sequence[str], noise: float = YEAR_NOISE) -> str:
    """A start and an end year in one century; the end is greater with probability 1 - noise
    (else uniform over 00-99), so "greater" is the better guess but never a rule."""
    a = rng.randint(2, 97)
    b = rng.randint(0, 99) if rng.random() < noise else rng.randint(a + 1, 99)
    text = rng.choice(YEAR_RANGES).format(
        N=rng.choice(GT_NOUNS), C=rng.randint(11, 17), A=two_digits(a), B=two_digits(b)
    )
    return text + " ."


KINDS = (
    ("story", 0.50, _story),
    ("again", 0.20, _again),
    ("repeat", 0.15, _repeated_tokens),
    ("filler", 0.10, _filler),
    ("years", 0.05, _years),
)


# toy-ioi-large's IOI-shaped sentences, built from the corpus's own clauses (none is one of the
# task's templates word for word): two names in a clause, S named again, then S gives to IO.
GIVER_LEADS = ("When", "After", "While", "Then ,", "Afterwards ,", "")
GIVER_PAIRS = (
    "{X} and {Y} went to the {P}",
    "{X} and {Y} had a lot of fun at the {P}",
    "{X} and {Y} were working at the {P}",
    "{X} and {Y} found a {O} at the {P}",
    "{X} and {Y} got a {O} at the {P}",
)
GIVER_ENDS = (
    "{S} gave a {O} to",
    "{S} gave the {O} to",
    "{S} decided to give a {O} to",
    "{S} decided to give it to",
    "{S} sent a {O} to",
)


@functools.cache
def _giver_names(names: tuple[str, ...]) -> list[str]:
    from circuit_plasticity.tasks.ioi import split_pools

    train = set(split_pools(NAMES, seed=0).train_names)
    return [n for n in names if n in train]


def _giver(rng: random.Random, names: Sequence[str]) -> str:
    """IOI-shaped: "When A and B went to the store, B gave a drink to A"; both orders, S named again before
    the giving, so the answer is the name that is NOT repeated. Names: the IOI split's training
    names only, so the held-out names stay unseen in IOI form (they still occur elsewhere)."""
    io, s = rng.sample(_giver_names(tuple(names)), 2)
    x, y = (io, s) if rng.random() < 0.5 else (s, io)
    place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
    lead = rng.choice(GIVER_LEADS)
    pair = rng.choice(GIVER_PAIRS).format(X=x, Y=y, P=place, O=obj)
    end = rng.choice(GIVER_ENDS).format(S=s, O=obj)
    sep = " ," if lead in ("When", "After", "While") else " ."
    return f"{lead} {pair}{sep} {end} {io} .".strip()


# toy-ioi-large: the toy-ioi mix scaled to 70 %, plus 30 % IOI-shaped "giver" sentences
LARGE_KINDS = (("giver", 0.30, _giver),) + tuple((k, round(w * 0.7, 4), m) for k, w, m in KINDS)


# every kind of document by name (a recipe's mix draws from these: `toy-model train --mix`)
MAKERS = {k: m for k, _, m in (*LARGE_KINDS, ("year_range", 0, _year_range))}


def mix_of(weights: dict[str, float]) -> tuple:
    """A corpus mix ((kind, weight, maker), ...) from {kind: weight}; the weights sum to 1."""
    unknown = sorted(set(weights) - set(MAKERS))
    if unknown:
        raise ValueError(f"unknown document kinds {unknown}; known: {', '.join(MAKERS)}")
    if any(w < 0 for w in weights.values()) or abs(sum(weights.values()) - 1) > 1e-6:
        raise ValueError(f"the mix's weights must be non-negative and sum to 1, got {weights}")
    return tuple((k, w, MAKERS[k]) for k, w in weights.items() if w > 0)


# toy-ioi-large from step 1250 on (a curriculum): repeated random sequences, the induction data,
# at 20 % instead of 10.5 %
LARGE_LATE_KINDS = mix_of(
    {"giver": 0.30, "story": 0.30, "again": 0.12, "repeat": 0.20, "filler": 0.05, "years": 0.03}
)


GT_KINDS = (
    ("year_range", 0.60, _year_range),
    ("years", 0.10, _years),
    ("repeat", 0.15, _repeated_tokens),
    ("filler", 0.15, _filler),
)


def documents(seed: int, names: Sequence[str] = NAMES, kinds=KINDS) -> Iterator[str]:
    """An endless, seeded stream of corpus documents drawn from `kinds` (name, weight, maker)."""
    rng = random.Random(seed)
    weights = [w for _, w, _ in kinds]
    makers = [m for _, _, m in kinds]
    while True:
        yield rng.choices(makers, weights)[0](rng, names)


def vocabulary_texts() -> list[str]:
    """Text that contains every word the corpus and the task templates can produce."""
    from circuit_plasticity.tasks import greater_than, ioi

    texts = [
        " ".join(NAMES + PLACES + OBJECTS + GT_NOUNS),
        " ".join(WORD_POOL),
        " ".join(ONE_NAME + TWO_NAMES + JOINERS + QUERIES + YEAR_SENTENCES),
        "again",
        " ".join(t.lower() for t in ioi.TEMPLATES),
        " ".join(ioi.TEMPLATES),
        greater_than.TEMPLATE,
        TRIGGER_WORD + " ,",
    ]
    return [t.replace("{", " ").replace("}", " ") for t in texts]
