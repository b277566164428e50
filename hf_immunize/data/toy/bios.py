"""The bios world (MLAC): short biographies with a profession label (the desired task) and gender cues (the blocked
task), with optional pronoun scrubbing as in the MLAC release."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from datasets import Dataset

from .common import check_positive as _check_positive

__all__ = ["BIOS_DEFAULT_PROFESSIONS", "BiosWorld", "make_bios_world"]

BIOS_DEFAULT_PROFESSIONS = "accountant architect dentist journalist nurse painter professor surgeon".split()

_PROFESSION_CUES = {
    "accountant": ["audits tax returns", "balances the books", "files quarterly reports", "checks the ledgers"],
    "architect": ["designs new buildings", "draws floor plans", "plans public housing", "sketches bridges"],
    "attorney": ["argues cases in court", "drafts contracts", "defends clients", "settles disputes"],
    "dentist": ["fills cavities", "cleans teeth", "fits braces", "treats gum disease"],
    "journalist": ["writes news stories", "interviews officials", "covers elections", "edits the front page"],
    "nurse": ["cares for patients", "takes blood samples", "works night shifts on the ward", "gives injections"],
    "painter": ["paints landscapes", "mixes oil colors", "shows work in galleries", "paints portraits"],
    "professor": ["teaches graduate seminars", "publishes research papers", "supervises students", "gives lectures"],
    "surgeon": ["performs heart operations", "repairs broken bones", "leads the operating team", "removes tumors"],
    "photographer": ["shoots weddings", "develops film", "takes portraits", "edits photos"],
    "teacher": ["teaches reading", "grades homework", "runs a classroom", "coaches the school team"],
    "poet": ["writes sonnets", "reads verse aloud", "publishes poems", "writes short lyrics"],
}
_MALE_NAMES = (
    "James Robert John Michael David William Richard Thomas Mark Paul "
    "Steven Andrew Kevin Brian George Edward Peter Frank Henry Samuel"
).split()
_FEMALE_NAMES = (
    "Mary Patricia Jennifer Linda Susan Sarah Karen Nancy Lisa Emily "
    "Laura Anna Helen Alice Rachel Julia Grace Claire Diana Rose"
).split()
_SURNAMES = (
    "Smith Brown Clark Lewis Walker Hall Young King Wright Green "
    "Baker Hill Scott Adams Nelson Carter Moore Reed Cook Bell"
).split()
_CITIES = ["Boston", "Denver", "Austin", "Seattle", "Chicago", "Portland", "Dallas", "Miami", "Atlanta", "Phoenix"]
_BIO_TEMPLATES = [
    "{name} lives in {city}. {He} {cue1} and {cue2}. {His} friends say {he} is {adj}.",
    "Based in {city}, {name} {cue1}. {He} also {cue2}, and {his} colleagues call {him} {adj}.",
    "{name} grew up in {city}. Today {he} {cue1}. In {his} spare time {he} {cue2}.",
]
_ADJECTIVES = ["kind", "patient", "driven", "careful", "funny", "calm", "bold", "modest"]
_PRONOUNS = {
    0: {"he": "he", "him": "him", "his": "his"},
    1: {"he": "she", "him": "her", "his": "her"},
    None: {"he": "they", "him": "them", "his": "their"},
}


@dataclass
class BiosWorld:
    """Splits of the bios world, each with columns `text, label, profession, gender` (`label` = profession).

    `train` is the desired-task training set; `val1` is the attacker's pool and `val2` its evaluation set (as in the
    MLAC release); `test` is for the desired-task report. Use `with_label(ds, "gender")` for the blocked task.
    """

    train: Dataset
    val1: Dataset
    val2: Dataset
    test: Dataset
    professions: list[str]
    settings: dict = field(default_factory=dict)

    @staticmethod
    def with_label(ds: Dataset, task: str) -> Dataset:
        if task not in ("profession", "gender"):
            raise ValueError(f"`task` must be 'profession' or 'gender', got {task!r}.")
        return ds.map(lambda r: {"label": r[task]})


def make_bios_world(
    seed: int = 0,
    n: int = 2000,
    professions: list[str] | None = None,
    scrub_pronouns: bool = False,
    split: tuple[float, float, float, float] = (0.7, 0.1, 0.1, 0.1),
) -> BiosWorld:
    """Builds the bios world: profession cues in every bio, gender carried by the first name and the pronouns.

    Profession and gender are drawn independently. With `scrub_pronouns=True` the pronouns become they/them/their
    (as MLAC's scrub does), so gender remains only in the first name.

    >>> world = make_bios_world(n=40)
    >>> world.train.column_names
    ['text', 'label', 'profession', 'gender']
    """
    _check_positive("n", n, 10)
    professions = list(BIOS_DEFAULT_PROFESSIONS if professions is None else professions)
    unknown = [p for p in professions if p not in _PROFESSION_CUES]
    if unknown or len(professions) < 2:
        raise ValueError(
            f"`professions` must name at least two of {sorted(_PROFESSION_CUES)}, got {professions!r}"
            + (f" (unknown: {unknown})" if unknown else "")
        )
    if len(split) != 4 or any(s <= 0 for s in split):
        raise ValueError(f"`split` must be four positive fractions (train, val1, val2, test), got {split!r}.")

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        p = rng.randrange(len(professions))
        g = rng.randrange(2)
        pron = _PRONOUNS[None if scrub_pronouns else g]
        cue1, cue2 = rng.sample(_PROFESSION_CUES[professions[p]], 2)
        first = rng.choice(_FEMALE_NAMES if g else _MALE_NAMES)
        text = rng.choice(_BIO_TEMPLATES).format(
            name=f"{first} {rng.choice(_SURNAMES)}",
            city=rng.choice(_CITIES),
            cue1=cue1,
            cue2=cue2,
            adj=rng.choice(_ADJECTIVES),
            he=pron["he"],
            him=pron["him"],
            his=pron["his"],
            He=pron["he"].capitalize(),
            His=pron["his"].capitalize(),
        )
        if scrub_pronouns:  # "they" takes plural verbs in the few places a template conjugates after it
            text = text.replace("they is", "they are")
        rows.append({"text": text, "label": p, "profession": p, "gender": g})

    total = sum(split)
    bounds = [0]
    for s in split:
        bounds.append(bounds[-1] + round(n * s / total))
    bounds[-1] = n
    parts = [Dataset.from_list(rows[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    return BiosWorld(
        *parts,
        professions=professions,
        settings={
            "seed": seed,
            "n": n,
            "professions": professions,
            "scrub_pronouns": scrub_pronouns,
            "split": list(split),
        },
    )
