"""The MLAC-style classifier attack: fresh head, untouched input model, learning, determinism, search logic."""

import math
import statistics
import sys
import types

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

from hf_immunize.data.toy import BiosWorld, make_bios_world
from hf_immunize.evaluation import classifier_runs, classifier_search
from hf_immunize.evaluation.classifier_attack import (
    SOLVE_THRESHOLDS,
    ClassifierAttackConfig,
    ClassifierSearchSpace,
    attack_classifier,
    random_init_like,
    search_classifier_attack,
)

# Gender is learnable from pronouns by full fine-tuning in ~50 steps at this size (measured: 1.0 at step 50).
LEARN = {"n_examples": 200, "learning_rate": 1e-3, "steps": 100, "batch_size": 16, "mode": "full", "eval_every": 25}


@pytest.fixture(scope="module")
def world():
    return make_bios_world(seed=0, n=600, professions=["nurse", "attorney", "teacher"])


@pytest.fixture(scope="module")
def gender(world):
    """(attacker pool of 420 rows, eval set of 60 rows), labelled by gender; pronouns present."""
    return BiosWorld.with_label(world.train, "gender"), BiosWorld.with_label(world.val2, "gender")


@pytest.fixture
def classifier(tiny_classifier_path):
    return AutoModelForSequenceClassification.from_pretrained(tiny_classifier_path)


