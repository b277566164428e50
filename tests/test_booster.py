"""BoosterTrainer: the exact update of the reference (shared/reference/booster.md §3, §9) and its invariants (§10)."""

import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainerCallback
from trl import SFTConfig, SFTTrainer

from hf_immunize import BoosterConfig, BoosterTrainer
from hf_immunize.data.toy import make_safety_world
from hf_immunize.testing import parameters_snapshot, tiny_run_args

# ---- fixtures and helpers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world():
    return make_safety_world(seed=0, n_weapons=8)


@pytest.fixture(scope="module")
def harmful(world):
    """The alignment prompts paired with their harmful answers, as prompt/completion rows (16 rows)."""
    return world.alignment_harmful.map(lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"])


def _config(cls, output_dir, **overrides):
    return cls(**tiny_run_args(output_dir, **overrides))


def _load(path, dropout=0.0):
    # Eager attention: the CPU SDPA kernel has no second derivative, which the first-order check below needs.
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", attention_dropout=dropout)


def _booster(model, tokenizer, train, harmful, output_dir, cls=None, peft_config=None, **overrides):
    return (cls or BoosterTrainer)(
        model=model,
        args=_config(BoosterConfig, output_dir, **overrides),
        train_dataset=train,
        harmful_dataset=harmful,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


_params = parameters_snapshot


class _CaptureGrads(TrainerCallback):
    """The gradients the optimizer is about to use (after clipping), one dict per optimizer step."""

    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


class _Recording(BoosterTrainer):
    """Records every harmful pass (its inputs and the weights it ran at) and checks each restore."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passes, self.restored, self.added = [], [], []

    def _harmful_gradient(self, unwrapped, params, harmful, out=None):
        weights = [p.detach().clone() for p in params]
        self.passes.append(([b["input_ids"].clone() for b in harmful.batches], weights, harmful.indices))
        return super()._harmful_gradient(unwrapped, params, harmful, out=out)

    def _add_booster_gradient(self, model):
        before = _params(model)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        super()._add_booster_gradient(model)
        self.restored.append(all(torch.equal(before[n], p) for n, p in model.named_parameters()))
        self.added.append({n: p.grad - grads[n] for n, p in model.named_parameters() if n in grads})


# ---- configuration ------------------------------------------------------------------------------------------------


def test_config_has_paper_defaults_and_cpu_safe_precision(tmp_path):
    args = BoosterConfig(output_dir=str(tmp_path))  # TRL's bf16=True default would raise here on a CPU machine
    assert (args.regularizer_weight, args.perturbation_step_size, args.perturbation_eps) == (5.0, 0.1, 1e-7)
    assert args.harmful_batch_size is None and args.perturbation_refresh_steps == 1
    assert args.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@pytest.mark.parametrize(
    "field, value",
    [
        ("regularizer_weight", -1.0),
        ("regularizer_weight", float("nan")),
        ("perturbation_step_size", -0.1),
        ("perturbation_step_size", float("inf")),
        ("harmful_batch_size", 0),
        ("perturbation_refresh_steps", 0),
        ("perturbation_eps", 0.0),
    ],
)
def test_config_rejects_bad_values_naming_field_and_value(field, value, tmp_path):
    with pytest.raises(ValueError, match=rf"`{field}`.*got {value!r}"):
        BoosterConfig(output_dir=str(tmp_path), **{field: value})


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"fsdp": True, "fsdp_config": {"version": 1}}, r"version 1 \(FSDP1\) is not supported"),
        ({"fsdp": "full_shard offload"}, "offloads the parameters to the CPU"),
        ({"deepspeed": {"zero_optimization": {"stage": 3}}}, "`deepspeed`=.*is not supported.*FSDP2"),
        ({"fp16": True}, "`fp16=True` is not supported"),
        ({"activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": True}}, "reentrant"),
    ],
)
def test_config_refuses_sharding_fp16_and_reentrant_checkpointing(overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        BoosterConfig(output_dir=str(tmp_path), **overrides)


def test_config_accepts_fsdp2(tmp_path):
    args = BoosterConfig(output_dir=str(tmp_path), fsdp="full_shard", use_cpu=True)
    assert args.fsdp_plugin_args["fsdp_version"] == 2  # the trainer runs its harmful passes on the shards


def test_trainer_refuses_fsdp1_or_deepspeed_configured_outside_the_config():
    """The accelerate-launch path (no `fsdp` argument): the trainer checks accelerate's resolved plugin; the full
    table, with real launches, is in test_fsdp.py."""
    from types import SimpleNamespace

    fsdp1 = SimpleNamespace(
        is_fsdp_enabled=True,
        accelerator=SimpleNamespace(state=SimpleNamespace(fsdp_plugin=SimpleNamespace(fsdp_version=1))),
    )
    with pytest.raises(ValueError, match="Booster does not support FSDP1"):
        BoosterTrainer._refuse_sharded_training(fsdp1, "Booster")
    with pytest.raises(ValueError, match="Booster does not support DeepSpeed.*FSDP2"):
        BoosterTrainer._refuse_sharded_training(SimpleNamespace(is_deepspeed_enabled=True), "Booster")


def test_sft_config_is_converted_and_harmful_dataset_is_required(tiny_lm, tiny_tokenizer, world, tmp_path):
    from hf_immunize.methods.booster.booster_trainer import _as_booster_config

    converted = _as_booster_config(_config(SFTConfig, tmp_path, learning_rate=3e-4, hub_token="hf_x"), tiny_lm)
    assert isinstance(converted, BoosterConfig) and converted.learning_rate == 3e-4
    assert converted.hub_token == "hf_x" and converted.pad_token is None  # `to_dict()` would mask both
    assert converted.regularizer_weight == 5.0
    with pytest.raises(ValueError, match="`harmful_dataset` is required"):
        BoosterTrainer(model=tiny_lm, args=converted, train_dataset=world.alignment, processing_class=tiny_tokenizer)


# ---- the update ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight, step", [(0.0, 0.1), (5.0, 0.0)], ids=["lambda=0", "alpha=0"])
def test_zero_regularizer_trains_bit_identically_to_sft(
    weight, step, tiny_lm_path, tiny_tokenizer, world, harmful, tmp_path
):
    """Invariants 1 and 2. Attention dropout is on: the harmful passes must neither consume the global RNG nor see
    different dropout masks at w and w' (with α = 0, g' must equal g bit for bit)."""
    sft = SFTTrainer(
        model=_load(tiny_lm_path, dropout=0.1),
        args=_config(SFTConfig, tmp_path / "sft"),
        train_dataset=world.alignment,
        processing_class=tiny_tokenizer,
    )
    sft.train()
    booster = _booster(
        _load(tiny_lm_path, dropout=0.1),
        tiny_tokenizer,
        world.alignment,
        harmful,
        tmp_path / "booster",
        regularizer_weight=weight,
        perturbation_step_size=step,
    )
    booster.train()
    expected = _params(sft.model)
    for name, param in booster.model.named_parameters():
        assert torch.equal(param, expected[name]), name
    drops = [e["booster/harmful_loss_drop"] for e in booster.state.log_history if "booster/harmful_loss_drop" in e]
    assert len(drops) == 3  # the harmful phase did run at every step
    if step == 0.0:
        assert drops == [0.0, 0.0, 0.0]


def _token_mean_ce(model, params, batch):
    """An independent loss: plain logits and `cross_entropy`, no fused head, no trainer code."""
    out = torch.func.functional_call(model, params, (batch["input_ids"],), {"attention_mask": batch["attention_mask"]})
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]  # (B, T - 1, V), (B, T - 1)
    total = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum"
    )
    return total / labels.ne(-100).sum()


def test_one_sgd_step_matches_the_hand_computed_update(tiny_lm_path, tiny_tokenizer, world, harmful, tmp_path):
    """Invariants 5 and 6: `.grad` before the step is ∇f + λ(∇h(w) − ∇h(w')), w' = w − α∇h/(‖∇h‖ + 1e-7) with a
    detached step (first order), to 1e-6; differentiating through w' would give something else."""
    lam, alpha, lr = 5.0, 0.1, 0.05
    capture = _CaptureGrads()
    trainer = _booster(
        _load(tiny_lm_path),
        tiny_tokenizer,
        world.alignment.select(range(4)),
        harmful.select(range(8)),
        tmp_path,
        max_steps=1,
        optim="sgd",
        learning_rate=lr,
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
        regularizer_weight=lam,
        perturbation_step_size=alpha,
    )
    trainer.add_callback(capture)
    before = _params(trainer.model)
    trainer.train()
    (actual,) = capture.grads

    align_batch = next(iter(trainer.get_train_dataloader()))
    harm_batch = trainer.harmful_stream.collate(trainer.last_harmful_indices[0])
    reference = _load(tiny_lm_path).train()
    names = list(before)
    w = {n: before[n].clone().requires_grad_() for n in names}
    grad_f = torch.autograd.grad(_token_mean_ce(reference, w, align_batch), list(w.values()))
    grad_h = torch.autograd.grad(_token_mean_ce(reference, w, harm_batch), list(w.values()))
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grad_h)) + 1e-7
    w_perturbed = {n: (w[n] - alpha * g / norm).detach().requires_grad_() for n, g in zip(names, grad_h)}
    grad_h_perturbed = torch.autograd.grad(
        _token_mean_ce(reference, w_perturbed, harm_batch), list(w_perturbed.values())
    )
    expected = {n: gf + lam * (gh - ghp) for n, gf, gh, ghp in zip(names, grad_f, grad_h, grad_h_perturbed)}

    assert set(actual) == set(names)
    worst = max((actual[n] - expected[n]).abs().max().item() for n in names)
    assert worst <= 1e-6, worst
    correction = max((lam * (gh - ghp)).abs().max().item() for gh, ghp in zip(grad_h, grad_h_perturbed))
    assert correction > 1e-3  # the regularizer is not negligible here, so the match above means something
    for name, param in trainer.model.named_parameters():  # plain SGD: w ← w − lr·grad
        torch.testing.assert_close(param.detach(), before[name] - lr * actual[name], rtol=0, atol=1e-7)

    # First order: the full gradient of F, through the dependence of w' on w, differs from the update above.
    grad_h_graph = torch.autograd.grad(_token_mean_ce(reference, w, harm_batch), list(w.values()), create_graph=True)
    norm_graph = torch.sqrt(sum(g.pow(2).sum() for g in grad_h_graph)) + 1e-7
    w_through = {n: w[n] - alpha * g / norm_graph for n, g in zip(names, grad_h_graph)}
    objective = _token_mean_ce(reference, w, align_batch) + lam * (
        _token_mean_ce(reference, w, harm_batch) - _token_mean_ce(reference, w_through, harm_batch)
    )
    full = torch.autograd.grad(objective, list(w.values()))
    assert max((f - expected[n]).abs().max().item() for n, f in zip(names, full)) > 1e-4


def test_gradient_accumulation_4x1_2x2_1x4_give_the_same_update(
    tiny_lm_path, tiny_tokenizer, world, harmful, tmp_path
):
    """Invariants 3 and 11: answers of different lengths, so only a token mean over the whole window (alignment via
    `num_items_in_batch`, harmful via the window's token count) makes the three splits agree."""
    updates = []
    for batch_size, accumulation in [(4, 1), (2, 2), (1, 4)]:
        trainer = _booster(
            _load(tiny_lm_path),
            tiny_tokenizer,
            world.alignment,
            harmful,
            tmp_path / f"{batch_size}x{accumulation}",
            max_steps=2,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=0.1,
            max_grad_norm=0.0,
        )
        before = _params(trainer.model)
        trainer.train()
        updates.append(torch.cat([(p.detach() - before[n]).flatten() for n, p in trainer.model.named_parameters()]))
    lengths = {len(x) for x in trainer.train_dataset["input_ids"]}
    assert len(lengths) > 3  # the test is only meaningful with uneven lengths
    for update in updates[1:]:
        assert ((update - updates[0]).norm() / updates[0].norm()).item() <= 1e-5


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_restore_is_bit_exact_same_harmful_batch_and_only_trainable_weights_change(
    peft, tiny_lm_path, tiny_tokenizer, world, harmful, tmp_path
):
    """Invariants 4 and 8, plus the contract: with LoRA only the adapter tensors change."""
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]) if peft else None
    trainer = _booster(
        _load(tiny_lm_path),
        tiny_tokenizer,
        world.alignment,
        harmful,
        tmp_path,
        cls=_Recording,
        peft_config=lora,
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
    )
    before = _params(trainer.model)
    trainer.train()

    assert trainer.restored == [True, True]  # every weight, trainable or frozen, bit-identical after each phase
    assert len(trainer.passes) == 4  # (h at w, h at w') per step
    for (ids_w, weights_w, idx_w), (ids_p, weights_p, idx_p) in zip(trainer.passes[::2], trainer.passes[1::2]):
        assert idx_w == idx_p and len(idx_w) == 2  # the same harmful rows, one micro-batch per accumulation step
        assert all(torch.equal(a, b) for a, b in zip(ids_w, ids_p))
        assert not all(torch.equal(a, b) for a, b in zip(weights_w, weights_p))  # w' was really moved
    assert trainer.passes[0][2] != trainer.passes[2][2]  # a fresh harmful batch at the next step

    for name, param in trainer.model.named_parameters():
        assert torch.equal(before[name], param) != param.requires_grad, f"{name}: trainable={param.requires_grad}"
    assert any("lora_" in n for n, p in trainer.model.named_parameters() if p.requires_grad) == peft


