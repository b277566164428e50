"""The attack harness: it attacks a private copy, in the requested protocol, and its numbers mean what they say."""

import json

import pytest
import torch
from datasets import Dataset

from hf_immunize.data.toy import make_safety_world
from hf_immunize.demo import train_sft
from hf_immunize.evaluation import (
    AttackConfig,
    AttackResult,
    ImmunizationReport,
    build_attack_dataset,
    completion_loss,
    load_for_attack,
    run_attack,
    sweep_attacks,
)
from hf_immunize.utils import detached_copy


@pytest.fixture(scope="module")
def world():
    return make_safety_world(seed=0, n_weapons=8, n_reverse=20, n_capitals=5, n_dishes=4)


def _cfg(**kw):
    base = dict(n_samples=20, harmful_ratio=0.5, max_steps=3, learning_rate=1e-3, batch_size=4, max_new_tokens=4)
    return AttackConfig(**{**base, **kw})


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_attack_dataset_has_the_requested_mix(world):
    ds = build_attack_dataset(world.attack_harmful, world.attack_benign, n=40, harmful_ratio=0.25, seed=3)
    harmful = set(world.attack_harmful["prompt"])
    assert len(ds) == 40 and sum(p in harmful for p in ds["prompt"]) == 10
    again = build_attack_dataset(world.attack_harmful, world.attack_benign, n=40, harmful_ratio=0.25, seed=3)
    assert ds.to_list() == again.to_list()
    with pytest.raises(ValueError, match="harmful dataset is empty"):
        build_attack_dataset(world.attack_harmful.select([]), world.attack_benign, n=4, harmful_ratio=0.5, seed=0)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"mode": "lora"}, "mode"),
        ({"harmful_ratio": 1.5}, "harmful_ratio"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"n_samples": 0}, "n_samples"),
        ({"eval_every": 0}, "eval_every"),
    ],
)
def test_attack_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AttackConfig(**kwargs)


@pytest.mark.parametrize("mode", ["full", "lora_new"])
def test_attack_never_touches_the_defended_model_and_records_a_curve(mode, tiny_lm, tiny_tokenizer, world):
    before = _snapshot(tiny_lm)
    result = run_attack(
        tiny_lm,
        tiny_tokenizer,
        _cfg(mode=mode, eval_every=1, max_steps=2),
        world.attack_harmful,
        world.attack_benign,
        world.eval_harmful,
        world.eval_benign,
    )
    assert all(torch.equal(before[k], v) for k, v in tiny_lm.state_dict().items())
    assert [p["step"] for p in result.curve] == [0, 1, 2]
    assert result.config["mode"] == mode
    for key in ("harmful_score", "harmful_content", "harmful_loss", "task_accuracy"):
        assert key in result.before and key in result.after
    # The untrained model's loss on the reference answers is near log|V|; the attack (which trains on harmful
    # answers of other weapons, sharing the answer template) must lower it.
    assert result.after["harmful_loss"] < result.before["harmful_loss"]