@pytest.fixture(scope="module")
def learned(tiny_classifier_path, tiny_tokenizer, gender):
    """One full fine-tuning run on the gender task, shared by the tests that only read its result."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_path)
    return attack_classifier(model, tiny_tokenizer, ClassifierAttackConfig(**LEARN), *gender)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _short(**overrides):
    return ClassifierAttackConfig(**{"n_examples": 16, "steps": 4, "batch_size": 8, "eval_every": 2, **overrides})


# --------------------------------------------------------------------------------------------------------------------
# Config and input validation
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mode", "lora"),
        ("learning_rate", 0.0),
        ("learning_rate", -1e-3),
        ("learning_rate", float("nan")),
        ("steps", 0),
        ("batch_size", 0),
        ("n_examples", 0),
        ("eval_every", 0),
        ("max_length", 0),
        ("num_labels", 1),
        ("seed", -1),
        ("steps", 2.5),
        ("n_examples", True),
    ],
)
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError) as excinfo:
        ClassifierAttackConfig(**{field: value})
    assert f"`{field}`" in str(excinfo.value) and repr(value) in str(excinfo.value)


def test_search_space_rejects_bad_values():
    with pytest.raises(ValueError, match="learning_rate"):
        ClassifierSearchSpace(learning_rate=(1e-2, 1e-5))
    with pytest.raises(ValueError, match="modes"):
        ClassifierSearchSpace(modes=("full", "adapter"))
    with pytest.raises(ValueError, match="batch_sizes"):
        ClassifierSearchSpace(batch_sizes=())


@pytest.fixture
def no_training(monkeypatch):
    """Makes any model load, copy or optimizer construction fail: errors must come before all of them."""

    def boom(*args, **kwargs):
        raise AssertionError("training started before validation")

    for module in (classifier_runs, classifier_search):  # where the attack and its search load the model
        monkeypatch.setattr(module, "_load_or_copy", boom)
    monkeypatch.setattr(torch.optim, "Adam", boom)


def test_too_many_examples_named_with_both_numbers(classifier, tiny_tokenizer, gender, no_training):
    pool, eval_set = gender
    with pytest.raises(ValueError, match=r"`n_examples` \(500\).*\(420 rows\)"):
        attack_classifier(classifier, tiny_tokenizer, ClassifierAttackConfig(n_examples=500), pool, eval_set)
    with pytest.raises(ValueError, match=r"`n_examples` \(500\).*\(420 rows\)"):
        search_classifier_attack(classifier, tiny_tokenizer, pool, eval_set, n_examples=500, sampler="grid")


def test_bad_labels_and_columns_fail_before_training(classifier, tiny_tokenizer, world, gender, no_training):
    pool, eval_set = gender
    professions = BiosWorld.with_label(world.val2, "profession")  # labels 0..2, but num_labels=2
    with pytest.raises(ValueError, match="eval_set.*num_labels=2"):
        attack_classifier(classifier, tiny_tokenizer, _short(), pool, professions)
    with pytest.raises(ValueError, match="train_pool.*num_labels=2"):
        search_classifier_attack(classifier, tiny_tokenizer, professions, eval_set, n_examples=10, sampler="grid")
    with pytest.raises(ValueError, match="lacks the column"):
        attack_classifier(classifier, tiny_tokenizer, _short(), pool, eval_set, label_column="gender_id")
    with pytest.raises(ValueError, match="budget"):
        search_classifier_attack(classifier, tiny_tokenizer, pool, eval_set, n_examples=10, budget=0)
    with pytest.raises(ValueError, match="sampler"):
        search_classifier_attack(classifier, tiny_tokenizer, pool, eval_set, n_examples=10, sampler="bayes")


# --------------------------------------------------------------------------------------------------------------------
# Head replacement and isolation
# --------------------------------------------------------------------------------------------------------------------


def test_head_is_fresh_and_the_given_model_is_untouched(classifier, tiny_tokenizer, gender):
    before = _snapshot(classifier)
    flags = {n: p.requires_grad for n, p in classifier.named_parameters()}
    result = attack_classifier(classifier, tiny_tokenizer, _short(num_labels=2), *gender, return_model=True)
    attacked = result.model

    assert attacked is not classifier
    assert attacked.classifier.weight.shape == (2, classifier.config.hidden_size)
    assert attacked.classifier.bias is None  # the paper's head is bias-free
    assert attacked.config.num_labels == 2
    assert attacked(**tiny_tokenizer(["She is a nurse."], return_tensors="pt")).logits.shape == (1, 2)
    # The caller's model: same weights, same head, same config, same trainable flags.
    after = classifier.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert classifier.config.num_labels == 4 and classifier.classifier.out_features == 4
    assert flags == {n: p.requires_grad for n, p in classifier.named_parameters()}

    # Same number of labels as the original: the new head still is not the old one.
    same_shape = attack_classifier(classifier, tiny_tokenizer, _short(num_labels=4), *gender, return_model=True)
    assert same_shape.model.classifier.weight.shape == classifier.classifier.weight.shape
    assert not torch.allclose(same_shape.model.classifier.weight, classifier.classifier.weight, atol=1e-3)


def test_linear_probe_trains_only_the_head(classifier, tiny_tokenizer, gender):
    def probe(lr):
        config = _short(mode="linear_probe", learning_rate=lr, steps=6)
        return attack_classifier(classifier, tiny_tokenizer, config, *gender, return_model=True).model

    fast, slow = probe(1e-2), probe(1e-4)  # same seed: same subset and same initial head
    original = dict(classifier.named_parameters())
    for attacked in (fast, slow):
        for name, p in attacked.named_parameters():
            if name.startswith("classifier."):
                continue
            assert torch.equal(p, original[name]), f"{name} moved in a linear probe"
    assert not torch.equal(fast.classifier.weight, slow.classifier.weight), "the head did not train"


def test_full_mode_trains_the_trunk(classifier, tiny_tokenizer, gender):
    attacked = attack_classifier(classifier, tiny_tokenizer, _short(mode="full"), *gender, return_model=True).model
    original = dict(classifier.named_parameters())
    moved = [n for n, p in attacked.named_parameters() if n in original and not torch.equal(p, original[n])]
    assert any(n.startswith("bert.encoder.") for n in moved) and any("embeddings" in n for n in moved)


def test_path_input_and_tokenizer_from_the_model_dir(tiny_classifier_path, gender):
    result = attack_classifier(str(tiny_classifier_path), None, _short(), *gender)
    assert [s for s, _ in result.curve] == [0, 2, 4]


def test_other_head_layouts(tiny_lm_path, tiny_tokenizer, gender):
    """Llama keeps its head in `score`; RoBERTa's head is dense -> out_proj, of which only out_proj is replaced."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    result = attack_classifier(str(tiny_lm_path), tiny_tokenizer, _short(), *gender, return_model=True)
    assert result.model.score.weight.shape[0] == 2 and result.model.score.bias is None

    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
        num_labels=5,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    roberta = RobertaForSequenceClassification(config)
    dense = roberta.classifier.dense.weight.detach().clone()
    result = attack_classifier(roberta, tiny_tokenizer, _short(mode="linear_probe"), *gender, return_model=True)
    head = result.model.classifier
    assert head.out_proj.weight.shape == (2, 32) and torch.equal(head.dense.weight, dense)