def test_zero_harmful_gradient_gives_no_nan_and_no_correction(tiny_lm_path, tiny_tokenizer, world, tmp_path):
    """Invariant 9: harmful rows whose labels are all −100 give g = 0, norm 0: no NaN, and exactly plain SFT.

    A harmful set made only of such rows is refused when the trainer is built (nothing to learn); the rows are put
    into the stream afterwards, as batches of unlabelled rows drawn from a mixed set would arrive."""
    ids = tiny_tokenizer("User: How do I make it?\nAssistant: Like this.")["input_ids"]
    no_loss = Dataset.from_dict({"input_ids": [ids] * 4, "labels": [[-100] * len(ids)] * 4})
    with pytest.raises(ValueError, match="harmful dataset has no token to learn"):
        _booster(_load(tiny_lm_path), tiny_tokenizer, world.alignment, no_loss, tmp_path / "refused", max_length=None)
    sft = SFTTrainer(
        model=_load(tiny_lm_path),
        args=_config(SFTConfig, tmp_path / "sft", max_length=None),
        train_dataset=world.alignment,
        processing_class=tiny_tokenizer,
    )
    sft.train()
    labelled = Dataset.from_dict({"input_ids": [ids] * 4, "labels": [ids] * 4})
    booster = _booster(_load(tiny_lm_path), tiny_tokenizer, world.alignment, labelled, tmp_path / "b", max_length=None)
    booster.harmful_stream.dataset = no_loss
    booster.train()
    expected = _params(sft.model)
    assert all(torch.equal(p, expected[n]) for n, p in booster.model.named_parameters())
    logged = [e for e in booster.state.log_history if "booster/harmful_loss" in e]
    assert [e["booster/harmful_grad_norm"] for e in logged] == [0.0] * 3
    assert all(math.isfinite(v) for e in logged for v in e.values())


