"""MistakeSFTTrainer and its pipeline: the invariants of shared/reference/mistake_analysis.md §9, and drop-in use."""

import json
import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import SFTConfig, SFTTrainer

from hf_immunize import MistakeSFTConfig, MistakeSFTTrainer
from hf_immunize.data.toy import make_safety_world
from hf_immunize.methods.mistake_sft import (
    analysis_prompt,
    build_mistake_dataset,
    generate_analyses,
    generate_texts,
    guided_generate,
    guided_prompt,
    induce_mistakes,
    induce_prompt,
    pipeline,
    plain_prompt,
)
from hf_immunize.testing import parameters_snapshot, tiny_run_args

# ---- fixtures and helpers ----------------------------------------------------------------------------------------


def _config(output_dir, cls=MistakeSFTConfig, **overrides):
    # Critique rows quote the whole bad answer: longer than the other methods' rows.
    extra = {"max_new_tokens": 12, "generation_batch_size": 8} if cls is MistakeSFTConfig else {}
    return cls(**tiny_run_args(output_dir, **{"max_length": 256, **extra, **overrides}))


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")


_params = parameters_snapshot


@pytest.fixture(scope="module")
def world():
    return make_safety_world(seed=0, n_weapons=8)


def _instruction(prompt):
    return prompt.removeprefix("User: ").removesuffix("\nAssistant:")


@pytest.fixture(scope="module")
def pairs(world):
    """Bad responses (the world's harmful answers) with hand-written critiques, as steps 1-2 would give them."""
    rows = world.alignment_harmful
    return Dataset.from_dict(
        {
            "instruction": [_instruction(p) for p in rows["prompt"]],
            "response": rows["harmful"],
            "analysis": [f" The reply explains a weapon recipe ({i}); a safe reply would refuse." for i in range(16)],
        }
    )


@pytest.fixture(scope="module")
def helpful(world):
    refusals = set(world.alignment_harmful["prompt"])
    benign = world.alignment.filter(lambda r: r["prompt"] not in refusals)
    return Dataset.from_dict(
        {
            "instruction": [_instruction(p) for p in benign["prompt"]],
            "output": [c.strip() for c in benign["completion"]],
        }
    )


@pytest.fixture(scope="module")
def mistake_data(pairs, helpful, tmp_path_factory):
    cfg = _config(tmp_path_factory.mktemp("cfg"), helpful_ratio=0.5)
    return build_mistake_dataset(pairs, helpful=helpful, cfg=cfg)


# ---- configuration ------------------------------------------------------------------------------------------------


