"""UnlearnTrainer: config checks, every unlearning loss (full and LoRA), exact gradient accumulation, resume, the WHP
pipeline end to end, and the unlearning evaluation."""

import copy
import math
import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, TrainerCallback

from hf_immunize import UnlearnConfig, UnlearnTrainer
from hf_immunize.core.trainer_mixin import check_trainer_declarations
from hf_immunize.data.toy import make_book_world
from hf_immunize.evaluation.unlearning import (
    evaluate_unlearning,
    grade_familiarity,
    lm_eval_tasks,
    probability_familiarity,
)
from hf_immunize.methods.unlearn import build_generic_labels, run_whp_pipeline
from hf_immunize.testing import parameters_snapshot, tiny_run_args
from hf_immunize.utils import sft_config


@pytest.fixture(scope="module")
def world():
    return make_book_world(seed=0, n_passages=40)


@pytest.fixture(scope="module")
def labelled(world, tiny_tokenizer, tiny_lm_path):
    """Generic labels of the toy book, with B a tiny model and R a perturbed copy (uneven label counts per block)."""
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    other = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return build_generic_labels(
        other, tiny_tokenizer, world.forget["text"], world.anchored_terms, baseline=base, block_size=32
    )


def _config(output_dir, **overrides):
    return UnlearnConfig(**tiny_run_args(output_dir, **{"block_size": 32, **overrides}))