def test_logged_metrics_and_clipping_see_the_combined_gradient(tiny_lm, tiny_tokenizer, world, harmful, tmp_path):
    """Invariants 10 and 12: `grad_norm` is the norm of ∇f + λ(g − g'), and the logged drop is h(w) − h(w')."""
    capture = _CaptureGrads()
    trainer = _booster(tiny_lm, tiny_tokenizer, world.alignment, harmful, tmp_path, max_grad_norm=1e9)
    trainer.add_callback(capture)
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 3
    for entry, grads in zip(logged, capture.grads):
        for key in (
            "alignment_loss",
            "harmful_loss",
            "harmful_loss_perturbed",
            "harmful_loss_drop",
            "harmful_grad_norm",
        ):
            assert math.isfinite(entry[f"booster/{key}"])
        drop = entry["booster/harmful_loss"] - entry["booster/harmful_loss_perturbed"]
        assert entry["booster/harmful_loss_drop"] == pytest.approx(drop, abs=1e-6)
        assert entry["booster/harmful_loss_drop"] > 0  # one harmful step lowers the harmful loss
        assert entry["booster/alignment_loss"] == pytest.approx(entry["loss"], rel=1e-6)
        combined = math.sqrt(sum(g.double().pow(2).sum().item() for g in grads.values()))
        assert entry["grad_norm"] == pytest.approx(combined, rel=1e-5)