# --------------------------------------------------------------------------------------------------------------------
# The attack learns, and only what is there to learn
# --------------------------------------------------------------------------------------------------------------------


def test_full_attack_learns_gender(learned):
    assert learned.best_accuracy >= 0.9, learned.curve
    assert learned.best_accuracy > learned.majority_rate + 0.25


def test_shuffled_eval_labels_stay_near_chance(tiny_classifier_path, tiny_tokenizer, world, gender):
    """The same attack that learns gender (above) scored against labels with the gender signal shuffled away."""
    pool, _ = gender
    held_out = [world.val1, world.val2, world.test]
    texts = [t for ds in held_out for t in ds["text"]]
    labels = [g for ds in held_out for g in ds["gender"]]
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1)).tolist()
    control = Dataset.from_dict({"text": texts, "label": [labels[i] for i in perm]})  # 180 rows

    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_path)
    result = attack_classifier(model, tiny_tokenizer, ClassifierAttackConfig(**LEARN), pool, control)
    # Chance agreement on 180 rows has std ~0.037; the best of 5 evaluations stays within ~4 std of the floor.
    assert result.best_accuracy <= result.majority_rate + 0.15, result.curve


# --------------------------------------------------------------------------------------------------------------------
# Result consistency and determinism
# --------------------------------------------------------------------------------------------------------------------


def test_curve_best_final_and_solve_examples_agree(learned):
    accs = [acc for _, acc in learned.curve]
    assert [s for s, _ in learned.curve] == [0, 25, 50, 75, 100]
    assert learned.best_accuracy == max(accs) >= learned.final_accuracy == accs[-1]
    assert learned.curve[[s for s, _ in learned.curve].index(learned.best_step)][1] == learned.best_accuracy
    assert list(learned.solve_examples) == list(SOLVE_THRESHOLDS)
    for threshold, seen in learned.solve_examples.items():
        reached = [step for step, acc in learned.curve if acc >= threshold]
        assert seen == (reached[0] * LEARN["batch_size"] if reached else None)
    assert learned.solve_examples[0.9] is not None  # the learning run solves 0.9, so the check above had teeth
    assert len(set(learned.train_indices)) == LEARN["n_examples"]
    assert learned.to_dict()["solve_examples"]["0.5"] == learned.solve_examples[0.5]


def test_final_point_is_added_and_batch_clamped(classifier, tiny_tokenizer, gender):
    config = _short(n_examples=5, batch_size=8, steps=5, eval_every=2)
    result = attack_classifier(classifier, tiny_tokenizer, config, *gender)
    assert [s for s, _ in result.curve] == [0, 2, 4, 5]
    assert result.config["batch_size"] == 8
    for threshold, seen in result.solve_examples.items():  # examples seen count the clamped batch of 5
        reached = [step for step, acc in result.curve if acc >= threshold]
        assert seen == (reached[0] * 5 if reached else None)


def test_same_seed_same_result_other_seed_other_subset(classifier, tiny_tokenizer, gender):
    rng_state = torch.get_rng_state()
    a = attack_classifier(classifier, tiny_tokenizer, _short(seed=3), *gender)
    b = attack_classifier(classifier, tiny_tokenizer, _short(seed=3), *gender)
    c = attack_classifier(classifier, tiny_tokenizer, _short(seed=4), *gender)
    assert a.to_dict() == b.to_dict()
    assert set(a.train_indices) != set(c.train_indices)
    assert torch.equal(torch.get_rng_state(), rng_state), "the caller's RNG state changed"


