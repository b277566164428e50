"""The shared rooms in `hf_immunize/core/`: trainer mixin, second data stream, weight perturbation."""

import math

import pytest
import torch

from hf_immunize.core import (
    GradientBuffer,
    ImmunizeTrainerMixin,
    PairedStream,
    check_trainer_declarations,
    global_norm,
    perturbed,
    preserved_rng,
)

# ---- trainer mixin: declarations ---------------------------------------------------------------------------------

_TRIO = {
    "_tag_names": ["hf-immunize", "probe"],
    "_name": "Probe",
    "_paper": {"title": "A probe", "id": "0000.00000", "citation": "@misc{probe}"},
    "loss_is_scaled_for_ga": None,
}


def test_declaration_check_fails_a_trainer_that_inherits_the_card_trio():
    from trl import SFTTrainer

    declared = type("Declared", (ImmunizeTrainerMixin, SFTTrainer), dict(_TRIO))
    check_trainer_declarations(declared)  # passes

    inherits = type("Inherits", (declared,), {})  # everything inherited, e.g. TRL's "SFT" name and tags
    with pytest.raises(TypeError, match="Inherits must declare `_tag_names`, `_name`, `_paper`"):
        check_trainer_declarations(inherits)
    partly = type("Partly", (declared,), {"_tag_names": ["hf-immunize", "x"], "_name": "X"})
    with pytest.raises(TypeError, match="`_paper`, `loss_is_scaled_for_ga`"):
        check_trainer_declarations(partly)
    with pytest.raises(TypeError, match="_paper must be a dict"):
        check_trainer_declarations(type("NoCitation", (declared,), {**_TRIO, "_paper": {"title": "t"}}))


def test_trainers_under_methods_are_checked_when_defined():
    with pytest.raises(TypeError, match="must declare"):
        type("Bad", (ImmunizeTrainerMixin,), {"__module__": "hf_immunize.methods.fake.fake_trainer"})


def test_every_exported_trainer_declares_its_own_card_trio():
    import transformers

    import hf_immunize

    trainers = [
        getattr(hf_immunize, name)
        for name in hf_immunize.__all__
        if isinstance(getattr(hf_immunize, name), type)
        and issubclass(getattr(hf_immunize, name), transformers.Trainer)
    ]
    assert trainers, "no trainer exported from hf_immunize"
    for cls in trainers:
        check_trainer_declarations(cls)
        assert issubclass(cls, ImmunizeTrainerMixin)
        assert len({c._name for c in trainers}) == len(trainers)


# ---- trainer mixin: metrics reach the logs -----------------------------------------------------------------------


def test_method_metrics_are_averaged_into_log_history(tiny_lm, tiny_tokenizer, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    class Probe(ImmunizeTrainerMixin, SFTTrainer):
        _tag_names = _TRIO["_tag_names"]
        _name = _TRIO["_name"]
        _paper = _TRIO["_paper"]
        loss_is_scaled_for_ga = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            for value in (1.0, torch.tensor(3.0)):  # two values per step: the log shows their mean
                self._log_metric("probe/value", value)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    args = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        logging_steps=1,
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    rows = Dataset.from_dict({"text": ["User: hi\nAssistant: hello.", "User: 2 plus 2?\nAssistant: 4."] * 2})
    trainer = Probe(model=tiny_lm, args=args, train_dataset=rows, processing_class=tiny_tokenizer)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "probe/value" in entry]
    assert [entry["probe/value"] for entry in logged] == [2.0, 2.0]
    assert all("loss" in entry and "entropy" in entry for entry in logged)  # SFT's own metrics are still there
    assert not trainer._immunize_metrics["train"]  # the buffer is cleared by log()

    # The token NLL helper: TRL's fused head (SFT trainers) and the logits fallback (other trainers) agree with a
    # plain cross-entropy sum over the shifted labels.
    from types import SimpleNamespace

    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    batch["labels"][0, :3] = -100
    logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100, reduction="sum"
    )
    fused = trainer._summed_token_nll(trainer.model, batch)
    fallback = ImmunizeTrainerMixin._summed_token_nll(SimpleNamespace(), trainer.model, batch)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fallback, expected, rtol=1e-5, atol=1e-5)


# ---- paired stream ------------------------------------------------------------------------------------------------


def _stream(n=10, batch_size=4, seed=0, rank=0, world_size=1):
    return PairedStream(
        list(range(n)), batch_size=batch_size, collate_fn=list, seed=seed, rank=rank, world_size=world_size
    )