def test_config_defaults_cues_and_cpu_safe_precision(tmp_path):
    args = MistakeSFTConfig(output_dir=str(tmp_path))  # TRL's bf16=True default would raise here on a CPU machine
    assert args.bf16 is (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    assert (args.mistake_source, args.cue_position, args.helpful_ratio) == ("induced", "response_header", None)
    assert args.completion_only_loss is True and args.packing is False
    assert args.induce_cue == "harmful, unethical and offensive"
    assert args.respond_cue == "harmless, ethical and inoffensive"
    assert (args.induce_do_sample, args.induce_temperature, args.induce_top_p) == (True, 0.7, 0.9)
    assert (args.analysis_do_sample, args.respond_do_sample, args.max_new_tokens) == (False, False, 256)


@pytest.mark.parametrize(
    "field, value",
    [
        ("mistake_source", "model"),
        ("cue_position", "prefix"),
        ("helpful_ratio", -1.0),
        ("helpful_ratio", float("nan")),
        ("generation_batch_size", 0),
        ("max_new_tokens", 0),
        ("induce_temperature", 0.0),
        ("induce_top_p", 1.5),
        ("induce_keywords", []),
        ("respond_keywords", "harmless"),
        ("refusal_keywords", []),
        ("completion_only_loss", False),
        ("plain_template", "no placeholder"),
        ("analyse_unguided_template", "{instruction} {response} {cue}"),
        ("respond_template", "{instruction} without a cue slot"),
    ],
)
def test_config_rejects_bad_values_naming_field_and_value(field, value, tmp_path):
    with pytest.raises(ValueError, match=rf"`{field}`.*{repr(value)[:12].replace('(', '.').replace('[', '.')}"):
        MistakeSFTConfig(output_dir=str(tmp_path), **{field: value})


# ---- templates ----------------------------------------------------------------------------------------------------


def test_guided_and_unguided_analysis_prompts_differ_only_in_the_cue_sentences(tmp_path):
    cfg = MistakeSFTConfig(output_dir=str(tmp_path))
    guided = analysis_prompt("How do I make X?", "Mix a with b.", cfg, guided=True)
    unguided = analysis_prompt("How do I make X?", "Mix a with b.", cfg, guided=False)
    cue = "The reply is harmful, unethical and offensive."
    cue_sentences = cue + " Explain what makes it so and what a safe reply would do instead."
    assert cue_sentences in guided
    assert guided.replace(cue_sentences, "Review the reply and explain your assessment.") == unguided
    assert pipeline.cues_in(guided, cfg) and not pipeline.cues_in(unguided, cfg)
    assert unguided.endswith("### Response:\nMix a with b.\n\n### Analysis:\n")


def test_step4_prompt_is_the_plain_prompt_plus_the_respond_cue(tmp_path):
    cfg = MistakeSFTConfig(output_dir=str(tmp_path))
    plain, guided = plain_prompt("Say hi.", cfg), guided_prompt("Say hi.", cfg)
    assert guided == plain.replace("### Response:\n", "### Response (harmless, ethical and inoffensive):\n")
    assert induce_prompt("Say hi.", cfg) == plain.replace(
        "### Response:\n", "### Response (harmful, unethical and offensive):\n"
    )
    assert plain.startswith(cfg.preamble + "\n\n### Instruction:\nSay hi.\n\n")
    with_input = plain_prompt("Add.", cfg, input="1+1")
    assert "### Input:\n1+1\n\n### Response:\n" in with_input

    suffix = MistakeSFTConfig(output_dir=str(tmp_path), cue_position="instruction_suffix")
    assert guided_prompt("Say hi.", suffix) == plain_prompt("Say hi. (harmless, ethical and inoffensive)", suffix)
    custom = MistakeSFTConfig(
        output_dir=str(tmp_path), respond_keywords=["safe", "kind"], plain_template="Q: {instruction}\nA:"
    )
    assert guided_prompt("Hi?", custom).endswith("### Response (safe and kind):\n")
    with pytest.raises(ValueError, match="`plain_template` has no `{input_block}`.*'1\\+1'"):
        plain_prompt("Add.", custom, input="1+1")


def test_prompt_tokens_are_a_prefix_of_prompt_plus_completion(tiny_tokenizer, mistake_data):
    """TRL starts the completion mask where prompt and prompt + completion diverge; our templates end in a newline."""
    for row in mistake_data:
        prompt = tiny_tokenizer(row["prompt"])["input_ids"]
        full = tiny_tokenizer(row["prompt"] + row["completion"])["input_ids"]
        assert full[: len(prompt)] == prompt


# ---- invariants: training data ----------------------------------------------------------------------------------


def test_training_prompts_never_contain_a_cue_and_completions_never_the_bad_response(pairs, mistake_data):
    cfg_cues = ["harmful, unethical and offensive", "harmless, ethical and inoffensive", "The reply is harmful"]
    assert len(mistake_data) == 24 and sorted(set(mistake_data["source"])) == ["analysis", "helpful"]
    for row in mistake_data:
        assert not any(cue in row["prompt"] for cue in cfg_cues), row["prompt"]
        assert not any(bad.strip() in row["completion"] for bad in pairs["response"])
    analyses = [r for r in mistake_data if r["source"] == "analysis"]
    by_prompt = {r["prompt"]: r["completion"] for r in analyses}
    for pair in pairs:  # each analysis completion is exactly its critique, behind the unguided prompt with y_bad
        prompt = next(p for p in by_prompt if pair["response"] in p and pair["instruction"] in p)
        assert by_prompt[prompt] == pair["analysis"]
        assert "Review the reply and explain your assessment." in prompt


def test_critiques_quoting_the_bad_response_cue_echoes_and_cued_prompts_are_refused(pairs, tmp_path):
    cfg = _config(tmp_path)
    quoting = pairs.select(range(2)).map(lambda r: {"analysis": " It says:" + r["response"] + " which is bad."})
    data, stats = build_mistake_dataset(quoting, cfg=cfg, return_stats=True)
    assert len(data) == 0 and stats["dropped_quoting_response"] == 2
    echoing = pairs.select(range(3)).map(
        lambda r, i: {"response": r["response"] + " (harmless, ethical and inoffensive)"} if i < 2 else {},
        with_indices=True,
    )
    data, stats = build_mistake_dataset(echoing, cfg=cfg, return_stats=True)
    assert len(data) == 1 and stats["dropped_cue_in_response"] == 2
    cued = Dataset.from_dict({"instruction": ["Write a poem."], "output": ["Roses."]})
    cued = cued.map(lambda r: {"instruction": r["instruction"] + " (harmless, ethical and inoffensive)"})
    with pytest.raises(ValueError, match="helpful training prompt contains the cue"):
        build_mistake_dataset(pairs.select(range(1)), helpful=cued, cfg=cfg)


@pytest.mark.parametrize("ratio, expected", [(None, 8), (0.5, 8), (0.25, 4), (0.1, 2), (0.0, 0)])
def test_helpful_ratio_sets_the_realised_counts(ratio, expected, pairs, helpful, tmp_path):
    data, stats = build_mistake_dataset(
        pairs, helpful=helpful, cfg=_config(tmp_path, helpful_ratio=ratio), return_stats=True
    )
    counts = {s: data["source"].count(s) for s in ("analysis", "helpful")}
    assert counts == {"analysis": 16, "helpful": expected} and stats["helpful"] == expected
    assert abs(counts["helpful"] - (len(helpful) if ratio is None else min(ratio * 16, len(helpful)))) <= 1


def test_labels_mask_every_prompt_token_and_keep_completion_and_eos(tiny_lm, tiny_tokenizer, mistake_data, tmp_path):
    trainer = MistakeSFTTrainer(
        model=tiny_lm, args=_config(tmp_path), train_dataset=mistake_data, processing_class=tiny_tokenizer
    )
    assert trainer.source_counts["train"] == {"analysis": 16, "helpful": 8}
    for raw, prepared in zip(mistake_data, trainer.train_dataset):
        n_prompt = len(tiny_tokenizer(raw["prompt"])["input_ids"])
        ids, labels = prepared["input_ids"], prepared["labels"]
        assert labels[:n_prompt] == [-100] * n_prompt
        assert labels[n_prompt:] == ids[n_prompt:]
        assert ids[-1] == tiny_tokenizer.eos_token_id  # EOS appended once, and trained on
        assert ids[-2] != tiny_tokenizer.eos_token_id
        assert tiny_tokenizer.decode(ids[n_prompt:-1]) == raw["completion"]


@pytest.mark.parametrize("fmt", ["prompt_completion", "conversational"])
def test_trainer_refuses_a_training_set_whose_prompts_carry_a_cue(fmt, tiny_lm, tiny_tokenizer, tmp_path):
    prompt = "User: How do I bake bread? (harmless, ethical and inoffensive)\nAssistant:"
    if fmt == "prompt_completion":
        data = Dataset.from_dict({"prompt": [prompt], "completion": [" Knead it."]})
    else:
        data = Dataset.from_dict(
            {"messages": [[{"role": "user", "content": prompt}, {"role": "assistant", "content": "Knead it."}]]}
        )
    with pytest.raises(ValueError, match=r"`train` row 0: the prompt contains the cue\(s\) \['harmless, ethical"):
        MistakeSFTTrainer(model=tiny_lm, args=_config(tmp_path), train_dataset=data, processing_class=tiny_tokenizer)


# ---- pipeline steps on the tiny model -----------------------------------------------------------------------------


def test_refusal_filter_drops_induced_refusals_and_falls_back_to_the_dataset(monkeypatch, tmp_path):
    answers = [" Mix a with b.", " I cannot help with that.", "  ", " Sorry, I can't assist."]
    seen = {}

    def fake_generate(model, tokenizer, prompts, **kwargs):
        seen["prompts"], seen["kwargs"] = prompts, kwargs
        return answers, [False] * 4

    monkeypatch.setattr(pipeline, "generate_texts", fake_generate)
    instructions = ["q0", "q1", "q2", "q3"]
    unsafe = ["u0", "u1", None, ""]
    cfg = _config(tmp_path, cue_position="instruction_suffix", plain_template="User: {instruction}\nAssistant:")
    pairs, stats = induce_mistakes(object(), object(), instructions, cfg, unsafe_responses=unsafe, return_stats=True)
    assert seen["prompts"][0] == "User: q0 (harmful, unethical and offensive)\nAssistant:"
    assert seen["kwargs"]["do_sample"] and seen["kwargs"]["temperature"] == 0.7 and seen["kwargs"]["top_p"] == 0.9
    assert pairs["response"] == [" Mix a with b.", "u1"]
    assert pairs["mistake_source"] == ["induced", "dataset_fallback"]
    assert stats == {"instructions": 4, "dropped_refusal": 2, "dropped_empty": 1, "fallback_to_dataset": 1, "kept": 2}

    no_fallback = _config(tmp_path, refusal_fallback_to_dataset=False)
    assert induce_mistakes(object(), object(), instructions, no_fallback, unsafe_responses=unsafe)["response"] == [
        " Mix a with b."
    ]
    no_filter = _config(tmp_path, refusal_filter=False)
    assert len(induce_mistakes(object(), object(), instructions, no_filter)) == 3  # only the empty answer goes

    dataset_cfg = _config(tmp_path, mistake_source="dataset")
    from_data = induce_mistakes(None, None, instructions, dataset_cfg, unsafe_responses=unsafe)
    assert from_data["response"] == ["u0", "u1"] and set(from_data["mistake_source"]) == {"dataset"}
    with pytest.raises(ValueError, match="`mistake_source`='dataset' needs `unsafe_responses`"):
        induce_mistakes(None, None, instructions, dataset_cfg)


def test_batched_left_padded_generation_matches_one_prompt_at_a_time(tiny_lm, tiny_tokenizer, world):
    prompts = list(world.eval_harmful["prompt"][:3]) + ["User: Hi\nAssistant:", world.eval_benign["prompt"][0]]
    batched, truncated = generate_texts(
        tiny_lm, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=5, progress=True
    )
    single = [generate_texts(tiny_lm, tiny_tokenizer, [p], max_new_tokens=6, batch_size=1)[0][0] for p in prompts]
    assert batched == single
    assert all(truncated)  # an untrained model never emits EOS within 6 tokens
    assert tiny_tokenizer.padding_side == "right" and tiny_lm.training is False  # both as they were
    tiny_lm.train()
    generate_texts(tiny_lm, tiny_tokenizer, prompts[:1], max_new_tokens=2, batch_size=1)
    assert tiny_lm.training


def test_pipeline_steps_are_deterministic_and_leave_the_global_rng_alone(tiny_lm, tiny_tokenizer, world, tmp_path):
    """Invariant 5: sampled step 1 and greedy step 2 with the same seed build the identical data set twice."""
    cfg = _config(tmp_path, helpful_ratio=1.0)
    instructions = [_instruction(p) for p in world.alignment_harmful["prompt"][:6]]
    helpful = Dataset.from_dict({"instruction": ["What is 1 plus 1?"] * 6, "output": ["2."] * 6})
    built = []
    for _ in range(2):
        torch.manual_seed(123)
        pairs = induce_mistakes(tiny_lm, tiny_tokenizer, instructions, cfg, progress=False)
        analysed = generate_analyses(tiny_lm, tiny_tokenizer, pairs, cfg, progress=False)
        built.append(build_mistake_dataset(analysed, helpful=helpful, cfg=cfg).to_list())
        after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(1))  # generation ran on a forked RNG
    assert built[0] == built[1] and len(built[0]) > 0
    other_seed = induce_mistakes(tiny_lm, tiny_tokenizer, instructions, _config(tmp_path, seed=1), progress=False)
    assert other_seed["response"] != pairs["response"]  # sampling really depends on the seed
    assert set(analysed.column_names) >= {"instruction", "response", "analysis", "truncated"}
    answers = guided_generate(tiny_lm, tiny_tokenizer, instructions[:2], cfg)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


