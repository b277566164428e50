"""Numerical guards shared by every hf_immunize trainer: a non-finite gradient skips the optimizer step (weights and
optimizer state untouched, a logged count and a warning) instead of writing NaN into the weights."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

from hf_immunize.data.toy import BiosWorld, make_bios_world, make_safety_world


class _PoisonStep(TrainerCallback):
    """Makes the forward pass produce NaN during optimizer step `step` (0-based) and records the weights around it."""

    def __init__(self, model, step: int):
        self.step, self.on, self.snapshots = step, False, {}
        model.get_input_embeddings().register_forward_hook(lambda m, i, o: o * float("nan") if self.on else o)
        self.model = model

    def _weights(self):
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def on_step_begin(self, args, state, control, **kwargs):
        self.on = state.global_step == self.step
        if self.on:
            self.snapshots["before"] = self._weights()

    def on_step_end(self, args, state, control, **kwargs):
        if self.on:
            self.snapshots["after"] = self._weights()
        self.on = False


def _booster(model, out):
    from hf_immunize import BoosterConfig, BoosterTrainer
    from hf_immunize.testing import tiny_tokenizer

    world = make_safety_world(seed=0, n_weapons=8)
    harmful = world.alignment_harmful.map(
        lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
    )
    args = BoosterConfig(
        output_dir=str(out),
        max_steps=3,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        learning_rate=1e-2,
        max_length=64,
    )
    return BoosterTrainer(
        model=model,
        args=args,
        train_dataset=world.alignment.select(range(16)),
        harmful_dataset=harmful,
        processing_class=tiny_tokenizer(),
    )


def _mlac(model, out):
    from hf_immunize import MLACConfig, MLACTrainer
    from hf_immunize.testing import tiny_tokenizer

    bios = make_bios_world(seed=0, n=120)
    args = MLACConfig(
        output_dir=str(out),
        max_steps=3,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        inner_steps=1,
        learning_rate=1e-2,
    )
    desired = BiosWorld.with_label(bios.train, "profession").map(lambda r: {"label": r["label"] % 4})
    return MLACTrainer(
        model=model,
        args=args,
        train_dataset=desired.select_columns(["text", "label"]),
        harmful_dataset=BiosWorld.with_label(bios.train, "gender").select_columns(["text", "label"]),
        processing_class=tiny_tokenizer(),
    )


@pytest.mark.parametrize("method", ["booster", "mlac"])
def test_nan_loss_skips_the_step_and_never_writes_nan_weights(method, tiny_lm_path, tiny_classifier_path, tmp_path):
    if method == "booster":
        model, build = AutoModelForCausalLM.from_pretrained(tiny_lm_path), _booster
    else:
        model, build = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_path), _mlac
    poison = _PoisonStep(model, step=1)
    trainer = build(model, tmp_path)
    trainer.add_callback(poison)
    trainer.train()
    before, after = poison.snapshots["before"], poison.snapshots["after"]
    assert all(torch.equal(before[n], after[n]) for n in before), "the poisoned step changed weights"
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    moved = [not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert any(moved), "the steps after the skipped one must still train"
    skipped = [e["nonfinite_steps_skipped"] for e in trainer.state.log_history if "nonfinite_steps_skipped" in e]
    assert skipped == [1.0]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert math.isfinite(losses[0]) and math.isfinite(losses[-1])
