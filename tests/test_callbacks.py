"""Callbacks on a plain `transformers.Trainer`, a `trl.SFTTrainer` and `BoosterTrainer`: they log what they measure
and leave the training run exactly as it is without them (weights and every RNG stream)."""

import copy
import math
import random

import numpy as np
import pytest
import torch
from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback, TrainingArguments
from trl import SFTTrainer

from hf_immunize.callbacks import AttackProbeCallback, HarmfulLossGapCallback, ImmunizationCardCallback
from hf_immunize.core.perturbation import NORM_EPS
from hf_immunize.data.toy import make_safety_world
from hf_immunize.evaluation.attack import AttackConfig, AttackResult
from hf_immunize.evaluation.report import ImmunizationReport
from hf_immunize.model_card import PLOT_NAME
from hf_immunize.utils import sft_config

PROBE_ATTACK = AttackConfig(n_samples=8, max_steps=2, batch_size=4, learning_rate=1e-3, max_new_tokens=4)


@pytest.fixture(scope="module")
def world():
    return make_safety_world(n_weapons=8)


@pytest.fixture(scope="module")
def harmful(world):
    return world.alignment_harmful.map(lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"])


class _Recorder(TrainerCallback):
    """Stands in for a `report_to` integration: records what reaches `on_log`."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


class _Reseed(TrainerCallback):
    """Negative control: a callback that does disturb the run (reseeds torch at step 2)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            torch.manual_seed(1234)


def _rng_state():
    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def _same_rng(a, b) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1] and np.array_equal(a[2], b[2])


def _plain_trainer(model, tokenizer, world, output_dir, callbacks=(), **overrides):
    rows = world.alignment.map(
        lambda r: tokenizer(r["prompt"] + r["completion"], truncation=True, max_length=48),
        remove_columns=world.alignment.column_names,
    )
    kwargs = dict(
        max_steps=4,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,  # 3 optimizer steps per epoch: step 4 starts a reshuffled epoch
        learning_rate=1e-3,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
        seed=7,
    )
    args = TrainingArguments(str(output_dir), **{**kwargs, **overrides})
    return Trainer(
        model=model,
        args=args,
        train_dataset=rows,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=list(callbacks),
    )


def _train_and_snapshot(make_trainer, bind=()):
    torch.manual_seed(0)
    trainer = make_trainer()
    for callback in bind:
        callback.bind(trainer)
    trainer.train()
    params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    return trainer, params, _rng_state()


def _assert_same_run(a, b):
    (_, params_a, rng_a), (_, params_b, rng_b) = a, b
    assert all(torch.equal(params_a[n], params_b[n]) for n in params_a)
    assert _same_rng(rng_a, rng_b)