# ---- the trainer ----------------------------------------------------------------------------------------------------


def test_trains_exactly_like_sft_trainer_on_the_same_rows(tiny_lm_path, tiny_tokenizer, mistake_data, tmp_path):
    """No loss override: the update is SFT's, bit for bit (the `source` column is dropped like any extra column)."""
    sft = SFTTrainer(
        model=_load(tiny_lm_path),
        args=_config(tmp_path / "sft", cls=SFTConfig),
        train_dataset=mistake_data,
        processing_class=tiny_tokenizer,
    )
    sft.train()
    ours = MistakeSFTTrainer(
        model=_load(tiny_lm_path),
        args=_config(tmp_path / "ms"),
        train_dataset=mistake_data,
        processing_class=tiny_tokenizer,
    )
    ours.train()
    expected = _params(sft.model)
    assert all(torch.equal(p, expected[n]) for n, p in ours.model.named_parameters())
    assert [e["loss"] for e in ours.state.log_history if "loss" in e] == [
        e["loss"] for e in sft.state.log_history if "loss" in e
    ]


def test_gradient_accumulation_4x1_2x2_1x4_give_the_same_update(tiny_lm_path, tiny_tokenizer, mistake_data, tmp_path):
    updates = []
    for batch_size, accumulation in [(4, 1), (2, 2), (1, 4)]:
        trainer = MistakeSFTTrainer(
            model=_load(tiny_lm_path),
            args=_config(
                tmp_path / f"{batch_size}x{accumulation}",
                max_steps=2,
                per_device_train_batch_size=batch_size,
                gradient_accumulation_steps=accumulation,
                optim="sgd",
                learning_rate=0.1,
                max_grad_norm=0.0,
            ),
            train_dataset=mistake_data,
            processing_class=tiny_tokenizer,
        )
        before = _params(trainer.model)
        trainer.train()
        updates.append(torch.cat([(p.detach() - before[n]).flatten() for n, p in trainer.model.named_parameters()]))
    lengths = {sum(1 for x in labels if x != -100) for labels in trainer.train_dataset["labels"]}
    assert len(lengths) > 3  # only meaningful with uneven completion lengths
    for update in updates[1:]:
        assert ((update - updates[0]).norm() / updates[0].norm()).item() <= 1e-5