def _trainer(model, tokenizer, world, labelled, output_dir, peft_config=None, **overrides):
    args = _config(output_dir, **overrides)
    train = labelled if args.unlearning_loss == "whp" else world.forget
    return UnlearnTrainer(
        model=model,
        args=args,
        train_dataset=train,
        retain_dataset=world.retain if args.needs_retain else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


_params = parameters_snapshot


# ---- configuration ------------------------------------------------------------------------------------------------


def test_config_defaults_and_cpu_safe_precision(tmp_path):
    args = UnlearnConfig(output_dir=str(tmp_path))
    assert (args.unlearning_loss, args.loss_type, args.whp_alpha, args.block_size) == ("whp", "nll", 5.0, 512)
    assert args.whp_extra_alphas == [2.5, 10.0]
    assert (args.npo_beta, args.forget_weight, args.retain_weight, args.forbid_value) == (0.1, 1.0, 1.0, "mean")
    assert args.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert not args.needs_retain and UnlearnConfig(output_dir=str(tmp_path), unlearning_loss="npo").needs_retain


@pytest.mark.parametrize(
    "field, value",
    [
        ("unlearning_loss", "gradient_ascent"),
        ("whp_alpha", 0.0),
        ("whp_alpha", -5.0),
        ("whp_alpha", float("nan")),
        ("whp_extra_alphas", [2.5, -1.0]),
        ("block_size", 1),
        ("forbid_value", "zero"),
        ("npo_beta", 0.0),
        ("npo_beta", -0.1),
        ("forget_weight", float("inf")),
        ("retain_weight", -1.0),
        ("retain_batch_size", 0),
        ("label_smoothing_factor", 0.1),
    ],
)
def test_config_rejects_bad_values_naming_field_and_value(field, value, tmp_path):
    with pytest.raises(ValueError, match=rf"`{field}`.*{re.escape(str(value)[:4])}"):
        UnlearnConfig(output_dir=str(tmp_path), **{field: value})


def test_npo_refuses_packed_batches(tmp_path):
    with pytest.raises(ValueError, match="unlearning_loss='npo'.*packing=True"):
        UnlearnConfig(output_dir=str(tmp_path), unlearning_loss="npo", packing=True)


def test_trl_loss_type_keeps_its_meaning_and_our_loss_has_its_own_field(tiny_lm, tiny_tokenizer, labelled, tmp_path):
    """`loss_type` is SFTConfig's ("nll" | "dft"): whp trains with SFT's own loss, so DFT applies to it; the losses
    that replace SFT's refuse it; an unlearning loss put in `loss_type` is pointed at `unlearning_loss`."""
    with pytest.raises(ValueError, match=r"`loss_type` is TRL's SFT loss.*set unlearning_loss='npo'"):
        UnlearnConfig(output_dir=str(tmp_path), loss_type="npo")
    with pytest.raises(ValueError, match=r"`loss_type`='dft'.*unlearning_loss='grad_diff'.*loss_type='nll'"):
        UnlearnConfig(output_dir=str(tmp_path), unlearning_loss="grad_diff", loss_type="dft")
    losses = {}
    for loss_type in ("nll", "dft"):
        model = copy.deepcopy(tiny_lm)
        args = _config(tmp_path / loss_type, loss_type=loss_type, max_steps=1)
        trainer = UnlearnTrainer(model=model, args=args, train_dataset=labelled, processing_class=tiny_tokenizer)
        trainer.train()
        losses[loss_type] = trainer.state.log_history[0]["loss"]
        assert trainer._card_hyperparameters().get("loss_type") == (None if loss_type == "nll" else "dft")
    # DFT weights each token's NLL by its (detached) probability: far below the NLL of a random model.
    assert 0 < losses["dft"] < 0.1 * losses["nll"]


def test_trainer_checks_its_datasets_before_any_compute(tiny_lm, tiny_tokenizer, world, tmp_path):
    with pytest.raises(ValueError, match="`retain_dataset` is required by unlearning_loss='grad_diff'"):
        UnlearnTrainer(model=tiny_lm, args=_config(tmp_path, unlearning_loss="grad_diff"), train_dataset=world.forget)
    with pytest.raises(ValueError, match="unlearning_loss='whp'.*no retain term"):
        UnlearnTrainer(model=tiny_lm, args=_config(tmp_path), train_dataset=world.forget, retain_dataset=world.retain)
    with pytest.raises(ValueError, match="generic labels.*build_generic_labels"):
        UnlearnTrainer(model=tiny_lm, args=_config(tmp_path), train_dataset=world.forget)


def test_card_trio_and_limitations_are_declared(tiny_lm, tiny_tokenizer, world, labelled, tmp_path):
    check_trainer_declarations(UnlearnTrainer)
    assert UnlearnTrainer._paper["id"] == "2310.02238" and UnlearnTrainer.loss_is_scaled_for_ga is True
    trainer = _trainer(tiny_lm, tiny_tokenizer, world, labelled, tmp_path, unlearning_loss="npo", npo_beta=0.5)
    assert trainer._card_hyperparameters()["npo_beta (β)"] == 0.5
    trainer.create_model_card(model_name="tiny-unlearn")
    card = (tmp_path / "README.md").read_text()
    assert "2310.02238" in card and "- unlearning" in card
    assert "- trl" in card and "- sft" in card  # TRL's tags kept beside ours
    assert "MUSE" in card and "Lynch" in card  # the limitations section of the unlearn card template


# ---- every loss trains ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("loss_type", ["whp", "grad_ascent", "grad_diff", "npo"])
def test_each_loss_trains_and_changes_only_trainable_params(
    loss_type, peft, tiny_lm_path, tiny_tokenizer, world, labelled, tmp_path
):
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if peft else None
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    trainer = _trainer(model, tiny_tokenizer, world, labelled, tmp_path, peft_config=lora, unlearning_loss=loss_type)
    before = _params(trainer.model)
    trainer.train()
    changed = {n: not torch.equal(before[n], p) for n, p in trainer.model.named_parameters()}
    for n, p in trainer.model.named_parameters():
        assert changed[n] == p.requires_grad, f"{n}: trainable={p.requires_grad}"
    logs = trainer.state.log_history[:-1]
    assert len(logs) == 3 and all(math.isfinite(e["loss"]) for e in logs)
    if loss_type != "whp":
        assert all("unlearn/forget_nll" in e for e in logs)
    if loss_type == "grad_ascent":
        assert logs[0]["loss"] == pytest.approx(-logs[0]["unlearn/forget_nll"], rel=1e-5)
    if loss_type == "npo":
        assert logs[0]["unlearn/npo_log_ratio"] == pytest.approx(0.0, abs=1e-4)  # π_θ = π_ref at the start
        assert (trainer.ref_model is None) == peft  # LoRA: the adapter switched off serves as π_ref
        if not peft:
            assert all(torch.equal(p, before[n]) for n, p in trainer.ref_model.named_parameters())


def test_whp_loss_is_token_ce_on_the_generic_labels(tiny_lm, tiny_tokenizer, world, labelled, tmp_path):
    """Invariant 6 through TRL's fused head: the trainer's loss equals the model's own causal CE on the labels."""
    trainer = _trainer(tiny_lm, tiny_tokenizer, world, labelled, tmp_path)
    batch = trainer.data_collator([labelled[i] for i in range(4)])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, dict(batch))
        reference = trainer.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss_type", ["whp", "npo"])