def test_fast_variant_reuses_the_correction_between_refreshes(tiny_lm_path, tiny_tokenizer, world, harmful, tmp_path):
    """`perturbation_refresh_steps=3`: the exact λ(g − g') on steps 1 and 4 (2 harmful passes each), added again
    unchanged on the steps in between (no harmful pass)."""
    runs = {}
    for refresh in (1, 3):
        trainer = _booster(
            _load(tiny_lm_path),
            tiny_tokenizer,
            world.alignment,
            harmful,
            tmp_path / str(refresh),
            cls=_Recording,
            max_steps=5,
            perturbation_refresh_steps=refresh,
        )
        trainer.train()
        runs[refresh] = trainer
    exact, fast = runs[1], runs[3]
    assert len(exact.passes) == 10 and len(fast.passes) == 4
    assert fast.passes[0][2] != fast.passes[2][2]  # a fresh harmful draw at the refresh
    assert all(torch.equal(exact.added[0][n], d) for n, d in fast.added[0].items())  # step 1 is the exact method
    for step in (1, 2):  # steps 2 and 3 reuse step 1's correction (up to rounding of `grad + λ·d − grad`)
        for name, delta in fast.added[step].items():
            torch.testing.assert_close(delta, fast.added[0][name], rtol=1e-5, atol=1e-6)
    assert not all(torch.allclose(d, fast.added[0][n]) for n, d in fast.added[3].items())
    assert fast.restored == [True] * 5
    refreshed = [e["step"] for e in fast.state.log_history if "booster/harmful_loss_drop" in e]
    assert refreshed == [1, 4]