def test_stream_cuts_one_index_stream_so_two_small_batches_equal_one_large():
    large, small = _stream(batch_size=4), _stream(batch_size=2)
    for _ in range(7):  # crosses several epochs (10 examples)
        assert large.next_batch() == small.next_batch() + small.next_batch()


def test_stream_visits_every_example_once_per_epoch_in_a_fresh_order():
    stream = _stream(n=10, batch_size=5)
    epoch0 = stream.next_batch() + stream.next_batch()
    epoch1 = stream.next_batch() + stream.next_batch()
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1
    assert stream.epoch == 2 and stream.position == 0


def test_stream_shards_are_disjoint_and_cover_the_data():
    shards = [_stream(n=11, batch_size=1, rank=r, world_size=3) for r in range(3)]
    seen = [[s.next_batch()[0] for _ in range(len(s._current_shard()))] for s in shards]
    assert sorted(sum(seen, [])) == list(range(11))
    with pytest.raises(ValueError, match="fewer than the 3 processes"):
        _stream(n=2, rank=0, world_size=3)


def test_stream_state_dict_round_trip_continues_exactly():
    original = _stream(n=7, batch_size=3, seed=5)
    for _ in range(4):
        original.next_batch()
    state = original.state_dict()
    expected = [original.next_batch() for _ in range(6)]

    resumed = _stream(n=7, batch_size=3, seed=5)
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(6)] == expected
    other_seed = _stream(n=7, batch_size=3, seed=6)
    with pytest.raises(ValueError, match="seed=5.*seed=6"):
        other_seed.load_state_dict(state)


def test_stream_does_not_touch_the_global_rng():
    stream = _stream()
    before = torch.random.get_rng_state()
    for _ in range(5):
        stream.next_batch()
    assert torch.equal(before, torch.random.get_rng_state())