def test_qlora_model_id_string_on_cpu(loss_type, tiny_lm_path, tiny_tokenizer, world, labelled, tmp_path):
    """A model id string with a 4-bit config and LoRA: NPO's π_ref is the quantized base with the adapter off."""
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    args = _config(tmp_path, unlearning_loss=loss_type, max_steps=2, model_init_kwargs={"device_map": "cpu"})
    trainer = UnlearnTrainer(
        model=str(tiny_lm_path),
        args=args,
        train_dataset=labelled if loss_type == "whp" else world.forget,
        retain_dataset=world.retain if args.needs_retain else None,
        processing_class=tiny_tokenizer,
        quantization_config=quantization,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    assert any("Linear4bit" in type(m).__name__ for m in trainer.model.modules()) and trainer.ref_model is None
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainer.train()
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if n in frozen)
    assert all(math.isfinite(e["loss"]) for e in trainer.state.log_history[:-1])


# ---- exact under gradient accumulation -----------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["whp", "grad_diff", "npo"])
def test_gradient_accumulation_4x1_2x2_1x4_give_the_same_update(
    loss_type, tiny_lm_path, tiny_tokenizer, world, labelled, tmp_path
):
    updates = []
    for batch_size, accumulation in [(4, 1), (2, 2), (1, 4)]:
        trainer = _trainer(
            AutoModelForCausalLM.from_pretrained(tiny_lm_path),
            tiny_tokenizer,
            world,
            labelled,
            tmp_path / f"{batch_size}x{accumulation}",
            unlearning_loss=loss_type,
            max_steps=2,
            per_device_train_batch_size=batch_size,
            retain_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            optim="sgd",
            learning_rate=0.1,
            max_grad_norm=0.0,
        )
        before = _params(trainer.model)
        trainer.train()
        updates.append(torch.cat([(p.detach() - before[n]).flatten() for n, p in trainer.model.named_parameters()]))
    if loss_type == "whp":  # meaningful only with uneven label counts per row
        assert len({sum(x != -100 for x in row) for row in trainer.train_dataset["labels"]}) > 3
    else:
        assert len({len(x) for x in trainer.train_dataset["input_ids"]}) > 3
    for update in updates[1:]:
        assert ((update - updates[0]).norm() / updates[0].norm()).item() <= 1e-5