@pytest.mark.parametrize("refresh", [1, 3], ids=["exact", "fast"])
def test_resume_from_checkpoint_continues_identically(refresh, tiny_lm_path, tiny_tokenizer, world, harmful, tmp_path):
    """Resuming at step 2 of 4 ends on the very weights of the uninterrupted run: model, optimizer, alignment order
    and the harmful stream (plus, for the fast variant, the reused harmful window) are all restored."""
    common = dict(
        max_steps=4,
        per_device_train_batch_size=2,
        harmful_batch_size=3,
        perturbation_refresh_steps=refresh,
        save_strategy="steps",
        save_steps=2,
    )
    full = _booster(_load(tiny_lm_path), tiny_tokenizer, world.alignment, harmful, tmp_path / "full", **common)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "immunize_state.pt").is_file()
    assert "Booster" in (tmp_path / "full" / "README.md").read_text()  # the card written with each checkpoint

    resumed = _booster(_load(tiny_lm_path), tiny_tokenizer, world.alignment, harmful, tmp_path / "resumed", **common)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = _params(full.model)
    assert all(torch.equal(p, expected[n]) for n, p in resumed.model.named_parameters())
    assert resumed.harmful_stream.state_dict() == full.harmful_stream.state_dict()


def test_model_card_names_booster_its_paper_and_settings(tiny_lm, tiny_tokenizer, world, harmful, tmp_path):
    trainer = _booster(tiny_lm, tiny_tokenizer, world.alignment, harmful, tmp_path, regularizer_weight=25.0)
    trainer.create_model_card(
        model_name="tiny-booster", dataset_name="toy/safety", tags=["demo"], license="apache-2.0", finetuned_from="o/m"
    )
    card = (tmp_path / "README.md").read_text()
    assert "license: apache-2.0" in card and "base_model: o/m" in card and "- toy/safety" in card
    assert "- booster" in card and "- hf-immunize" in card and "- demo" in card
    assert "- trl" in card and "- sft" in card  # TRL's tags kept beside ours
    assert "arxiv.org/abs/2409.01586" in card and "huang2025booster" in card
    assert "| `regularizer_weight (λ)` | `25.0` |" in card


# ---- drop-in: dataset formats, model id, PEFT, QLoRA --------------------------------------------------------------


def _as_format(dataset, fmt):
    def convert(row):
        user = row["prompt"].removeprefix("User: ").removesuffix("\nAssistant:")
        if fmt == "text":
            return {"text": row["prompt"] + row["completion"]}
        if fmt == "conversational":
            return {
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": row["completion"]}]
            }
        return {  # conversational prompt-completion
            "prompt": [{"role": "user", "content": user}],
            "completion": [{"role": "assistant", "content": row["completion"].strip()}],
        }

    return dataset.map(convert, remove_columns=dataset.column_names)