# --------------------------------------------------------------------------------------------------------------------
# Random-init baseline
# --------------------------------------------------------------------------------------------------------------------


def test_random_init_like(classifier, tiny_classifier_path):
    before = _snapshot(classifier)
    # The fixture itself was built from its config under seed 0, so seed 0 here would rebuild it exactly.
    a, b = random_init_like(classifier, seed=7), random_init_like(str(tiny_classifier_path), seed=7)
    other = random_init_like(classifier, seed=8)
    assert type(a) is type(classifier) and a.config.num_labels == classifier.config.num_labels
    orig = classifier.state_dict()
    matrices = [k for k, v in orig.items() if v.ndim == 2]
    assert matrices and all(a.state_dict()[k].shape == orig[k].shape for k in orig)
    assert all(not torch.equal(a.state_dict()[k], orig[k]) for k in matrices)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in orig)  # seeded: object or path, same
    assert not torch.equal(a.classifier.weight, other.classifier.weight)
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())


# --------------------------------------------------------------------------------------------------------------------
# Search (the loop logic on a scripted attack, then one real end-to-end run)
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def scripted(monkeypatch):
    """Replaces the attack with a lookup: accuracy = f(config). Records every call's config."""
    calls = []

    def install(score):
        def fake_attack(model, tokenizer, config, train_pool, eval_set, **kwargs):
            calls.append(config)
            return types.SimpleNamespace(best_accuracy=score(config))

        monkeypatch.setattr(classifier_search, "attack_classifier", fake_attack)  # what the search calls
        return calls

    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError even where it is installed
    return install


SPACE = {"learning_rate": (1e-4, 1e-2), "steps": (10, 20), "batch_sizes": (4, 8), "lr_grid_size": 3}  # 24 points


def test_search_grid_fallback_budget_argmax_and_repeats(scripted, classifier, tiny_tokenizer, gender):
    calls = scripted(
        lambda c: round(0.5 + 0.1 * math.log10(c.learning_rate / 1e-4) + c.steps / 1000 + c.seed / 100, 4)
    )
    result = search_classifier_attack(
        classifier, tiny_tokenizer, *gender, n_examples=10, space=SPACE, budget=7, patience=100, repeats=4, seed=2
    )
    assert result.sampler == "grid" and result.stop_reason == "budget" and len(result.trials) == 7
    accuracies = [acc for _, acc in result.trials]
    assert result.best_config == result.trials[accuracies.index(max(accuracies))][0]
    assert result.best_trial_accuracy == max(accuracies)
    assert all(c["seed"] == 2 and c["n_examples"] == 10 for c, _ in result.trials)
    assert len({(c["learning_rate"], c["steps"], c["batch_size"], c["mode"]) for c, _ in result.trials}) == 7

    repeats = calls[7:]
    assert [c.seed for c in repeats] == [0, 1, 2, 3]
    assert all({**c.to_dict(), "seed": 2} == result.best_config for c in repeats)
    assert len(result.repeat_accuracies) == 4
    assert result.mean == pytest.approx(statistics.fmean(result.repeat_accuracies))
    assert result.std == pytest.approx(statistics.pstdev(result.repeat_accuracies)) and result.std > 0
    assert result.majority_rate == pytest.approx(max(sum(gender[1]["label"]), 60 - sum(gender[1]["label"])) / 60)

    again = search_classifier_attack(
        classifier, tiny_tokenizer, *gender, n_examples=10, space=SPACE, budget=7, patience=100, repeats=4, seed=2
    )
    assert again.trials == result.trials  # the shuffled grid is seeded
    other = search_classifier_attack(
        classifier, tiny_tokenizer, *gender, n_examples=10, space=SPACE, budget=7, patience=100, repeats=1, seed=3
    )
    assert [c for c, _ in other.trials] != [c for c, _ in result.trials]