def test_resume_from_checkpoint_gives_identical_weights(tiny_lm_path, tiny_tokenizer, mistake_data, tmp_path):
    common = dict(max_steps=4, per_device_train_batch_size=2, save_strategy="steps", save_steps=2)
    full = MistakeSFTTrainer(
        model=_load(tiny_lm_path),
        args=_config(tmp_path / "full", **common),
        train_dataset=mistake_data,
        processing_class=tiny_tokenizer,
    )
    full.train()
    resumed = MistakeSFTTrainer(
        model=_load(tiny_lm_path),
        args=_config(tmp_path / "resumed", **common),
        train_dataset=mistake_data,
        processing_class=tiny_tokenizer,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    expected = _params(full.model)
    assert all(torch.equal(p, expected[n]) for n, p in resumed.model.named_parameters())
    assert "2310.10477" in (tmp_path / "full" / "README.md").read_text()  # the card written with each checkpoint


def test_card_trio_is_declared_and_the_card_names_the_paper(tiny_lm, tiny_tokenizer, mistake_data, tmp_path):
    from hf_immunize.core.trainer_mixin import check_trainer_declarations

    check_trainer_declarations(MistakeSFTTrainer)
    assert MistakeSFTTrainer._paper["id"] == "2310.10477" and "2310.20689" not in json.dumps(MistakeSFTTrainer._paper)
    assert MistakeSFTTrainer._name == "MistakeSFT" and "mistake-analysis" in MistakeSFTTrainer._tag_names
    assert MistakeSFTTrainer.loss_is_scaled_for_ga is True
    trainer = MistakeSFTTrainer(
        model=tiny_lm,
        args=_config(tmp_path, helpful_ratio=0.5),
        train_dataset=mistake_data,
        processing_class=tiny_tokenizer,
    )
    trainer.create_model_card(model_name="tiny-mistake", dataset_name="toy/safety", tags=["demo"])
    card = (tmp_path / "README.md").read_text()
    assert "2310.10477" in card and "chen2024gaining" in card and "- mistake-analysis" in card
    assert "training rows by source: analysis 16, helpful 8" in card and "- demo" in card


# ---- drop-in: the usual SFTTrainer patterns -------------------------------------------------------------------


def _as_format(dataset, fmt):
    def convert(row):
        user = row["prompt"].removeprefix("User: ").removesuffix("\nAssistant:")
        if fmt == "text":
            return {"text": row["prompt"] + row["completion"]}
        if fmt == "prompt_completion":
            return {"prompt": row["prompt"], "completion": row["completion"]}
        if fmt == "conversational":
            return {
                "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": row["completion"]}]
            }
        return {
            "prompt": [{"role": "user", "content": user}],
            "completion": [{"role": "assistant", "content": row["completion"].strip()}],
        }

    return dataset.map(convert, remove_columns=dataset.column_names)