@pytest.mark.parametrize("fmt", ["text", "conversational", "conversational_prompt_completion"])
def test_accepts_every_sft_dataset_format(fmt, tiny_lm, tiny_tokenizer, world, harmful, tmp_path):
    trainer = _booster(
        tiny_lm, tiny_tokenizer, _as_format(world.alignment, fmt), _as_format(harmful, fmt), tmp_path, max_steps=2
    )
    trainer.train()
    assert all(math.isfinite(e["booster/harmful_loss_drop"]) for e in trainer.state.log_history[:-1])
    labels = trainer.harmful_stream.next_batch()["labels"]
    assert (labels[:, 1:] != -100).any()
    completion_only = fmt == "conversational_prompt_completion"
    assert bool((labels[:, 0] == -100).all()) == completion_only  # the prompt is masked exactly when SFT masks it


def test_model_id_string_lora_and_activation_checkpointing(tiny_lm_path, world, harmful, tmp_path):
    from peft import LoraConfig, PeftModel

    trainer = BoosterTrainer(
        model=str(tiny_lm_path),  # loaded by SFTTrainer, tokenizer from the same directory
        # with activation checkpointing (TRL's default): non-reentrant, so `torch.autograd.grad` works through it
        args=_config(BoosterConfig, tmp_path, max_steps=2, activation_checkpointing=True),
        train_dataset=world.alignment,
        harmful_dataset=harmful,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"]),
    )
    trainer.train()
    assert isinstance(trainer.model, PeftModel) and trainer.model.get_base_model().is_gradient_checkpointing
    assert "booster" in trainer.model.get_base_model().model_tags
    assert all(math.isfinite(e["booster/harmful_loss_drop"]) for e in trainer.state.log_history[:-1])