# ---- resume --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", ["whp", "grad_diff"])
def test_resume_from_checkpoint_continues_identically(
    loss_type, tiny_lm_path, tiny_tokenizer, world, labelled, tmp_path
):
    common = dict(
        unlearning_loss=loss_type,
        max_steps=4,
        per_device_train_batch_size=2,
        retain_batch_size=3,
        save_strategy="steps",
        save_steps=2,
    )
    full = _trainer(
        AutoModelForCausalLM.from_pretrained(tiny_lm_path),
        tiny_tokenizer,
        world,
        labelled,
        tmp_path / "full",
        **common,
    )
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "immunize_state.pt").is_file() == (loss_type == "grad_diff")
    resumed = _trainer(
        AutoModelForCausalLM.from_pretrained(tiny_lm_path),
        tiny_tokenizer,
        world,
        labelled,
        tmp_path / "resumed",
        **common,
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    expected = _params(full.model)
    assert all(torch.equal(p, expected[n]) for n, p in resumed.model.named_parameters())
    if loss_type == "grad_diff":
        assert resumed.retain_stream.state_dict() == full.retain_stream.state_dict()


# ---- the pipeline --------------------------------------------------------------------------------------------------


class _Steps(TrainerCallback):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


@pytest.mark.parametrize("lora_reinforce", [True, False], ids=["adapter", "full_copy"])
def test_pipeline_reinforce_labels_train_saves_the_base_architecture(
    lora_reinforce, tiny_lm_path, tiny_tokenizer, world, tmp_path
):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    names = [n for n, _ in model.named_parameters()]
    args = _config(tmp_path / "out", max_steps=2)
    steps = _Steps()
    trainer, labelled = run_whp_pipeline(
        model,
        tiny_tokenizer,
        world.forget["text"][:20],
        world.anchored_terms,
        args,
        reinforce_args=sft_config(tmp_path / "reinforce", max_steps=2, learning_rate=1e-3, max_length=64),
        use_lora_reinforce=lora_reinforce,
        callbacks=[steps],
    )
    assert steps.steps == 2 and set(labelled.column_names) == {
        "input_ids",
        "labels",
        "labels_alpha_2.5",
        "labels_alpha_5",
        "labels_alpha_10",
    }
    assert [n for n, _ in trainer.model.named_parameters()] == names  # no adapter left on B
    assert all(p.requires_grad for p in trainer.model.parameters())
    trainer.save_model(str(tmp_path / "saved"))
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert type(saved) is type(model) and [n for n, _ in saved.named_parameters()] == names
    assert not (tmp_path / "saved" / "adapter_config.json").exists()


# ---- evaluation ----------------------------------------------------------------------------------------------------


def test_keyword_grader_scale_and_weights():
    prompts = ["Dorothy went to", "Dorothy went to", "Zeb saw", "Zeb saw"]
    completions = [" the Emerald City.", " a wizard.", " Zeb again.", " nothing."]
    result = grade_familiarity(prompts, completions, ["Emerald City", "Dorothy", "Zeb"], ["wizard"])
    assert result["classes"] == [3, 2, 0, 0]
    assert result["score"] == pytest.approx((5 * 1 + 1) / 4) and result["class3_rate"] == 0.25
    with pytest.raises(ValueError, match="pair up"):
        grade_familiarity(prompts, completions[:2], ["Zeb"])


def test_probability_familiarity_counts_every_surface_variant(tiny_lm, tiny_tokenizer):
    from hf_immunize.core.tokens import surface_forms

    prompt = "Tom lived in"
    ids = tiny_tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = torch.softmax(tiny_lm(input_ids=ids).logits[0, -1], -1)
    first = {f[0] for f in surface_forms(tiny_tokenizer, "Emma").values()}
    assert len(first) == 2  # "E..." and "ĠEmma": bare and space-led differ under byte-level BPE
    result = probability_familiarity(tiny_lm, tiny_tokenizer, [prompt], [["Emma"]])
    assert result["score"] == pytest.approx(float(probs[sorted(first)].sum()), rel=1e-5)


def test_evaluate_unlearning_reports_every_metric_and_lm_eval_skips_cleanly(tiny_lm, tiny_tokenizer, world):
    prompts = world.familiarity_prompts
    out = evaluate_unlearning(
        tiny_lm,
        tiny_tokenizer,
        prompts=prompts["prompt"][:4],
        targets=prompts["targets"][:4],
        anchored_terms=list(world.anchored_terms),
        theme_terms=world.theme_terms,
        forget_texts=world.forget_heldout["text"],
        retain_texts=world.retain["text"][:4],
        max_new_tokens=4,
    )
    assert {"familiarity", "class3_rate", "prob_familiarity", "forget_ppl", "retain_ppl"} <= set(out)
    assert out["grader"] == "keyword" and 0 <= out["prob_familiarity"] <= 1 and out["forget_ppl"] > 1
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="lm-eval is not installed"):
            assert lm_eval_tasks(tiny_lm, tiny_tokenizer, ["arc_easy"]) is None


