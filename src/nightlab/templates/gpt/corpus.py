"""Synthetic corpus for the cpu size (frozen: part of the evaluation, do not edit).

A small invented language written in English sentence frames, built so that a model gains from
every range of context it can use:

- spelling: content words are made of syllables with fixed phonotactics, plurals and verb
  agreement follow spelling rules (``-s`` / ``-es``);
- grammar: sentence templates with subject-verb agreement (``is``/``are``, ``walks``/``walk``)
  and pronouns that agree with a name (names ending in a vowel are ``she``, others ``he``);
- paragraph range: each document invents its own people (names never seen in training, so
  they must be copied from the context) and re-mentions them by name, pronoun and profession;
- document range: facts stay consistent (a person's home town, a town's speciality) and
  counts of things follow simple arithmetic as people give and buy them.

The lexicon comes from one fixed seed shared by all splits; each document comes from its own
seed, derived from the split, so train / val / holdout never share a document. Everything is
deterministic: the same split, document index and key always give the same text, whatever the
Python version or machine (only ``random.Random`` seeded with ints is used).

The val and holdout documents also depend on a key: prepare.py draws it at random the first time
it builds the data cache and keeps it there, hidden from training like val.bin (``[target]
private``). With fixed seeds alone, a training script could regenerate the val split from this
file and memorise it; with the key it can only generate more documents of the same language,
which is what the train split already is.
"""

from __future__ import annotations

import bisect
import random
from itertools import accumulate

LANGUAGE_SEED = 20260101  # the invented language: same in every split
SPLIT_SEEDS = {"train": 1_000_003, "val": 2_000_003, "holdout": 3_000_017}
DOC_SEPARATOR = "\n\n"  # between documents in the concatenated text

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
ONSETS += ["br", "dr", "gl", "kr", "pl", "sk", "st", "tr", "sh", "th", "ch", "fl"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou", "ee", "ia"]
CODAS = ["", "", "", "n", "r", "l", "m", "s", "k", "nd", "rt", "sh"]


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))


def _suffix_s(word: str) -> str:
    """English-like plural / third person: ``-es`` after a hissing sound, ``-s`` otherwise."""
    return word + ("es" if word.endswith(("s", "sh", "ch", "x", "z")) else "s")


def _count(n: int, item: str) -> str:
    """Number agreement: ``1 pin``, ``7 pins``."""
    return f"{n} {item if n == 1 else _suffix_s(item)}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class _Pool:
    """Words with Zipf-like frequencies: a few are common, most are rare."""

    def __init__(self, words: list[str], exponent: float = 1.0) -> None:
        self.words = words
        self.cum = list(accumulate(1.0 / (rank + 1) ** exponent for rank in range(len(words))))

    def pick(self, rng: random.Random) -> str:
        return self.words[bisect.bisect(self.cum, rng.random() * self.cum[-1])]


class Lexicon:
    """The invented vocabulary, fixed by LANGUAGE_SEED."""

    def __init__(self, seed: int = LANGUAGE_SEED) -> None:
        rng = random.Random(seed)
        seen: set[str] = set()

        def fresh(n: int, lo: int, hi: int) -> list[str]:
            out: list[str] = []
            while len(out) < n:
                w = _word(rng, rng.randint(lo, hi))
                if w not in seen and len(w) > 2:
                    seen.add(w)
                    out.append(w)
            return out

        self.nouns = _Pool(fresh(600, 1, 3))
        self.items = _Pool(fresh(80, 1, 2))  # countable goods people trade
        self.adjectives = _Pool(fresh(150, 1, 2))
        self.verbs = _Pool(fresh(200, 1, 2))
        self.professions = _Pool(fresh(60, 2, 3))
        self.towns = _Pool([w.capitalize() for w in fresh(120, 2, 3)], exponent=0.6)


class _Person:
    def __init__(self, name: str, profession: str, home: str, item: str, count: int) -> None:
        self.name, self.profession, self.home, self.item, self.count = name, profession, home, item, count
        self.pronoun = "she" if name[-1] in "aeiou" else "he"