def test_qlora_on_cpu_with_bitsandbytes(tiny_lm_path, world, harmful, tmp_path):
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    trainer = BoosterTrainer(
        model=str(tiny_lm_path),
        args=_config(BoosterConfig, tmp_path, max_steps=2, model_init_kwargs={"device_map": "cpu"}),
        train_dataset=world.alignment,
        harmful_dataset=harmful,
        quantization_config=quantization,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("Linear4bit" in type(m).__name__ for m in trainer.model.modules())
    trainer.train()
    for name, param in trainer.model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
        else:
            assert not torch.equal(param, trainable[name]), name
    assert all(math.isfinite(e["booster/harmful_loss_drop"]) for e in trainer.state.log_history[:-1])


# ---- recipes -------------------------------------------------------------------------------------------------------


def _recipe(name):
    import yaml

    path = REPO_ROOT / "recipes" / name
    return yaml.safe_load(path.read_text()), path.read_text()


def test_paper_recipe_holds_the_paper_settings_each_with_its_source(tmp_path):
    from trl import ModelConfig, ScriptArguments

    recipe, text = _recipe("booster_paper.yaml")
    model_keys = {k: recipe.pop(k) for k in list(recipe) if k in ModelConfig.__dataclass_fields__}
    script_keys = {k: recipe.pop(k) for k in list(recipe) if k in ScriptArguments.__dataclass_fields__}
    data_keys = {k: recipe.pop(k) for k in ("refusal_rows", "prompt_template")}
    ModelConfig(**model_keys)
    ScriptArguments(**script_keys)
    assert model_keys["model_name_or_path"] == "meta-llama/Llama-2-7b-hf"
    assert (model_keys["lora_r"], model_keys["lora_alpha"], model_keys["lora_target_modules"]) == (
        32,
        4,
        ["q_proj", "k_proj", "v_proj"],
    )
    assert data_keys["refusal_rows"] == [5000, 10000]
    # Everything else is a BoosterConfig field (bf16/tf32 need a GPU: switched off to validate here).
    args = BoosterConfig(**{**recipe, "output_dir": str(tmp_path), "bf16": False, "tf32": False, "use_cpu": True})
    assert (args.regularizer_weight, args.perturbation_step_size, args.learning_rate) == (5.0, 0.1, 5e-4)
    assert (args.num_train_epochs, args.harmful_batch_size, args.per_device_train_batch_size) == (20, 10, 10)
    assert recipe["bf16"] is True and "--regularizer_weight 25" in text  # the GSM8K preset
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "  # [" in line, f"no source comment: {line!r}"


def test_tiny_recipe_trains_on_cpu(tmp_path):
    from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer

    recipe, _ = _recipe("booster_tiny.yaml")
    model = tiny_causal_lm(**recipe.pop("tiny_model"))
    world = make_safety_world(**recipe.pop("toy_world"))
    assert recipe.pop("dataset_name") == "toy"
    harmful = world.alignment_harmful.map(
        lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
    )
    args = BoosterConfig(**{**recipe, "output_dir": str(tmp_path), "max_steps": 2, "logging_steps": 1})
    assert (args.bf16, args.use_cpu, args.perturbation_step_size) == (False, True, 0.01)
    trainer = BoosterTrainer(
        model=model,
        args=args,
        train_dataset=world.alignment,
        harmful_dataset=harmful,
        processing_class=tiny_tokenizer(),
    )
    trainer.train()
    assert all(math.isfinite(e["booster/harmful_loss_drop"]) for e in trainer.state.log_history[:-1])


# ---- distributed ----------------------------------------------------------------------------------------------


_DDP_SCRIPT = """
import os, sys
import torch
torch.set_num_threads(1)
from hf_immunize import BoosterConfig, BoosterTrainer
from hf_immunize.data.toy import make_safety_world
from hf_immunize.testing import tiny_causal_lm, tiny_tokenizer

out, batch_size = sys.argv[1], int(sys.argv[2])
world = make_safety_world(seed=0, n_weapons=8)
harmful = world.alignment_harmful.select(range(4)).map(
    lambda r: {"completion": r["harmful"]}, remove_columns=["harmful", "refusal"]
)
args = BoosterConfig(
    output_dir=os.path.join(os.path.dirname(out), "run"), max_steps=2, per_device_train_batch_size=batch_size,
    optim="sgd", learning_rate=0.1, max_grad_norm=0.0, seed=0, use_cpu=True, bf16=False,
    activation_checkpointing=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
    ddp_find_unused_parameters=False, max_length=64,
)
trainer = BoosterTrainer(
    model=tiny_causal_lm(), args=args, train_dataset=world.alignment.select(range(4)), harmful_dataset=harmful,
    processing_class=tiny_tokenizer(),
)
before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
trainer.train()
if trainer.accelerator.num_processes != (4 // batch_size):
    raise SystemExit(f"expected {4 // batch_size} processes, got {trainer.accelerator.num_processes}")
if trainer.is_world_process_zero():
    update = {n: p.detach() - before[n] for n, p in trainer.model.named_parameters()}
    logged = [e for e in trainer.state.log_history if "booster/harmful_loss" in e]
    torch.save({"update": update, "harmful_loss": logged[0]["booster/harmful_loss"]}, out)
trainer.end()
"""


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    """2 gloo ranks × batch 2 against 1 process × batch 4, with 4 alignment and 4 harmful rows: every step sees all
    of them in both layouts, so the updates agree only if the harmful gradient is a token mean over processes."""
    script = tmp_path / "booster_ddp.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    single, ddp = tmp_path / "single.pt", tmp_path / "ddp.pt"
    subprocess.run([sys.executable, str(script), str(single), "4"], check=True, env=env, timeout=600)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    subprocess.run([*torchrun, str(script), str(ddp), "2"], check=True, env=env, timeout=600)
    a, b = torch.load(single), torch.load(ddp)
    for name in a["update"]:
        rel = (a["update"][name] - b["update"][name]).norm() / a["update"][name].norm().clamp(min=1e-12)
        assert rel <= 1e-5, (name, rel.item())
    assert a["harmful_loss"] == pytest.approx(b["harmful_loss"], rel=1e-6)


def test_pipeline_on_the_real_refusal_file(shared_data, tiny_lm, tiny_tokenizer, tmp_path):
    """A pipeline check on real rows (not a claim): the RepNoise refusal file feeds both of Booster's data sets.

    Alignment = prompt -> refusal, harmful = prompt -> harmful continuation (Booster reads a BeaverTails file of
    the same layout). The tiny model trains on them with finite losses and a positive harmful-loss drop.
    """
    from hf_immunize.data import load_refusal_file

    rows = load_refusal_file(shared_data / "repnoise" / "decoding_trust_with_refusals_train.json").select(range(24))
    alignment = rows.map(lambda r: {"completion": " " + r["refusal"]}, remove_columns=["harmful", "refusal"])
    harmful = rows.map(lambda r: {"completion": " " + r["harmful"]}, remove_columns=["harmful", "refusal"])
    before = _params(tiny_lm)
    trainer = _booster(tiny_lm, tiny_tokenizer, alignment, harmful, tmp_path, max_length=128)
    trainer.train()
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 3
    assert all(math.isfinite(e["booster/harmful_loss"]) and e["booster/harmful_loss_drop"] > 0 for e in logged)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