# ---- command and recipes -------------------------------------------------------------------------------------------

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_unlearn_command_runs_the_tiny_recipe_end_to_end(tmp_path):
    from hf_immunize.cli import COMMANDS
    from hf_immunize.commands import unlearn as command

    assert COMMANDS["unlearn"][0] == "hf_immunize.commands.unlearn"
    out = tmp_path / "run"
    argv = ["--config", str(RECIPES / "unlearn_tiny.yaml"), "--output_dir", str(out), "--max_steps", "2"]
    argv += ["--reinforce_max_steps", "2", "--toy_world", '{"seed": 0, "n_passages": 20}', "--disable_tqdm", "true"]
    command.main([*argv, "--labels_output", str(tmp_path / "labels")])
    saved = AutoModelForCausalLM.from_pretrained(out)
    assert saved.config.model_type == "llama" and not (out / "adapter_config.json").exists()
    from datasets import load_from_disk

    assert {"input_ids", "labels", "labels_alpha_5"} <= set(load_from_disk(tmp_path / "labels").column_names)
    card = (out / "README.md").read_text()
    assert "2310.02238" in card and "anchored-term dictionary of" in card
    forget = tmp_path / "forget.txt"
    forget.write_text("Some forget text.")
    argv = ["--config", str(RECIPES / "unlearn_tiny.yaml"), "--output_dir", str(tmp_path / "x")]
    with pytest.raises(ValueError, match="needs `anchored_terms`"):  # a real corpus brings no dictionary
        command.main([*argv, "--dataset_name", str(forget)])
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_unlearn_recipes_parse_and_every_paper_value_names_its_source(tmp_path):
    import yaml

    from hf_immunize.commands import unlearn as command
    from hf_immunize.commands.common import parse_args

    for name in ("unlearn_tiny.yaml", "unlearn_paper.yaml"):
        argv = ["--config", str(RECIPES / name), "--output_dir", str(tmp_path), "--bf16", "false", "--use_cpu", "true"]
        script_args, args, model_args = parse_args(command.make_parser(), argv)
        assert args.unlearning_loss == "whp" and args.whp_alpha == 5.0 and args.forbid_value == "mean"
    text = (RECIPES / "unlearn_paper.yaml").read_text()
    raw = yaml.safe_load(text)
    assert model_args.model_name_or_path == "meta-llama/Llama-2-7b-chat-hf" and args.block_size == 512
    assert (args.learning_rate, args.adam_beta2, args.whp_extra_alphas) == (1e-6, 0.98, [2.5, 10.0])
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(lines) == len(raw)
    assert all(any(tag in line for tag in ("[code]", "[paper]", "[~]", "[ours]")) for line in lines)


# ---- two processes (slow) ------------------------------------------------------------------------------------------

_RANK_WEIGHTS = """
import os, sys
from hf_immunize.utils import set_offline_env
set_offline_env()
import torch
torch.set_num_threads(1)
from hf_immunize.commands import unlearn as module
finish = module.finish_run


def finish_and_save_rank(trainer, script_args, training_args, name):
    finish(trainer, script_args, training_args, name)
    weights = {n: p.detach().cpu() for n, p in trainer.model.named_parameters()}
    path = os.path.join(sys.argv[1], f"rank{training_args.process_index}.pt")
    torch.save({"world_size": training_args.world_size, "weights": weights}, path)


module.finish_run = finish_and_save_rank
module.main(sys.argv[2:])
"""


def _run_command(tmp_path, name, processes, *argv):
    import os
    import subprocess
    import sys

    script = tmp_path / "rank_weights.py"
    script.write_text(_RANK_WEIGHTS)
    out = tmp_path / name
    out.mkdir()
    launch = [sys.executable]
    if processes > 1:
        launch += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        launch += ["--main_process_port", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(RECIPES.parent), "ACCELERATE_USE_CPU": "true"}
    common = ["--config", str(RECIPES / "unlearn_tiny.yaml"), "--output_dir", str(out / "run"), "--max_steps", "3"]
    common += ["--reinforce_max_steps", "2", "--toy_world", '{"seed": 0, "n_passages": 30}', "--disable_tqdm", "true"]
    common += ["--ddp_find_unused_parameters", "false"]
    subprocess.run([*launch, str(script), str(out), *common, *argv], check=True, env=env, timeout=900)
    return [torch.load(out / f"rank{i}.pt") for i in range(processes)]


@pytest.mark.slow
def test_two_process_whp_pipeline_matches_one_process_with_the_same_global_batch(tmp_path):
    """Reinforcement, labels and fine-tune under gloo DDP (2 x 4) end on the weights of one process with batch 8."""
    ranks = _run_command(tmp_path, "ddp", 2, "--per_device_train_batch_size", "4", "--reinforce_batch_size", "4")
    (single,) = _run_command(tmp_path, "one", 1, "--per_device_train_batch_size", "8", "--reinforce_batch_size", "8")
    assert ranks[0]["world_size"] == 2 and single["world_size"] == 1
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
        assert ((weight - single["weights"][name]).norm() / single["weights"][name].norm()).item() <= 1e-4, name


@pytest.mark.slow
@pytest.mark.parametrize("loss_type", ["grad_diff", "npo"])
def test_two_process_retain_losses_keep_the_ranks_identical(loss_type, tmp_path):
    """Two forwards (forget, retain) before one backward under DDP: the ranks stay in lockstep."""
    ranks = _run_command(tmp_path, "ddp", 2, "--unlearning_loss", loss_type, "--per_device_train_batch_size", "4")
    assert ranks[0]["world_size"] == 2
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