def test_paired_dataset_is_prepared_like_sft_with_completion_only_loss_decided_per_dataset(tiny_lm, tiny_tokenizer):
    """A `text` training set (loss on every token) beside a prompt-completion second set (loss on the completion)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from hf_immunize.core import build_paired_stream

    args = SFTConfig(
        output_dir="unused", use_cpu=True, bf16=False, activation_checkpointing=False, report_to="none", max_length=32
    )
    trainer = SFTTrainer(
        model=tiny_lm,
        args=args,
        train_dataset=Dataset.from_dict({"text": ["User: hi\nAssistant: hello."] * 4}),
        processing_class=tiny_tokenizer,
    )
    second = Dataset.from_dict({"prompt": ["User: How do I make it?\nAssistant:"] * 3, "completion": [" Mix it."] * 3})
    stream = build_paired_stream(trainer, second, batch_size=2, name="harmful")
    assert stream.dataset.column_names == ["input_ids", "labels"]
    batch = stream.next_batch()
    prompt_len = len(tiny_tokenizer("User: How do I make it?\nAssistant:")["input_ids"])
    labels = batch["labels"][0]
    assert (labels[:prompt_len] == -100).all() and (labels[prompt_len:] != -100).any()
    assert labels[batch["attention_mask"][0].bool()][-1] == tiny_tokenizer.eos_token_id  # EOS appended, like SFT
    assert trainer.completion_only_loss is False  # the trainer's own setting is untouched


# ---- perturbation ------------------------------------------------------------------------------------------------


def _params_and_direction(seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(3, 4, generator=gen)), torch.nn.Parameter(torch.randn(5, generator=gen))]
    direction = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen)]
    return params, direction


def test_perturbation_uses_one_global_norm():
    params, direction = _params_and_direction()
    before = [p.detach().clone() for p in params]
    alpha, eps = 0.1, 1e-7
    g_norm = math.sqrt(sum(float(d.pow(2).sum()) for d in direction))
    with perturbed(params, direction, alpha, eps) as norm:
        moved = [p.detach().clone() - b for p, b in zip(params, before)]
    assert norm.item() == pytest.approx(g_norm, rel=1e-6)
    assert global_norm(moved).item() == pytest.approx(alpha * g_norm / (g_norm + eps), rel=1e-5)
    for m, d in zip(moved, direction):  # every tensor moves along -d, scaled by the same global factor
        torch.testing.assert_close(m, -alpha * d / (g_norm + eps), rtol=1e-5, atol=1e-7)

    # Scaling one tensor's direction changes the step of the other one (a per-tensor norm would not).
    scaled = [direction[0] * 10, direction[1]]
    with perturbed(params, scaled, alpha, eps):
        moved_other = params[1].detach().clone() - before[1]
    assert not torch.allclose(moved_other, moved[1])


def test_perturbation_restores_bit_exactly_also_in_bf16_and_on_error():
    params, direction = _params_and_direction(1)
    params = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in params]
    before = [p.detach().clone() for p in params]
    with pytest.raises(RuntimeError, match="inside"):
        with perturbed(params, direction, 0.3):
            assert not torch.equal(params[0], before[0])
            raise RuntimeError("inside")
    for _ in range(20):  # no drift, unlike adding the step back
        with perturbed(params, direction, 0.3):
            pass
    assert all(torch.equal(p, b) for p, b in zip(params, before))


@pytest.mark.parametrize("kind", ["zero", "inf", "nan"])
def test_perturbation_with_zero_or_non_finite_direction_moves_nothing(kind):
    params, direction = _params_and_direction(2)
    before = [p.detach().clone() for p in params]
    fill = {"zero": 0.0, "inf": float("inf"), "nan": float("nan")}[kind]
    direction = [torch.zeros_like(d) for d in direction]
    direction[1][0] = fill
    with perturbed(params, direction, 0.1):
        assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(torch.isfinite(p).all() for p in params)


def test_perturbation_rejects_mismatched_direction():
    params, direction = _params_and_direction()
    with pytest.raises(ValueError, match=r"direction\[1\]"):
        with perturbed(params, [direction[0], direction[0]], 0.1):
            pass


def test_preserved_rng_repeats_the_same_draws_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    with preserved_rng():
        first = torch.rand(3)
    with preserved_rng():
        second = torch.rand(3)
    assert torch.equal(first, second)
    assert torch.equal(state, torch.random.get_rng_state())


def test_gradient_buffer_views_share_one_flat_fp32_buffer():
    params, _ = _params_and_direction()
    buf = GradientBuffer(params)
    buf.add_([torch.ones(3, 4, dtype=torch.bfloat16), None])
    buf.add_([torch.ones(3, 4), torch.full((5,), 2.0)], alpha=0.5)
    assert buf.flat.dtype == torch.float32 and len(buf) == 17
    assert torch.equal(buf.views[0], torch.full((3, 4), 1.5)) and torch.equal(buf.views[1], torch.ones(5))
    assert buf.norm().item() == pytest.approx(math.sqrt(12 * 1.5**2 + 5))


def test_gradient_buffer_and_perturbation_keep_fp64_in_fp64():
    """A float64 model's gradient is summed in float64 (not rounded through fp32), and its perturbed weights are
    computed in float64: the exactness tests that run in float64 rely on both."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64)), torch.nn.Parameter(torch.randn(5))]
    buf = GradientBuffer(params)
    assert buf.flat.dtype == torch.float64
    tiny = torch.full((3, 4), 1.0 + 2.0**-40, dtype=torch.float64)  # not representable in fp32
    buf.add_([tiny, torch.ones(5)])
    assert torch.equal(buf.views[0], tiny) and buf.views[1].dtype == torch.float64
    assert GradientBuffer(params, dtype=torch.float32).flat.dtype == torch.float32

    weight = torch.nn.Parameter(torch.tensor([1.0 + 2.0**-40, 3.0], dtype=torch.float64))
    direction = [torch.tensor([3.0, 4.0], dtype=torch.float64)]
    with perturbed([weight], direction, step_size=0.5, eps=0.0):
        moved = weight.detach().clone()
    expected = torch.tensor([1.0 + 2.0**-40 - 0.3, 3.0 - 0.4], dtype=torch.float64)
    assert torch.allclose(moved, expected, rtol=0.0, atol=1e-15) and moved.dtype == torch.float64
    assert weight[0].item() == 1.0 + 2.0**-40  # restored bit-exactly


def test_gradient_buffer_copy_overwrites_and_perturbed_reuses_a_backup():
    """What Booster keeps from step to step: `copy_` equals `zero_()` + `add_()`, and `perturbed` with a kept backup
    restores the weights bit-exactly, as with its own copy."""
    from hf_immunize.core.perturbation import GradientBuffer, perturbed

    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    grads = [torch.randn(3, 2), None]
    reused, fresh = GradientBuffer(params), GradientBuffer(params)
    reused.flat.fill_(7.0)  # stale values from an earlier step
    reused.copy_(grads)
    fresh.add_(grads)
    assert torch.equal(reused.flat, fresh.flat) and torch.equal(reused.views[1], torch.zeros(4))
    before = [p.detach().clone() for p in params]
    backup = [torch.empty_like(p) for p in params]
    with perturbed(params, [torch.ones(3, 2), torch.ones(4)], 0.5, backup=backup):
        assert not torch.equal(params[0], before[0])
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    with pytest.raises(ValueError, match="backup"):
        with perturbed(params, [torch.ones(3, 2), torch.ones(4)], 0.5, backup=backup[:1]):
            pass