class _Document:
    """One document's state: its people, topic words and facts, kept consistent throughout."""

    def __init__(self, lex: Lexicon, rng: random.Random) -> None:
        self.lex, self.rng = lex, rng
        self.town = lex.towns.pick(rng)
        self.speciality = (lex.adjectives.pick(rng), lex.nouns.pick(rng))
        self.topic_nouns = [lex.nouns.pick(rng) for _ in range(6)]
        self.topic_verbs = [lex.verbs.pick(rng) for _ in range(3)]
        self.people: list[_Person] = []
        names: set[str] = set()
        for _ in range(rng.randint(2, 4)):
            name = _word(rng, rng.randint(2, 3)).capitalize()
            if name in names:
                continue
            names.add(name)
            home = self.town if rng.random() < 0.5 else lex.towns.pick(rng)
            item = lex.items.pick(rng)
            self.people.append(_Person(name, lex.professions.pick(rng), home, item, rng.randint(3, 30)))
        self.last: _Person | None = None  # who a pronoun refers to

    # -- word choice: topic words most of the time, the whole lexicon otherwise --
    def noun(self) -> str:
        return self.rng.choice(self.topic_nouns) if self.rng.random() < 0.6 else self.lex.nouns.pick(self.rng)

    def verb(self) -> str:
        return self.rng.choice(self.topic_verbs) if self.rng.random() < 0.4 else self.lex.verbs.pick(self.rng)

    def adj(self) -> str:
        return self.lex.adjectives.pick(self.rng)

    def person(self) -> _Person:
        return self.rng.choice(self.people)

    def subject(self, p: _Person) -> str:
        """The name, or the pronoun when it refers to the person of the previous sentence."""
        if self.last is p and self.rng.random() < 0.6:
            return p.pronoun.capitalize()
        return p.name

    # -- sentence templates --
    def introduce(self, p: _Person) -> str:
        if self.rng.random() < 0.5:
            s = f"{p.name} is {_article(p.profession)} {p.profession} who lives in {p.home}."
        else:
            s = f"{p.name} lives in {p.home} and works as {_article(p.profession)} {p.profession}."
        self.last = p
        return s + f" {self.subject(p)} has {_count(p.count, p.item)}."

    def describe(self) -> str:
        noun, adj = self.noun(), self.adj()
        if self.rng.random() < 0.5:
            return f"The {noun} is {adj}." if self.rng.random() < 0.5 else f"The {_suffix_s(noun)} are {adj}."
        obj = self.noun()
        if self.rng.random() < 0.5:
            return f"The {adj} {noun} {_suffix_s(self.verb())} the {obj}."
        return f"The {adj} {_suffix_s(noun)} {self.verb()} the {_suffix_s(obj)}."

    def act(self) -> str:
        p = self.person()
        s = f"{self.subject(p)} {_suffix_s(self.verb())} the {self.adj()} {self.noun()}."
        if self.rng.random() < 0.3:
            s = f"The {p.profession} {p.name} {_suffix_s(self.verb())} the {self.noun()}."
        self.last = p
        return s

    def travel(self) -> str:
        p = self.person()
        place = self.lex.towns.pick(self.rng)
        who, self.last = self.subject(p), p
        return f"{who} walks from {p.home} to {place}, then {p.pronoun} goes back home to {p.home}."

    def give(self) -> str:
        a = self.person()
        others = [q for q in self.people if q is not a and q.item == a.item]
        if a.count < 2:
            return self.buy(a)
        k = self.rng.randint(1, min(9, a.count - 1))
        if not others:
            a.count -= k
            who, self.last = self.subject(a), a
            return f"{who} sells {_count(k, a.item)}, so {a.name} has {_count(a.count, a.item)} left."
        b = self.rng.choice(others)
        a.count -= k
        b.count += k
        who, self.last = self.subject(a), b
        return (
            f"{who} gives {_count(k, a.item)} to {b.name}. "
            f"Now {a.name} has {a.count} and {b.name} has {b.count} {_suffix_s(a.item)}."
        )

    def buy(self, p: _Person | None = None) -> str:
        p = p or self.person()
        k = self.rng.randint(2, 9)
        p.count += k
        who, self.last = self.subject(p), p
        return f"{who} buys {k} more {_suffix_s(p.item)} in {p.home}, so {p.pronoun} has {p.count} now."

    def ask(self) -> str:
        p = self.person()
        self.last = p
        return f"How many {_suffix_s(p.item)} does {p.name} have? {p.name} has {p.count}."

    def town_fact(self) -> str:
        adj, noun = self.speciality
        if self.rng.random() < 0.5:
            return f"{self.town} is known for its {adj} {_suffix_s(noun)}."
        return f"Everyone in {self.town} talks about the {adj} {_suffix_s(noun)}."

    def paragraph(self) -> str:
        moves = [
            self.describe,
            self.act,
            self.act,
            self.travel,
            self.give,
            self.buy,
            self.ask,
            self.town_fact,
        ]
        return " ".join(self.rng.choice(moves)() for _ in range(self.rng.randint(3, 7)))

    def text(self) -> str:
        adj, noun = self.speciality
        title = f"# The {adj} {noun} of {self.town}"
        intro = " ".join([self.town_fact()] + [self.introduce(p) for p in self.people])
        body = [self.paragraph() for _ in range(self.rng.randint(2, 5))]
        return "\n\n".join([title, intro, *body])


_LEXICON: Lexicon | None = None


def document(split: str, index: int, key: int = 0) -> str:
    """The ``index``-th document of ``split``: a pure function of its arguments (``key`` changes
    the val and holdout documents only; the train split is the same for every key)."""
    global _LEXICON
    if _LEXICON is None:
        _LEXICON = Lexicon()
    seed = SPLIT_SEEDS[split] * 1_000_003 + index
    if split != "train":
        seed += key << 64  # above every index: distinct keys never share a document seed
    return _Document(_LEXICON, random.Random(seed)).text()


def generate(split: str, min_bytes: int, key: int = 0) -> list[str]:
    """Documents of ``split`` in order until their UTF-8 size reaches ``min_bytes``."""
    docs: list[str] = []
    total = 0
    while total < min_bytes:
        doc = document(split, len(docs), key)
        docs.append(doc)
        total += len(doc) + len(DOC_SEPARATOR)
    return docs