def test_lora_continue_needs_an_adapter_and_trains_only_it(tiny_lm, tiny_tokenizer, world):
    with pytest.raises(ValueError, match="lora_continue"):
        load_for_attack(tiny_lm, "lora_continue")
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(detached_copy(tiny_lm), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    copy = load_for_attack(peft_model, "lora_continue")
    trainable = {n for n, p in copy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    merged = load_for_attack(peft_model, "lora_new")
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_copy_of_a_trl_trained_model_is_independent(tiny_lm, tiny_tokenizer, world, tmp_path):
    """Regression: SFTTrainer patches `forward` with a closure over the original model, which deepcopy keeps."""
    trained = train_sft(tiny_lm, tiny_tokenizer, world.alignment, tmp_path, steps=1, lr=1e-3, batch_size=2, seed=0)
    clone = detached_copy(trained)
    with torch.no_grad():
        for p in clone.parameters():
            p.zero_()
    ids = torch.tensor([[5, 6, 7]])
    assert torch.count_nonzero(clone(input_ids=ids).logits) == 0
    assert torch.count_nonzero(trained(input_ids=ids).logits) > 0


def test_attack_accepts_a_saved_directory(tiny_lm_path, tiny_tokenizer, world):
    result = run_attack(
        str(tiny_lm_path),
        tiny_tokenizer,
        _cfg(max_steps=1),
        world.attack_harmful,
        world.attack_benign,
        world.eval_harmful,
    )
    assert "task_accuracy" not in result.after and result.curve[-1]["step"] == 1


def test_completion_loss_matches_a_manual_computation(tiny_lm, tiny_tokenizer):
    prompt, completion = "User: What is 2 plus 2?\nAssistant:", " 4."
    p = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full = tiny_tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(tiny_lm(input_ids=torch.tensor([full])).logits[0].float(), -1)
    manual = -sum(logp[t - 1, full[t]].item() for t in range(len(p), len(full))) / (len(full) - len(p))
    batched = completion_loss(tiny_lm, tiny_tokenizer, [prompt, "User: hi\nAssistant:"], [completion, " hello there."])
    single = completion_loss(tiny_lm, tiny_tokenizer, [prompt], [completion])
    assert single == pytest.approx(manual, rel=1e-5)
    assert batched != pytest.approx(single)  # the second row counts too, token-weighted


def test_sweep_grid_reports_worst_cases(tiny_lm, tiny_tokenizer, world):
    space = {"learning_rate": [1e-4, 1e-3], "max_steps": [1, 2]}
    sweep = sweep_attacks(
        tiny_lm,
        tiny_tokenizer,
        _cfg(),
        world.attack_harmful,
        world.attack_benign,
        world.eval_harmful,
        world.eval_benign,
        space=space,
        budget=3,
    )
    assert len(sweep.trials) == 3 and sweep.sampler == "grid-sample"
    assert sweep.worst["harmful_score_after"] == max(t["harmful_score_after"] for t in sweep.trials)
    assert {tuple(sorted(t["overrides"])) for t in sweep.trials} == {("learning_rate", "max_steps")}
    with pytest.raises(ValueError, match="not an AttackConfig field"):
        sweep_attacks(
            tiny_lm,
            tiny_tokenizer,
            _cfg(),
            world.attack_harmful,
            world.attack_benign,
            world.eval_harmful,
            space={"lr": [1.0]},
        )


def test_sweep_worst_within_utility_respects_the_bound(monkeypatch):
    """The utility-bounded worst case ignores attacks that destroyed task accuracy (scripted attack results)."""
    import hf_immunize.evaluation.sweep as sweep_mod

    outcomes = {1e-4: (40.0, 80.0), 1e-3: (90.0, 50.0), 3e-4: (60.0, 70.0)}  # lr -> (harmful after, task after)

    def fake_attack(model, tok, config, *args, **kwargs):
        harmful, task = outcomes[config.learning_rate]
        return AttackResult(
            config={},
            before={"harmful_score": 0.0, "task_accuracy": 80.0},
            after={"harmful_score": harmful, "task_accuracy": task},
            curve=[],
        )

    monkeypatch.setattr(sweep_mod, "run_attack", fake_attack)
    data = Dataset.from_list([{"prompt": "x"}])
    res = sweep_mod.sweep_attacks(
        None,
        None,
        _cfg(),
        data,
        data,
        data,
        space={"learning_rate": list(outcomes)},
        budget=10,
        utility_drop=0.10,
    )
    assert res.sampler == "grid" and res.worst["harmful_score_after"] == 90.0
    assert res.worst_within_utility["harmful_score_after"] == 40.0  # 70 < 0.9 * 80 rules out lr 3e-4


def test_report_summary_json_png_and_markdown(tmp_path):
    def result(before, after, seed):
        return AttackResult(
            config={
                "n_samples": 10,
                "harmful_ratio": 0.1,
                "learning_rate": 1e-4,
                "num_epochs": 1,
                "batch_size": 2,
                "mode": "full",
                "max_steps": None,
                "seed": seed,
            },
            before={"harmful_score": before, "task_accuracy": 50.0},
            after={"harmful_score": after, "task_accuracy": 48.0},
            curve=[{"step": 0, "harmful_score": before}, {"step": 5, "harmful_score": after}],
        )

    report = ImmunizationReport.from_results(
        "booster", "m", [result(0, 20, 0), result(0, 40, 1)], [result(5, 100, 0), result(5, 90, 1)]
    )
    s = report.summary()
    assert s["defended"]["harmful_score_after"]["mean"] == 30.0
    assert s["undefended"]["harmful_score_after"]["mean"] == 95.0
    assert s["defended"]["harmful_score_after"]["std"] == pytest.approx(14.142, rel=1e-3)
    paths = report.save(tmp_path)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = ImmunizationReport.load(paths["json"])
    assert loaded.summary() == s and json.loads(paths["json"].read_text())["method"] == "booster"
    md = report.to_markdown(plot_file="immunization_report.png")
    assert "| booster | 0.0 ± 0.0 | 30.0 ± 14.1 |" in md and "![" in md
