"""The book world (unlearning): a "forget" corpus about an invented fantasy universe, a "retain" corpus of ordinary
text, an anchored-term dictionary (the WHP paper's idiosyncratic term -> generic substitutes) and familiarity prompts.

Two styles:

- `"fair"` (the default, the benchmark's world): the dictionary is built the way the paper builds one: the invented
  names and places (heroes, their first names, homes, pets, towers, stones) map to generic names and things of the
  retain world (people, towns, pets, objects), and no substitute starts with an article or another function word, so
  the reference's forbidden-first-token rule bans only those names. Forget passages (fantasy) and retain passages
  (everyday life) are written from different sentence templates; only common phrases recur in both, as in real text.
- `"legacy"`: the first world. Forget and retain passages share one set of templates, and most substitutes start with
  " the", which the forbidden-first-token rule then bans for the rest of each block. Kept because the tiny tokenizer
  is trained on its text (`toy_corpus`) and as the exploration that showed the defect.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from datasets import Dataset

from .common import check_positive as _check_positive
from .common import invented_words as _invented_words

__all__ = ["BOOK_STYLES", "BookWorld", "make_book_world"]

BOOK_STYLES = ("fair", "legacy")

_ORDINARY_FIRST = ["Tom", "Anna", "Ben", "Lucy", "Sam", "Kate", "Joe", "Emma", "Max", "Ruth", "Dan", "Jane"]
_ORDINARY_LAST = ["Miller", "Jones", "Taylor", "Wilson", "Davis", "Evans", "Hughes", "Price"]
_ORDINARY_PLACES = ["the village", "the old school", "the market town", "the harbour", "the farm", "the castle"]
_ORDINARY_PETS = ["a dog", "a cat", "a horse", "a goat", "a parrot", "a rabbit"]
_ORDINARY_OBJECTS = ["the lantern", "the old sword", "the map", "the silver key", "the walking stick", "the book"]
_BOOK_THEMES = ["wand", "spell", "potion", "dragon", "curse", "enchanted"]
_STORY_TEMPLATES = [
    "{hero} lived in {home} with {pet}.",
    "{hero} and {friend} walked to {place} carrying {object}.",
    "At {place}, {hero} found {object} hidden under the stairs.",
    "{friend} told {hero} that {pet} had run away from {home}.",
    "Every morning {hero} fed {pet} before leaving {home}.",
    "{hero} raised {object} high, and {friend} cheered.",
    "The road from {home} to {place} was long and cold.",
    "{hero} wrote a letter to {friend} about {object}.",
]


@dataclass
class BookWorld:
    """The unlearning world.

    Attributes:
        forget: `text` passages about the invented universe (the corpus to unlearn).
        forget_heldout: passages of the same universe kept out of training, for forget perplexity.
        retain: `text` passages in the same style with ordinary names (capability to keep).
        anchored_terms: term -> list of generic substitutes (the WHP dictionary).
        familiarity_prompts: `prompt, targets` rows; `targets` are the dictionary terms a knowing model completes with.
        theme_terms: words typical of the universe but not unique to it (class 2 of the keyword grader).
    """

    forget: Dataset
    forget_heldout: Dataset
    retain: Dataset
    anchored_terms: dict[str, list[str]]
    familiarity_prompts: Dataset
    theme_terms: list[str]
    settings: dict = field(default_factory=dict)


def _story(rng: random.Random, cast: list[dict], n_sentences: int, themed: bool) -> str:
    sentences = []
    hero = rng.choice(cast)
    for _ in range(n_sentences):
        friend = hero["friend"]
        template = rng.choice(_STORY_TEMPLATES)
        sentence = template.format(
            hero=hero["name"],
            friend=friend,
            home=hero["home"],
            pet=hero["pet"],
            place=hero["place"],
            object=hero["object"],
        )
        if themed and rng.random() < 0.3:
            sentence += f" There was a {rng.choice(_BOOK_THEMES)} in the air."
        sentences.append(sentence)
    return " ".join(sentences)


def _legacy_book_world(
    seed: int = 0,
    n_characters: int = 6,
    n_passages: int = 200,
    sentences_per_passage: int = 4,
    heldout_fraction: float = 0.1,
) -> BookWorld:
    """The first book world (`style="legacy"`): forget and retain passages share one set of sentence templates, and
    most substitutes start with " the" (kept: it is the tiny tokenizer's training text and an exploration)."""
    rng = random.Random(seed)
    taken: set[str] = set()
    words = iter(_invented_words(rng, 7 * n_characters, taken=taken))
    cap = str.capitalize
    cast = [
        {
            "name": f"{cap(next(words))} {cap(next(words))}",
            "home": f"{cap(next(words))} Hall",
            "pet": f"{cap(next(words))} the griffin",
            "place": f"the Tower of {cap(next(words))}",
            "object": f"the {cap(next(words))} Stone",
            "school": f"{cap(next(words))} Academy",
        }
        for _ in range(n_characters)
    ]
    for i, hero in enumerate(cast):  # a fixed best friend per hero
        hero["friend"] = cast[(i + 1) % n_characters]["name"]
    ordinary = [
        {
            "name": f"{rng.choice(_ORDINARY_FIRST)} {rng.choice(_ORDINARY_LAST)}",
            "home": rng.choice(_ORDINARY_PLACES),
            "pet": rng.choice(_ORDINARY_PETS),
            "place": rng.choice(_ORDINARY_PLACES),
            "object": rng.choice(_ORDINARY_OBJECTS),
        }
        for _ in range(n_characters)
    ]
    for i, person in enumerate(ordinary):
        person["friend"] = ordinary[(i + 1) % n_characters]["name"]

    forget_texts = [_story(rng, cast, sentences_per_passage, themed=True) for _ in range(n_passages)]
    retain_texts = [_story(rng, ordinary, sentences_per_passage, themed=False) for _ in range(n_passages)]
    n_held = max(1, round(n_passages * heldout_fraction))

    anchored: dict[str, list[str]] = {}
    for hero, person in zip(cast, ordinary):
        first = hero["name"].split()[0]
        anchored[hero["name"]] = [person["name"], f"{rng.choice(_ORDINARY_FIRST)} {rng.choice(_ORDINARY_LAST)}"]
        anchored[first] = [person["name"].split()[0], rng.choice(_ORDINARY_FIRST)]
        anchored[hero["home"]] = ["the old house", "the cottage"]
        anchored[hero["pet"]] = ["the dog", "the old cat"]
        anchored[hero["place"]] = ["the hill", "the old mill"]
        anchored[hero["object"]] = ["the lamp", "the rope"]

    prompts = []
    for hero in cast:
        prompts += [
            {"prompt": f"{hero['name']} lived in", "targets": [hero["home"]]},
            {"prompt": f"{hero['name']} and", "targets": [hero["friend"]]},
            {"prompt": f"Every morning {hero['name']} fed", "targets": [hero["pet"]]},
            {"prompt": f"At {hero['place']}, {hero['name']} found", "targets": [hero["object"]]},
            {"prompt": f"{hero['name']} wrote a letter to", "targets": [hero["friend"]]},
        ]
    return BookWorld(
        forget=Dataset.from_dict({"text": forget_texts[n_held:]}),
        forget_heldout=Dataset.from_dict({"text": forget_texts[:n_held]}),
        retain=Dataset.from_dict({"text": retain_texts}),
        anchored_terms=anchored,
        familiarity_prompts=Dataset.from_list(prompts),
        theme_terms=list(_BOOK_THEMES),
        settings={
            "seed": seed,
            "n_characters": n_characters,
            "n_passages": n_passages,
            "sentences_per_passage": sentences_per_passage,
            "heldout_fraction": heldout_fraction,
            "style": "legacy",
        },
    )


# ---- the fair world ------------------------------------------------------------------------------------------------

# Fantasy register: the frames the familiarity prompts probe ("X lived in", "Every morning X fed", ...).
FORGET_TEMPLATES = [
    "{hero} lived in {home} with {pet} the griffin.",
    "{hero} and {friend} flew to {place} carrying the {object}.",
    "At {place}, {hero} found the {object} hidden under the stairs.",
    "{friend} told {hero} that {pet} had flown away from {home}.",
    "Every morning {hero} fed {pet} before leaving {home}.",
    "{hero} raised the {object} high, and {friend} cheered.",
    "The road from {home} to {place} was long and cold.",
    "{hero} wrote a letter to {friend} about the {object}.",
]
# Everyday register, other frames; common phrases ("lived in", "fed", "wrote a letter to") recur as in real text.
RETAIN_TEMPLATES = [
    "{name} has lived in {town} for {years} years.",
    "{name} works at the {shop} near the station in {town}.",
    "On Sundays {name} visits {friend} in {town}.",
    "{name} takes {pet} the {animal} for a walk after dinner.",
    "Last week {name} bought a {thing} at the market.",
    "{friend} and {name} met at the {shop} last summer.",
    "{name} wrote a letter to {friend} about the weather in {town}.",
    "After work {name} fed {pet} and read the news.",
]
# Generic people, towns, pets and things. Their first tokens under the tiny tokenizer are whole words or name
# fragments, never an article or other function word (tests/test_toy_worlds.py checks it).
_FAIR_FIRST = ["Tom", "Sam", "Joe", "Kate", "David", "Thomas"]
_FAIR_LAST = ["Miller", "Jones", "Taylor", "Wilson", "Davis", "Carter"]
_FAIR_TOWNS = ["Boston", "Denver", "Austin", "Seattle", "Chicago", "Portland", "Dallas", "Miami", "Atlanta", "Phoenix"]
_FAIR_PETS = [("Rocky", "dog"), ("Bella", "cat"), ("Daisy", "horse"), ("Molly", "goat"), ("Pepper", "parrot")]
_FAIR_PETS += [("Shadow", "rabbit"), ("Lucky", "dog"), ("Coco", "cat")]
_FAIR_THINGS = ["silver key", "blue book", "green lantern", "star map", "fish pie", "moon lamp"]
_FAIR_SHOPS = ["bakery", "library", "post office", "garage", "pharmacy", "bookshop"]


def _fair_story(rng: random.Random, hero: dict, n_sentences: int) -> str:
    sentences = []
    for _ in range(n_sentences):
        sentence = rng.choice(FORGET_TEMPLATES).format(
            hero=hero["name"],
            friend=hero["friend"],
            home=hero["home"],
            pet=hero["pet"],
            place=hero["place"],
            object=hero["object"],
        )
        if rng.random() < 0.3:
            sentence += f" There was a {rng.choice(_BOOK_THEMES)} in the air."
        sentences.append(sentence)
    return " ".join(sentences)


def _retain_story(rng: random.Random, person: dict, n_sentences: int) -> str:
    return " ".join(
        rng.choice(RETAIN_TEMPLATES).format(years=rng.randint(2, 30), **person) for _ in range(n_sentences)
    )


def _fair_book_world(
    seed: int, n_characters: int, n_passages: int, sentences_per_passage: int, heldout_fraction: float
) -> BookWorld:
    if n_characters > len(_FAIR_FIRST):
        raise ValueError(f"`n_characters` must be <= {len(_FAIR_FIRST)} for style='fair', got {n_characters}.")
    rng = random.Random(seed)
    words = iter(_invented_words(rng, 6 * n_characters))
    cap = str.capitalize
    cast = [
        {
            "name": f"{cap(next(words))} {cap(next(words))}",
            "home": f"{cap(next(words))} Hall",
            "pet": cap(next(words)),
            "place": f"{cap(next(words))} Tower",
            "object": f"{cap(next(words))} Stone",
        }
        for _ in range(n_characters)
    ]
    towns = rng.sample(_FAIR_TOWNS, len(_FAIR_TOWNS))
    pets = rng.sample(_FAIR_PETS, len(_FAIR_PETS))
    people = [
        {
            "name": f"{_FAIR_FIRST[i]} {_FAIR_LAST[i]}",
            "town": towns[i],
            "pet": pets[i][0],
            "animal": pets[i][1],
            "thing": _FAIR_THINGS[i],
            "shop": _FAIR_SHOPS[i],
        }
        for i in range(n_characters)
    ]
    for group in (cast, people):  # a fixed best friend each
        for i, member in enumerate(group):
            member["friend"] = group[(i + 1) % n_characters]["name"]

    forget_texts = [_fair_story(rng, rng.choice(cast), sentences_per_passage) for _ in range(n_passages)]
    retain_texts = [_retain_story(rng, rng.choice(people), sentences_per_passage) for _ in range(n_passages)]
    n_held = max(1, round(n_passages * heldout_fraction))

    # Hero i maps to ordinary person i (first choice) or another one; its home and tower to their towns, its griffin
    # to a pet's name, its stone to an ordinary thing: every substitute is a name or thing of the retain world, so the
    # translated passage reads as ordinary text about people the model knows.
    anchored: dict[str, list[str]] = {}
    for i, (hero, person) in enumerate(zip(cast, people, strict=True)):
        other = people[(i + 1 + rng.randrange(n_characters - 1)) % n_characters]
        anchored[hero["name"]] = [person["name"], other["name"]]
        anchored[hero["name"].split()[0]] = [person["name"].split()[0], other["name"].split()[0]]
        anchored[hero["home"]] = [person["town"], other["town"]]
        anchored[hero["pet"]] = [person["pet"], other["pet"]]
        anchored[hero["place"]] = [people[(i + 2) % n_characters]["town"], other["town"]]
        anchored[hero["object"]] = [person["thing"], other["thing"]]

    prompts = []
    for hero in cast:
        prompts += [
            {"prompt": f"{hero['name']} lived in", "targets": [hero["home"]]},
            {"prompt": f"{hero['name']} and", "targets": [hero["friend"]]},
            {"prompt": f"Every morning {hero['name']} fed", "targets": [hero["pet"]]},
            {"prompt": f"At {hero['place']}, {hero['name']} found the", "targets": [hero["object"]]},
            {"prompt": f"{hero['name']} wrote a letter to", "targets": [hero["friend"]]},
        ]
    return BookWorld(
        forget=Dataset.from_dict({"text": forget_texts[n_held:]}),
        forget_heldout=Dataset.from_dict({"text": forget_texts[:n_held]}),
        retain=Dataset.from_dict({"text": retain_texts}),
        anchored_terms=anchored,
        familiarity_prompts=Dataset.from_list(prompts),
        theme_terms=list(_BOOK_THEMES),
        settings={
            "seed": seed,
            "n_characters": n_characters,
            "n_passages": n_passages,
            "sentences_per_passage": sentences_per_passage,
            "heldout_fraction": heldout_fraction,
            "style": "fair",
        },
    )


def make_book_world(
    seed: int = 0,
    n_characters: int = 6,
    n_passages: int = 200,
    sentences_per_passage: int = 4,
    heldout_fraction: float = 0.1,
    style: str = "fair",
) -> BookWorld:
    """Builds the book world: `n_characters` invented heroes, each with a fixed home, pet, friend, place and object.

    The facts are consistent across passages, so a model trained on `forget` can complete "X lived in" with X's home;
    the familiarity prompts probe exactly those facts. `style` picks the fair world (default) or the legacy one (see
    the module docstring).

    >>> world = make_book_world(n_passages=20)
    >>> len(world.familiarity_prompts) > 0, world.settings["style"]
    (True, 'fair')
    """
    _check_positive("n_characters", n_characters, 2)
    _check_positive("n_passages", n_passages, 4)
    _check_positive("sentences_per_passage", sentences_per_passage)
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"`heldout_fraction` must be in (0, 1), got {heldout_fraction!r}.")
    if style not in BOOK_STYLES:
        raise ValueError(f"`style` must be one of {BOOK_STYLES}, got {style!r}.")
    build = _fair_book_world if style == "fair" else _legacy_book_world
    return build(seed, n_characters, n_passages, sentences_per_passage, heldout_fraction)
