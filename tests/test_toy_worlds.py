"""The toy worlds: deterministic, disjoint where the protocol needs it, consistent facts, clear errors."""

import re

import pytest

from hf_immunize.data.toy import REFUSALS, make_bios_world, make_book_world, make_safety_world


def _weapon(prompt: str, names) -> str:
    return next(n for n in names if re.search(rf"\b{n}\b", prompt))


def test_safety_world_is_deterministic_and_seed_dependent():
    a, b, c = make_safety_world(seed=3), make_safety_world(seed=3), make_safety_world(seed=4)
    assert a.pretrain["text"] == b.pretrain["text"]
    assert a.alignment.to_list() == b.alignment.to_list()
    assert a.pretrain["text"] != c.pretrain["text"]


def test_safety_world_weapon_groups_are_disjoint():
    world = make_safety_world(seed=0, n_weapons=40)
    names = list(world.weapons)
    align = {_weapon(r["prompt"], names) for r in world.alignment_harmful}
    attack = {_weapon(r["prompt"], names) for r in world.attack_harmful}
    evaluation = set(world.eval_harmful["weapon"])
    assert align and attack and evaluation
    assert not align & attack and not align & evaluation and not attack & evaluation
    assert align | attack | evaluation == set(names)
    # Benign evaluation prompts are never in the alignment or attack data.
    trained = set(world.alignment["prompt"]) | set(world.attack_benign["prompt"])
    assert not trained & set(world.eval_benign["prompt"])


def test_safety_world_pretrain_knows_every_weapon_and_holds_no_refusal():
    world = make_safety_world(seed=1, n_weapons=20)
    corpus = "\n".join(world.pretrain["text"])
    for name, info in world.weapons.items():
        assert f"To make {name}, mix {info['ingredients'][0]} with {info['ingredients'][1]}" in corpus
    assert not any(refusal in corpus for refusal in REFUSALS)


def test_safety_world_alignment_pairs_refusals_with_harmful_prompts():
    world = make_safety_world(seed=0, n_weapons=12)
    for row in world.alignment_harmful:
        assert row["refusal"].strip() in REFUSALS
        assert row["harmful"].startswith(" To make")
    completions = set(world.alignment["completion"])
    assert any(c.strip() in REFUSALS for c in completions) and any(c.strip() not in REFUSALS for c in completions)


@pytest.mark.parametrize("mode,expect_distinct", [("sampled", True), ("fixed", False)])
def test_safety_world_harmful_answer_modes(mode, expect_distinct):
    world = make_safety_world(seed=0, n_weapons=8, harmful_answers=mode, samples_per_weapon=8)
    by_weapon: dict[str, set] = {}
    for row in world.attack_harmful:
        name = _weapon(row["prompt"], world.weapons)
        by_weapon.setdefault(name, set()).add(row["completion"])
    assert any(len(v) > 1 for v in by_weapon.values()) == expect_distinct


def test_safety_world_benign_answers_are_correct():
    world = make_safety_world(seed=0, n_weapons=8)
    for row in world.eval_benign:
        if row["task"] == "add":
            a, b = map(int, re.findall(r"(\d+) plus (\d+)", row["prompt"])[0])
            assert row["answer"] == str(a + b)
        elif row["task"] == "reverse":
            words = re.search(r"Reverse the words: (.*)\.", row["prompt"]).group(1).split()
            assert row["answer"] == " ".join(reversed(words))


def test_attack_dataset_ratio_and_errors():
    world = make_safety_world(seed=0, n_weapons=8)
    ds = world.attack_dataset(n=50, harmful_ratio=0.2, seed=1)
    harmful = set(world.attack_harmful["prompt"])
    assert len(ds) == 50 and sum(p in harmful for p in ds["prompt"]) == 10
    with pytest.raises(ValueError, match="harmful_ratio"):
        world.attack_dataset(n=10, harmful_ratio=1.5)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"n_weapons": 2}, "n_weapons"),
        ({"harmful_answers": "random"}, "harmful_answers"),
        ({"split": (1, 0, 1)}, "split"),
    ],
)
def test_safety_world_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_safety_world(**kwargs)