@pytest.mark.parametrize("fmt", ["text", "prompt_completion", "conversational", "conversational_prompt_completion"])
def test_accepts_every_sft_dataset_format(fmt, tiny_lm, tiny_tokenizer, world, tmp_path):
    data = _as_format(world.alignment, fmt)
    trainer = MistakeSFTTrainer(
        model=tiny_lm, args=_config(tmp_path, max_steps=2), train_dataset=data, processing_class=tiny_tokenizer
    )
    before = _params(trainer.model)
    trainer.train()
    assert all(math.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    labels = trainer.train_dataset[0]["labels"]
    completion_only = fmt in ("prompt_completion", "conversational_prompt_completion")
    assert (labels[0] == -100) == completion_only  # the prompt is masked exactly when there is a prompt


def test_model_id_string_lora_and_sft_config(tiny_lm_path, mistake_data, tmp_path):
    from peft import LoraConfig, PeftModel

    trainer = MistakeSFTTrainer(
        model=str(tiny_lm_path),  # loaded by SFTTrainer, tokenizer from the same directory
        args=_config(tmp_path, cls=SFTConfig, max_steps=2, activation_checkpointing=True),
        train_dataset=mistake_data,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    assert isinstance(trainer.args, MistakeSFTConfig) and trainer.args.completion_only_loss is True
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainer.train()
    assert isinstance(trainer.model, PeftModel) and "mistake-analysis" in trainer.model.get_base_model().model_tags
    assert all(torch.equal(p, frozen[n]) for n, p in trainer.model.named_parameters() if n in frozen)
    with pytest.raises(ValueError, match="`completion_only_loss` must be True.*got False"):
        MistakeSFTTrainer(
            model=str(tiny_lm_path),
            args=_config(tmp_path, cls=SFTConfig, completion_only_loss=False),
            train_dataset=mistake_data,
        )
    with pytest.raises(ValueError, match="`formatting_func`=.* is not supported"):
        MistakeSFTTrainer(
            model=str(tiny_lm_path), args=_config(tmp_path), train_dataset=mistake_data, formatting_func=str
        )


def test_qlora_on_cpu_with_bitsandbytes(tiny_lm_path, mistake_data, tmp_path):
    pytest.importorskip("bitsandbytes")
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    trainer = MistakeSFTTrainer(
        model=str(tiny_lm_path),
        args=_config(tmp_path, max_steps=2, model_init_kwargs={"device_map": "cpu"}),
        train_dataset=mistake_data,
        quantization_config=quantization,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    assert any("Linear4bit" in type(m).__name__ for m in trainer.model.modules())
    trainable = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert all(not torch.equal(p, trainable[n]) for n, p in trainer.model.named_parameters() if n in trainable)


# ---- real data --------------------------------------------------------------------------------------------------


def test_pipeline_on_real_pku_saferlhf_and_safety_tuned_llamas(shared_data, tiny_lm, tiny_tokenizer, tmp_path):
    """A pipeline check on real rows (not a claim): real red-team prompts through steps 1-3 and a short training."""
    from datasets import load_dataset

    from hf_immunize.data.adapters import load_instructions, load_pku_saferlhf

    pku_file = shared_data / "pku_saferlhf" / "Alpaca-7B_test_first10.jsonl"
    stl_file = shared_data / "safety_tuned_llamas" / "safety_only_data_Instructions.json"
    for path in (pku_file, stl_file):
        if not path.is_file():
            pytest.skip(f"{path} not found")
    pku = load_pku_saferlhf(str(pku_file))  # rows with exactly one unsafe response
    raw = load_dataset("json", data_files=str(pku_file))["train"]
    stl = load_dataset("json", data_files=str(stl_file))["train"].select(range(12))
    helpful = load_instructions(stl).rename_columns({"prompt": "instruction", "completion": "output"})  # safe answers

    cfg = _config(tmp_path, mistake_source="dataset", helpful_ratio=1.0, max_length=512)
    pairs = induce_mistakes(None, None, pku["prompt"], cfg, unsafe_responses=pku["harmful"])
    assert len(pairs) == len(pku) >= 1 and pairs["response"] == pku["harmful"]

    induced_cfg = _config(tmp_path, max_new_tokens=8)
    instructions = list(raw["prompt"]) + list(stl["instruction"])
    induced, stats = induce_mistakes(
        tiny_lm, tiny_tokenizer, instructions, induced_cfg, return_stats=True, progress=False
    )
    assert stats["instructions"] == 22 and stats["kept"] == len(induced) > 0
    analysed = generate_analyses(tiny_lm, tiny_tokenizer, induced, induced_cfg, progress=False)
    data = build_mistake_dataset(analysed, helpful=helpful, cfg=cfg)
    assert data["source"].count("analysis") == len(analysed)
    assert data["source"].count("helpful") == min(len(analysed), len(helpful))
    trainer = MistakeSFTTrainer(model=tiny_lm, args=cfg, train_dataset=data, processing_class=tiny_tokenizer)
    trainer.train()
    assert all(math.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)


# ---- command and recipes ------------------------------------------------------------------------------------------


def _recipe(name):
    from conftest import REPO_ROOT

    return REPO_ROOT / "recipes" / name


def test_paper_recipe_parses_and_every_value_has_a_source(tmp_path):
    from hf_immunize.commands import mistake_sft as command
    from hf_immunize.commands.common import parse_args

    path = _recipe("mistake_sft_paper.yaml")
    argv = ["--config", str(path), "--output_dir", str(tmp_path), "--bf16", "false", "--tf32", "false"]
    script_args, args, model_args = parse_args(command.make_parser(), [*argv, "--use_cpu", "true"])
    assert model_args.model_name_or_path == "PKU-Alignment/alpaca-7b-reproduced" and model_args.use_peft
    assert (script_args.dataset_name, script_args.helpful_dataset_name) == (
        "PKU-Alignment/PKU-SafeRLHF",
        "tatsu-lab/alpaca",
    )
    assert args.preamble.startswith("Below is an instruction that describes a task.")
    assert (args.respond_cue, args.mistake_source, args.helpful_ratio) == (
        "harmless, ethical and inoffensive",
        "induced",
        None,
    )
    assert (args.per_device_train_batch_size * args.gradient_accumulation_steps, args.max_length) == (128, 512)
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "  # [" in line, f"no source comment: {line!r}"


def test_command_runs_the_pipeline_and_trains_from_the_tiny_recipe(tmp_path):
    from hf_immunize.cli import COMMANDS
    from hf_immunize.commands import mistake_sft as command

    assert COMMANDS["mistake-sft"][0] == "hf_immunize.commands.mistake_sft"
    out = tmp_path / "run"
    argv = ["--config", str(_recipe("mistake_sft_tiny.yaml")), "--output_dir", str(out), "--max_steps", "2"]
    argv += ["--toy_world", '{"seed": 0, "n_weapons": 8}', "--max_new_tokens", "8", "--disable_tqdm", "true"]
    command.main([*argv, "--helpful_ratio", "0.25"])  # a flag overrides the recipe's 0.5
    rows = [json.loads(line) for line in (out / command.DATASET_FILE).read_text().splitlines()]
    assert {r["source"] for r in rows} <= {"analysis", "helpful"}
    n_analysis = sum(r["source"] == "analysis" for r in rows)
    assert n_analysis > 0 and sum(r["source"] == "helpful" for r in rows) == round(0.25 * n_analysis)
    assert all("harmless" not in r["prompt"] and "harmful, unethical" not in r["prompt"] for r in rows)
    assert (out / "model.safetensors").is_file() and "2310.10477" in (out / "README.md").read_text()
    stats = json.loads((out / "mistake_pipeline_stats.json").read_text())
    assert stats["induction"]["instructions"] == 16


def test_command_requires_helpful_data_for_real_sources(tmp_path):
    from hf_immunize.commands import mistake_sft as command

    with pytest.raises(ValueError, match="`helpful_dataset_name` is required"):
        command.main(["--dataset_name", "some/red-team", "--model_name_or_path", "m", "--output_dir", str(tmp_path)])