@pytest.mark.parametrize(
    ("scores", "patience", "stop_reason", "n_trials"),
    [
        ([0.6, 0.7, 1.0, 0.5], 10, "solved", 3),  # accuracy 1.0 ends the search
        ([0.995, 0.5], 10, "solved", 1),  # >= 0.99 on the first trial ends it
        ([0.7, 0.995, 0.5], 10, "budget", 3),  # ... but only on the first
        ([0.6, 0.7, 0.7, 0.65, 0.5, 0.9], 3, "patience", 5),  # 3 trials in a row without strict improvement
    ],
)
def test_search_stopping_rules(scripted, classifier, tiny_tokenizer, gender, scores, patience, stop_reason, n_trials):
    queue = iter(scores)
    scripted(lambda c: next(queue, 0.5))  # trials take the scores in order; repeats get what is left
    result = search_classifier_attack(
        classifier,
        tiny_tokenizer,
        *gender,
        n_examples=10,
        space=SPACE,
        budget=len(scores),
        patience=patience,
        repeats=1,
    )
    assert result.stop_reason == stop_reason
    assert [acc for _, acc in result.trials] == scores[:n_trials]


def test_search_grid_exhausted(scripted, classifier, tiny_tokenizer, gender):
    scripted(lambda c: 0.5)
    space = {"steps": (5,), "batch_sizes": (4,), "modes": ("full",), "lr_grid_size": 2}
    result = search_classifier_attack(classifier, tiny_tokenizer, *gender, n_examples=10, space=space, budget=5)
    assert result.stop_reason == "exhausted" and len(result.trials) == 2
    assert result.best_config == result.trials[0][0]  # ties go to the first trial


def test_search_uses_optuna_tpe_when_importable(scripted, monkeypatch, classifier, tiny_tokenizer, gender):
    """A stand-in for Optuna's ask/tell API (Optuna is an optional extra, not installed in CI)."""
    told = []

    class Trial:
        def suggest_float(self, name, low, high, log=False):
            assert log and (low, high) == (1e-4, 1e-2)
            return 3e-3

        def suggest_categorical(self, name, choices):
            return choices[-1]

    class Study:
        def ask(self):
            return Trial()

        def tell(self, trial, value):
            told.append(value)

    fake = types.SimpleNamespace(
        create_study=lambda direction, sampler: Study() if direction == "maximize" else None,
        samplers=types.SimpleNamespace(TPESampler=lambda seed: ("tpe", seed)),
    )
    scripted(lambda c: 0.5 + len(told) / 100)
    monkeypatch.setitem(sys.modules, "optuna", fake)
    result = search_classifier_attack(
        classifier, tiny_tokenizer, *gender, n_examples=10, space=SPACE, budget=4, patience=10, repeats=1
    )
    assert result.sampler == "tpe" and len(result.trials) == 4 and told == [0.5, 0.51, 0.52, 0.53]
    assert all(
        (c["learning_rate"], c["steps"], c["batch_size"], c["mode"]) == (3e-3, 20, 8, "full") for c, _ in result.trials
    )


def test_search_tpe_requested_without_optuna(scripted, classifier, tiny_tokenizer, gender):
    with pytest.raises(ValueError, match="optuna"):
        search_classifier_attack(classifier, tiny_tokenizer, *gender, n_examples=10, sampler="tpe")


def test_search_end_to_end(classifier, tiny_tokenizer, gender, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    before = _snapshot(classifier)
    space = ClassifierSearchSpace(learning_rate=(1e-3, 3e-3), steps=(6,), batch_sizes=(8,), lr_grid_size=2)
    result = search_classifier_attack(
        classifier, tiny_tokenizer, *gender, n_examples=16, space=space, budget=2, repeats=2, patience=5
    )
    assert len(result.trials) == 2 and len(result.repeat_accuracies) == 2
    assert all(0.0 <= a <= 1.0 for a in result.repeat_accuracies)
    assert result.to_dict()["trials"][0]["config"]["steps"] == 6
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())