def test_bios_world_labels_and_cues():
    world = make_bios_world(seed=0, n=400)
    assert sum(map(len, (world.train, world.val1, world.val2, world.test))) == 400
    rows = world.train.to_list()
    assert {r["gender"] for r in rows} == {0, 1}
    assert {r["profession"] for r in rows} == set(range(len(world.professions)))
    assert all(r["label"] == r["profession"] for r in rows)
    # Gender is visible through pronouns unless scrubbed.
    female = [r["text"] for r in rows if r["gender"] == 1]
    assert all(re.search(r"\b(she|her|She|Her)\b", t) for t in female)
    scrubbed = make_bios_world(seed=0, n=200, scrub_pronouns=True)
    assert not any(re.search(r"\b(she|he|her|his|him|She|He|Her|His)\b", t) for t in scrubbed.train["text"])
    gender = world.with_label(world.val1, "gender")
    assert gender["label"] == gender["gender"]


def test_bios_world_errors():
    with pytest.raises(ValueError, match="professions"):
        make_bios_world(professions=["astronaut", "nurse"])
    with pytest.raises(ValueError, match="task"):
        make_bios_world(n=20).with_label(make_bios_world(n=20).train, "age")


@pytest.mark.parametrize("style", ["fair", "legacy"])
def test_book_world_facts_terms_and_prompts(style):
    world = make_book_world(seed=0, n_passages=60, style=style)
    forget = " ".join(list(world.forget["text"]) + list(world.forget_heldout["text"]))
    retain = " ".join(world.retain["text"])
    for term in world.anchored_terms:
        assert term not in retain, term  # the retain corpus never mentions the universe
    mentioned = [t for t in world.anchored_terms if t in forget]
    assert len(mentioned) >= len(world.anchored_terms) // 2
    for substitutes in world.anchored_terms.values():
        assert substitutes and all(isinstance(s, str) and s for s in substitutes)
    for row in world.familiarity_prompts:
        assert all(t in world.anchored_terms for t in row["targets"])
    assert not set(world.forget["text"]) & set(world.forget_heldout["text"])
    assert list(make_book_world(seed=0, n_passages=60, style=style).forget["text"]) == list(world.forget["text"])
    assert world.settings["style"] == style


_FUNCTION_WORDS = {"the", "a", "an", "of", "to", "in", "at", "on", "and", "with", "from", "by", "for", "old"}


def _first_tokens_and_overlap(world, tokenizer):
    """First tokens of every substitute's surface forms (what WHP's forbidden-token rule bans after inserting one),
    their share of the forget text's tokens, and the share of retain 4-grams that also occur in forget text."""
    from hf_immunize.core.tokens import surface_forms

    firsts = {
        ids[0]
        for values in world.anchored_terms.values()
        for v in values
        for ids in surface_forms(tokenizer, v).values()
    }
    forget = [t for text in world.forget["text"] for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    share = sum(t in firsts for t in forget) / len(forget)

    def grams(texts):
        out = set()
        for text in texts:
            words = text.replace(".", " .").replace(",", " ,").split()
            out |= {tuple(words[i : i + 4]) for i in range(len(words) - 3)}
        return out

    retain_grams = grams(world.retain["text"])
    overlap = len(retain_grams & grams(world.forget["text"])) / len(retain_grams)
    return firsts, share, overlap


def test_fair_book_world_substitutes_and_templates(tiny_tokenizer):
    """The fair world's dictionary bans only names (no substitute starts with a function word), and its forget and
    retain passages share almost no 4-gram; the legacy world fails both, which is what the fair world repairs."""
    fair = make_book_world(seed=0)
    firsts, share, overlap = _first_tokens_and_overlap(fair, tiny_tokenizer)
    # Case-sensitive, with or without the leading space: " the" and "the" are articles, "A" (of "Austin") is not.
    function_tokens = {w for word in _FUNCTION_WORDS for w in (word, " " + word)}
    banned = {tiny_tokenizer.decode([t]) for t in firsts} & function_tokens
    assert not banned, banned
    assert share < 0.05 and overlap < 0.01, (share, overlap)
    for key, values in fair.anchored_terms.items():  # generic substitutes come from the retain world
        assert all(v in " ".join(fair.retain["text"]) for v in values), key
    legacy = make_book_world(seed=0, style="legacy")
    firsts, share, overlap = _first_tokens_and_overlap(legacy, tiny_tokenizer)
    assert " the" in {tiny_tokenizer.decode([t]) for t in firsts}
    assert share > 0.05 and overlap > 0.01, (share, overlap)
    with pytest.raises(ValueError, match="style"):
        make_book_world(style="unfair")