def _load(path, dropout: float = 0.0):
    """The tiny Llama; with `dropout` its attention draws from the global torch RNG, so a disturbed RNG stream
    changes the trained weights."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = dropout
    return model


# ---- HarmfulLossGapCallback ---------------------------------------------------------------------------------------


def test_gap_matches_a_hand_computation_and_restores_weights_and_grads(tiny_lm, tiny_tokenizer, harmful):
    callback = HarmfulLossGapCallback(harmful.select(range(6)), step_size=0.5, tokenizer=tiny_tokenizer)
    params = [p for p in tiny_lm.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 0.25)
    before = copy.deepcopy(tiny_lm.state_dict())
    tiny_lm.train()

    metrics = callback.measure(tiny_lm)

    assert tiny_lm.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in tiny_lm.state_dict().items())  # bit-exact restore
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in params)  # `.grad` untouched
    reference = copy.deepcopy(tiny_lm).eval()
    batch = callback._probe_batch(None)
    ref_params = [p for p in reference.parameters() if p.requires_grad]
    h = HarmfulLossGapCallback._loss(reference, batch)
    grads = torch.autograd.grad(h, ref_params)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    with torch.no_grad():
        for p, g in zip(ref_params, grads):
            p -= 0.5 * g / (norm.float() + NORM_EPS)
        h_prime = HarmfulLossGapCallback._loss(reference, batch)
    assert metrics["harmful_gap/harmful_loss"] == pytest.approx(h.item(), rel=1e-6)
    assert metrics["harmful_gap/harmful_loss_perturbed"] == pytest.approx(h_prime.item(), rel=1e-5)
    assert metrics["harmful_gap/harmful_loss_gap"] == pytest.approx(h.item() - h_prime.item(), abs=1e-5)
    assert metrics["harmful_gap/harmful_grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
    assert metrics["harmful_gap/harmful_loss_gap"] > 0  # a descent step lowers the loss it descends


def test_gap_callback_on_a_plain_trainer_logs_and_changes_nothing(
    tiny_lm_path, tiny_tokenizer, world, harmful, tmp_path
):
    def make(callbacks=()):
        return lambda: _plain_trainer(_load(tiny_lm_path, dropout=0.1), tiny_tokenizer, world, tmp_path, callbacks)

    baseline = _train_and_snapshot(make())
    recorder = _Recorder()
    gap = HarmfulLossGapCallback(harmful, every_n_steps=2, tokenizer=tiny_tokenizer)
    with_gap = _train_and_snapshot(make([recorder]), bind=[gap])
    _assert_same_run(baseline, with_gap)
    reseeded = _train_and_snapshot(make([_Reseed()]))
    assert not all(torch.equal(baseline[1][n], reseeded[1][n]) for n in baseline[1])  # the comparison can fail
    assert not _same_rng(baseline[2], reseeded[2])

    history = with_gap[0].state.log_history
    entries = [e for e in history if "harmful_gap/harmful_loss_gap" in e]
    assert [e["step"] for e in entries] == [2, 4] and [h["step"] for h in gap.history] == [2, 4]
    assert all(math.isfinite(e["harmful_gap/harmful_loss_gap"]) for e in entries)
    assert sum("harmful_gap/harmful_loss_gap" in logs for logs in recorder.logs) == 2  # reached the report_to hooks
    assert sum("loss" in e for e in history) == sum("loss" in e for e in baseline[0].state.log_history) == 4


def test_gap_callback_on_booster_and_sft_trainer(tiny_lm_path, tiny_tokenizer, world, harmful, tmp_path):
    from hf_immunize import BoosterConfig, BoosterTrainer

    def booster(callbacks=()):
        args = BoosterConfig(
            str(tmp_path),
            max_steps=2,
            per_device_train_batch_size=4,
            use_cpu=True,
            bf16=False,
            activation_checkpointing=False,
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            logging_steps=1,
        )
        return BoosterTrainer(
            model=_load(tiny_lm_path),
            args=args,
            train_dataset=world.alignment,
            harmful_dataset=harmful,
            processing_class=tiny_tokenizer,
            callbacks=list(callbacks),
        )

    baseline = _train_and_snapshot(booster)
    gap = HarmfulLossGapCallback(harmful.select(range(4)))  # tokenizer: the trainer's processing_class
    probe = AttackProbeCallback(
        world.attack_harmful, world.attack_benign, world.eval_harmful, attack_config=PROBE_ATTACK, every_n_steps=1
    )
    with_gap = _train_and_snapshot(lambda: booster([gap, probe]))
    _assert_same_run(baseline, with_gap)
    history = with_gap[0].state.log_history
    entries = [e for e in history if "harmful_gap/harmful_loss" in e]
    assert [e["step"] for e in entries] == [1, 2]  # every `logging_steps`
    assert all("booster/harmful_loss_drop" not in e for e in entries)  # its own entry: Booster's buffer untouched
    assert [e["step"] for e in history if "booster/harmful_loss_drop" in e] == [1, 2]
    assert [step for step, _ in probe.results] == [1, 2]

    sft = SFTTrainer(
        model=_load(tiny_lm_path),
        args=sft_config(tmp_path, max_steps=2, per_device_train_batch_size=4, logging_steps=1),
        train_dataset=world.alignment,
        processing_class=tiny_tokenizer,
    )
    gap = HarmfulLossGapCallback(harmful.select(range(4))).bind(sft)
    sft.train()
    assert [h["step"] for h in gap.history] == [1, 2]
    assert all(math.isfinite(h["harmful_gap/harmful_loss_gap"]) for h in gap.history)


# ---- AttackProbeCallback ------------------------------------------------------------------------------------------


def test_attack_probe_logs_harmful_score_and_changes_nothing(tiny_lm_path, tiny_tokenizer, world, tmp_path):
    def make(callbacks=()):
        return lambda: _plain_trainer(_load(tiny_lm_path, dropout=0.1), tiny_tokenizer, world, tmp_path, callbacks)

    baseline = _train_and_snapshot(make())
    recorder = _Recorder()
    probe = AttackProbeCallback(
        world.attack_harmful,
        world.attack_benign,
        world.eval_harmful,
        attack_config=PROBE_ATTACK,
        every_n_steps=2,
        tokenizer=tiny_tokenizer,
    )
    with_probe = _train_and_snapshot(make([recorder]), bind=[probe])
    _assert_same_run(baseline, with_probe)

    assert [step for step, _ in probe.results] == [2, 4]
    assert all(isinstance(r, AttackResult) and r.config["max_steps"] == 2 for _, r in probe.results)
    entries = [e for e in with_probe[0].state.log_history if "attack_probe/harmful_score_after" in e]
    assert [e["step"] for e in entries] == [2, 4]
    for entry, (_, result) in zip(entries, probe.results):
        assert entry["attack_probe/harmful_score_after"] == result.harmful_score_after
        assert 0 <= entry["attack_probe/harmful_score_before"] <= 100
    assert sum("attack_probe/harmful_score_after" in logs for logs in recorder.logs) == 2


def test_attack_probe_at_evaluation_on_sft_trainer(tiny_lm, tiny_tokenizer, world, tmp_path):
    probe = AttackProbeCallback(
        world.attack_harmful, world.attack_benign, world.eval_harmful, attack_config=PROBE_ATTACK
    )
    trainer = SFTTrainer(
        model=tiny_lm,
        args=sft_config(tmp_path, max_steps=2, per_device_train_batch_size=4, eval_strategy="steps", eval_steps=2),
        train_dataset=world.alignment,
        eval_dataset=world.alignment.select(range(4)),
        processing_class=tiny_tokenizer,
        callbacks=[probe],  # unbound: log_history only
    )
    trainer.train()
    assert [step for step, _ in probe.results] == [2]
    assert any("attack_probe/harmful_score_after" in e for e in trainer.state.log_history)


def test_probes_refuse_to_run_where_they_would_be_wrong_or_hang(world):
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    probe = AttackProbeCallback(world.attack_harmful, world.attack_benign, world.eval_harmful, every_n_steps=1)
    state, control = TrainerState(global_step=1), TrainerControl()
    with pytest.warns(RuntimeWarning, match="single-process training only"):
        probe.on_step_end(SimpleNamespace(world_size=2, device="cpu"), state, control, model=None)
    assert probe.results == []
    gap = HarmfulLossGapCallback([{"text": "x"}], every_n_steps=1)
    with pytest.warns(RuntimeWarning, match="skipped under FSDP/DeepSpeed"):
        gap.on_step_end(SimpleNamespace(fsdp="full_shard", logging_steps=1), state, control, model=None)
    assert gap.history == []


def test_callback_arguments_are_checked(world):
    with pytest.raises(ValueError, match="`every_n_steps` must be a positive int or None, got 0"):
        AttackProbeCallback(world.attack_harmful, world.attack_benign, world.eval_harmful, every_n_steps=0)
    with pytest.raises(ValueError, match="never runs"):
        AttackProbeCallback(world.attack_harmful, world.attack_benign, world.eval_harmful, at_evaluate=False)
    with pytest.raises(TypeError, match="`attack_config` must be an AttackConfig, got dict"):
        AttackProbeCallback(world.attack_harmful, world.attack_benign, world.eval_harmful, attack_config={})
    with pytest.raises(ValueError, match="`step_size` must be > 0, got 0"):
        HarmfulLossGapCallback([{"text": "x"}], step_size=0)
    with pytest.raises(ValueError, match="row 0: needs `prompt` and `completion`, or `text`"):
        HarmfulLossGapCallback([{"foo": "x"}])._probe_batch(object())
    with pytest.raises(ValueError, match="`report`: no immunization report at"):
        ImmunizationCardCallback("/nonexistent/report.json")


# ---- ImmunizationCardCallback -------------------------------------------------------------------------------------


def _report():
    result = AttackResult(
        config={"n_samples": 8, "harmful_ratio": 0.1, "learning_rate": 1e-3, "max_steps": 2, "batch_size": 4},
        before={"harmful_score": 0.0},
        after={"harmful_score": 50.0},
        curve=[{"step": 0, "harmful_score": 0.0}, {"step": 2, "harmful_score": 50.0}],
    )
    return ImmunizationReport.from_results("sft", "m", [result])


def test_card_callback_writes_the_report_at_save_for_any_trainer(tiny_lm, tiny_tokenizer, world, tmp_path):
    callback = ImmunizationCardCallback(_report(), method="booster", base_model="org/base", datasets=["toy/safety"])
    trainer = SFTTrainer(
        model=tiny_lm,
        args=sft_config(tmp_path, max_steps=2, per_device_train_batch_size=4, save_strategy="steps", save_steps=2),
        train_dataset=world.alignment,
        processing_class=tiny_tokenizer,
        callbacks=[callback],
    )
    trainer.train()
    card = (tmp_path / "README.md").read_text()
    assert callback.written == [2] and "## Immunization report" in card and (tmp_path / PLOT_NAME).is_file()
    assert "base_model: org/base" in card and "- hf-immunize" in card and "- booster" in card and "- sft" in card

    (tmp_path / "README.md").unlink()
    callback.bind(trainer)  # now `push_to_hub`'s card call renders ours too
    trainer.create_model_card(model_name="pushed", dataset_name="toy/other")
    card = (tmp_path / "README.md").read_text()
    assert "model_name: pushed" in card and "## Immunization report" in card and "- toy/other" in card


def test_card_callback_bound_to_booster_attaches_the_report(tiny_lm, tiny_tokenizer, world, harmful, tmp_path):
    from hf_immunize import BoosterConfig, BoosterTrainer

    args = BoosterConfig(
        str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="steps",
        save_steps=1,
        disable_tqdm=True,
    )
    trainer = BoosterTrainer(
        model=tiny_lm,
        args=args,
        train_dataset=world.alignment,
        harmful_dataset=harmful,
        processing_class=tiny_tokenizer,
    )
    callback = ImmunizationCardCallback(_report()).bind(trainer)
    assert trainer.immunization_report is callback.report
    trainer.train()
    card = (tmp_path / "README.md").read_text()
    assert "arxiv.org/abs/2409.01586" in card and "## Immunization report" in card and callback.written == [1]
