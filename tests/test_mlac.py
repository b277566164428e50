"""MLACTrainer: the meta-gradient's exact math, the invariants of `reference/mlac.md` §9, and the Trainer contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT  # noqa: F401  (conftest sets the offline environment first)
from datasets import Dataset
from torch import nn
from torch.func import functional_call
from transformers import AutoModelForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from hf_immunize import MLACConfig, MLACTrainer
from hf_immunize.data.toy import BiosWorld, make_bios_world
from hf_immunize.methods.mlac.inner_loop import (
    FunctionalAdam,
    FunctionalSGD,
    bounded_harmful_loss,
    head_adjusted_loss,
    run_episode,
    solve_head_adjustment,
)

PROFESSIONS = ["nurse", "attorney", "dentist", "painter"]  # 4 classes: the conftest's tiny classifier


@pytest.fixture(scope="module")
def world():
    return make_bios_world(seed=0, n=120, professions=PROFESSIONS, scrub_pronouns=True)


@pytest.fixture(scope="module")
def gender(world):
    return BiosWorld.with_label(world.train, "gender")


def _classifier(path, dtype=torch.float32, **config):
    kwargs = {
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "attn_implementation": "eager",
        **config,
    }
    return AutoModelForSequenceClassification.from_pretrained(path, **kwargs).to(dtype)


def _args(tmp_path, **overrides) -> MLACConfig:
    kwargs = dict(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        inner_steps=1,
        inner_batch_sizes=[4],
        learn_inner_learning_rate=False,
        inner_learning_rate_range=[1e-2, 1e-2],
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        lr_scheduler_type="constant",
        learning_rate=1e-3,
    )
    kwargs.update(overrides)
    return MLACConfig(**kwargs)


def _trainer(model, tokenizer, world, gender, tmp_path, callbacks=None, **overrides) -> MLACTrainer:
    return MLACTrainer(
        model=model,
        args=_args(tmp_path, **overrides),
        train_dataset=world.train,
        harmful_dataset=gender,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


class _Grads(TrainerCallback):
    """The gradient the optimizer is about to apply, per step."""

    def __init__(self):
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _close(a: dict, b: dict, atol: float, rtol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=rtol, msg=name)


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------


def test_config_has_paper_defaults_and_cpu_safe_precision(tmp_path):
    args = MLACConfig(output_dir=str(tmp_path), use_cpu=True)
    assert args.inner_steps == 16 and args.inner_optimizer == "adam" and args.learn_inner_learning_rate
    assert args.inner_learning_rate == 3e-4 and args.inner_learning_rate_bounds == [1e-6, 1e-2]
    assert args.inner_batch_sizes == [12, 24, 48] and args.inner_max_grad_norm == 100.0
    assert args.learning_rate == 1e-5 and args.max_grad_norm == 10.0 and args.meta_gradient == "second_order"
    assert args.num_differentiated_steps == 16 and not args.bf16 and not args.fp16


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"inner_steps": -1}, "`inner_steps` must be an integer >= 0, got -1"),
        ({"inner_optimizer": "rmsprop"}, "`inner_optimizer` must be one of .*'rmsprop'"),
        ({"inner_batch_sizes": []}, r"`inner_batch_sizes` must be a non-empty list .*got \[\]"),
        ({"inner_batch_sizes": [8, 0]}, "`inner_batch_sizes entry` must be an integer >= 1, got 0"),
        ({"inner_learning_rate_range": [1e-2, 1e-4]}, r"`inner_learning_rate_range` must be \[low, high\]"),
        ({"inner_learning_rate": 0.5}, "`inner_learning_rate` .*0.5.* must lie within"),
        ({"adversary_params": "trunk"}, "`adversary_params` must be one of .*'trunk'"),
        ({"meta_gradient": "hessian_free"}, "`meta_gradient` must be one of .*'hessian_free'"),
        ({"meta_gradient": "truncated"}, "`truncation_steps` is required with meta_gradient='truncated'"),
        ({"meta_gradient": "truncated", "truncation_steps": 17}, r"`truncation_steps` \(17\) must be <= "),
        ({"truncation_steps": 2}, r"`truncation_steps` \(2\) is only used with meta_gradient='truncated'"),
        ({"meta_gradient": "first_order"}, "`learn_inner_learning_rate=True` has no gradient with meta_gradient="),
        (
            {"meta_gradient": "first_order", "learn_inner_learning_rate": False, "grad_norm_weight": 1.0},
            r"`grad_norm_weight` \(1.0\) needs a differentiated inner step",
        ),
        ({"desired_loss_weight": float("nan")}, "`desired_loss_weight` must be a finite number >= 0, got nan"),
        ({"head_adjusted_loss_weight": -1.0}, "`head_adjusted_loss_weight` must be a finite number >= 0, got -1.0"),
        ({"harmful_loss_bound": "tanh"}, "`harmful_loss_bound` must be one of .*'tanh'"),
        ({"task": "seq2seq"}, "`task` must be one of .*'seq2seq'"),
        ({"adversary_num_labels": 1}, "`adversary_num_labels` must be an integer >= 2, got 1"),
        ({"fp16": True}, "fp16"),
    ],
)
def test_config_rejects_bad_values_naming_field_and_value(overrides, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        MLACConfig(output_dir=str(tmp_path), use_cpu=True, **overrides)


def test_trainer_refuses_bad_combinations_before_any_compute(tiny_classifier_path, tiny_lm, tiny_tokenizer, world):
    gender = BiosWorld.with_label(world.train, "gender")
    model = _classifier(tiny_classifier_path)
    args = MLACConfig(output_dir="/tmp/unused", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="`harmful_dataset` is required"):
        MLACTrainer(model=model, args=args, train_dataset=world.train, processing_class=tiny_tokenizer)
    with pytest.raises(ValueError, match="`adversary_params='lora'` needs LoRA adapters"):
        MLACTrainer(
            model=model,
            args=MLACConfig(output_dir="/tmp/unused", use_cpu=True, adversary_params="lora"),
            train_dataset=world.train,
            harmful_dataset=gender,
            processing_class=tiny_tokenizer,
        )
    with pytest.raises(ValueError, match="pass `processing_class`"):
        MLACTrainer(model=model, args=args, train_dataset=world.train, harmful_dataset=gender)
    rows = Dataset.from_list([{"prompt": "User: hi\nAssistant:", "completion": " hello"}] * 4)
    lm_args = MLACConfig(output_dir="/tmp/unused", use_cpu=True, head_adjusted_loss_weight=1.0)
    with pytest.raises(ValueError, match=r"`head_adjusted_loss_weight` \(1.0\) applies to classifiers only"):
        MLACTrainer(
            model=tiny_lm, args=lm_args, train_dataset=rows, harmful_dataset=rows, processing_class=tiny_tokenizer
        )


# --------------------------------------------------------------------------------------------------------------------
# The inner loop's math (2-parameter and tiny fp64 models, by hand and by finite differences)
# --------------------------------------------------------------------------------------------------------------------


class _TwoParams(nn.Module):
    """Returns its two parameters: the losses below are written directly in terms of w = (w1, w2)."""

    def __init__(self, w1: float, w2: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w1, w2], dtype=torch.float64))

    def forward(self, scale=None):
        return self.w * 1.0


A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)  # Hessian of the inner loss
B = torch.tensor([0.3, -0.2], dtype=torch.float64)
U = torch.tensor([1.0, -1.0], dtype=torch.float64)


def _quadratic_inner(w, _targets):
    return 0.5 * w @ A @ w + B @ w  # ∇ = A w + b, H = A


def _distance_outer(w, _targets):
    value = 0.5 * ((w - U) ** 2).sum()  # ∇ = w − u
    return value, value, {}


def _two_param_grad(num_differentiated: int) -> list[float]:
    model = _TwoParams(0.7, -0.4)
    outer = dict(model.named_parameters())
    result = run_episode(
        model,
        outer,
        outer,
        [({}, None)],
        ({}, None),
        _quadratic_inner,
        _distance_outer,
        optimizer=FunctionalSGD(),
        lr=0.1,
        num_differentiated=num_differentiated,
        max_grad_norm=None,
    )
    return result.grads[0].tolist()


def test_first_order_drops_exactly_the_second_order_term_on_a_two_parameter_model():
    """K = 1, SGD with step η: the objective is ½[T(θ) + T(θ₁)], θ₁ = θ − η(Aθ + b), T(w) = ½‖w − u‖².

    By hand: second order = ½[(θ − u) + (I − ηA)(θ₁ − u)], first order = ½[(θ − u) + (θ₁ − u)], so their difference
    is −½·η·A·(θ₁ − u): the Hessian-vector product term and nothing else.
    """
    eta, theta = 0.1, [0.7, -0.4]
    a = A.tolist()
    grad_in = [a[0][0] * theta[0] + a[0][1] * theta[1] + 0.3, a[1][0] * theta[0] + a[1][1] * theta[1] - 0.2]
    theta1 = [theta[i] - eta * grad_in[i] for i in range(2)]
    r0 = [theta[0] - 1.0, theta[1] + 1.0]  # θ − u
    r1 = [theta1[0] - 1.0, theta1[1] + 1.0]  # θ₁ − u
    hr1 = [a[0][0] * r1[0] + a[0][1] * r1[1], a[1][0] * r1[0] + a[1][1] * r1[1]]  # A (θ₁ − u)
    first = [0.5 * (r0[i] + r1[i]) for i in range(2)]
    second = [0.5 * (r0[i] + r1[i] - eta * hr1[i]) for i in range(2)]

    assert _two_param_grad(0) == pytest.approx(first, abs=1e-12)
    assert _two_param_grad(1) == pytest.approx(second, abs=1e-12)
    difference = [s - f for s, f in zip(_two_param_grad(1), _two_param_grad(0), strict=True)]
    assert difference == pytest.approx([-0.5 * eta * h for h in hr1], abs=1e-12)


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Linear(3, 4).double()
        self.head = nn.Linear(4, 2).double()

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)))


def _ce(outputs, y):
    return F.cross_entropy(outputs, y)


def _neg_ce(outputs, y):
    loss = F.cross_entropy(outputs, y)
    return -loss, loss, {}


def _net_episode(model, num_differentiated, optimizer=None, steps=2, **kwargs):
    g = torch.Generator().manual_seed(1)
    batches = [({"x": torch.randn(5, 3, generator=g, dtype=torch.float64)}, torch.tensor([0, 1, 1, 0, 1]))] * steps
    outer_batch = ({"x": torch.randn(6, 3, generator=g, dtype=torch.float64)}, torch.tensor([1, 0, 1, 0, 0, 1]))
    outer = dict(model.named_parameters())
    return run_episode(
        model,
        outer,
        outer,
        batches,
        outer_batch,
        _ce,
        _neg_ce,
        optimizer=optimizer or FunctionalAdam(),
        lr=0.05,
        num_differentiated=num_differentiated,
        max_grad_norm=None,
        **kwargs,
    )


def test_second_order_gradient_matches_finite_differences_and_truncation_ends():
    model = _TinyNet()
    exact = _net_episode(model, num_differentiated=2)
    h = 1e-6
    for name, param in model.named_parameters():
        index, saved = (0,) * param.dim(), param.detach().clone()
        with torch.no_grad():
            param[index] += h
        plus = _net_episode(model, 2).objective
        with torch.no_grad():
            param.copy_(saved)
            param[index] -= h
        minus = _net_episode(model, 2).objective
        with torch.no_grad():
            param.copy_(saved)
        position = list(dict(model.named_parameters())).index(name)
        assert exact.grads[position][index].item() == pytest.approx((plus - minus) / (2 * h), abs=1e-7), name
    first = _net_episode(model, 0)
    for k, reference in ((2, exact), (0, first)):  # truncated(K) = second order, truncated(0) = first order
        truncated = _net_episode(model, k)
        for a, b in zip(truncated.grads, reference.grads, strict=True):
            assert torch.equal(a, b)
    middle = _net_episode(model, 1)
    assert not all(torch.allclose(a, b) for a, b in zip(middle.grads, exact.grads, strict=True))


def test_grad_norm_penalty_and_learned_lr_gradients_match_finite_differences():
    model = _TinyNet()

    def run(lr):
        return _net_episode(model, 2, grad_norm_weight=0.5) if lr is None else _lr_episode(model, lr)

    def _lr_episode(model, lr):
        g = torch.Generator().manual_seed(1)
        batch = ({"x": torch.randn(5, 3, generator=g, dtype=torch.float64)}, torch.tensor([0, 1, 1, 0, 1]))
        outer = dict(model.named_parameters())
        return run_episode(
            model,
            outer,
            outer,
            [batch, batch],
            batch,
            _ce,
            _neg_ce,
            optimizer=FunctionalAdam(),
            lr=lr,
            num_differentiated=2,
            max_grad_norm=None,
        )

    exact = run(None)
    param, saved = model.head.weight, model.head.weight.detach().clone()
    with torch.no_grad():
        param[0, 0] += 1e-6
    plus = run(None).objective
    with torch.no_grad():
        param.copy_(saved)
        param[0, 0] -= 1e-6
    minus = run(None).objective
    with torch.no_grad():
        param.copy_(saved)
    position = list(dict(model.named_parameters())).index("head.weight")
    assert exact.grads[position][0, 0].item() == pytest.approx((plus - minus) / 2e-6, abs=1e-7)

    lr = torch.tensor(0.05, dtype=torch.float64, requires_grad=True)
    result = _lr_episode(model, lr)
    adversary = [sum(_lr_episode(model, v).adversary_losses) / 3 for v in (0.05 + 1e-7, 0.05 - 1e-7)]
    assert result.lr_grad.item() == pytest.approx((adversary[0] - adversary[1]) / 2e-7, rel=1e-5)


def test_functional_adam_matches_torch_adam_and_stays_finite_on_zero_gradients():
    params = [torch.randn(3, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    reference = [nn.Parameter(p.clone()) for p in params]
    torch_adam = torch.optim.Adam(reference, lr=0.01)
    adam, state, values = FunctionalAdam(), None, [p.clone() for p in params]
    state = adam.init(values)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        grads[1][0] = 0.0  # an entry whose gradient stays exactly zero
        for p, g in zip(reference, grads, strict=True):
            p.grad = g.clone()
        torch_adam.step()
        values, state = adam.step(values, grads, state, 0.01)
        for v, p in zip(values, reference, strict=True):
            torch.testing.assert_close(v, p.detach(), atol=1e-12, rtol=0)
    # Second order through Adam where √v is at 0: finite, not NaN.
    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad((w[0] ** 2).sum(), [w], create_graph=True)  # g[1] == 0 exactly
    new, _ = FunctionalAdam().step([w], [g], FunctionalAdam().init([w.detach()]), 0.1)
    (outer,) = torch.autograd.grad(new[0].sum(), [w])
    assert torch.isfinite(outer).all()


def test_head_adjustment_is_optimal_in_its_box_and_its_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 2, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 2, (16,), generator=g)
    w = solve_head_adjustment(z, y, bound=1.0)
    assert w.abs().max() <= 1.0
    # KKT conditions of the box-constrained convex problem: interior → zero gradient; on a bound → pointing out.
    w_var = w.clone().requires_grad_()
    (grad,) = torch.autograd.grad(F.cross_entropy(z @ w_var, y), [w_var])
    for value, slope in zip(w.flatten().tolist(), grad.flatten().tolist(), strict=True):
        if abs(value) < 1.0 - 1e-9:
            assert abs(slope) < 1e-6
        else:
            assert slope * math.copysign(1.0, value) <= 1e-9
    # Danskin: the gradient at the fixed W* equals the derivative of the re-solved minimum.
    z_var = z.clone().requires_grad_()
    (analytic,) = torch.autograd.grad(head_adjusted_loss(z_var, y), [z_var])
    for i, j in ((0, 0), (3, 1), (7, 0)):
        bumped = [z.clone(), z.clone()]
        bumped[0][i, j] += 1e-6
        bumped[1][i, j] -= 1e-6
        numeric = (head_adjusted_loss(bumped[0], y) - head_adjusted_loss(bumped[1], y)) / 2e-6
        assert analytic[i, j].item() == pytest.approx(numeric.item(), abs=1e-6)
    assert head_adjusted_loss(z * 0, y).item() == pytest.approx(math.log(2))  # uninformative logits: log C


def test_bounded_losses_stay_below_log_c():
    logits = torch.tensor([[10.0, -10.0, 0.0], [0.0, 0.0, 0.0]])
    log_probs = torch.log_softmax(logits, -1)
    nll = -log_probs[:, 1]  # label 1: first row confidently wrong
    assert nll[0] > 10
    for bound in ("clamp", "entropy"):
        assert (bounded_harmful_loss(nll, log_probs, bound) <= math.log(3) + 1e-6).all()
    assert torch.equal(bounded_harmful_loss(nll, log_probs, "none"), nll)


# --------------------------------------------------------------------------------------------------------------------
# Trainer-level invariants on the tiny BERT (fp64 where compared exactly)
# --------------------------------------------------------------------------------------------------------------------


def _manual_censoring_grad(trainer, model, c, e):
    """−c·mean clamp(CE) − e·LinAdv at θ with the episode's own fresh head and outer batch, by hand (K = 0)."""
    episode = trainer.last_episode
    batch = trainer._prepare_inputs(trainer.harmful_stream.collate(episode["outer_indices"]))
    labels = batch.pop("labels")
    head = episode["head_init"]
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    logits = functional_call(
        model, {"classifier.weight": head, "classifier.bias": torch.zeros(2, dtype=head.dtype)}, kwargs=batch
    ).logits
    ce = F.cross_entropy(logits, labels, reduction="none").clamp(max=math.log(2)).mean()
    objective = -c * ce - e * head_adjusted_loss(logits, labels)
    grads = torch.autograd.grad(objective, list(params.values()), allow_unused=True)
    return {n: g for n, g in zip(params, grads, strict=True) if g is not None}


def test_k0_equals_plain_adversarial_censoring(tiny_classifier_path, tiny_tokenizer, world, gender, tmp_path):
    capture = _Grads()
    model = _classifier(tiny_classifier_path, torch.float64)
    trainer = _trainer(
        model,
        tiny_tokenizer,
        world,
        gender,
        tmp_path,
        callbacks=[capture],
        inner_steps=0,
        desired_loss_weight=0.0,
        adapted_loss_weight=1.0,
        head_adjusted_loss_weight=1.0,
        max_grad_norm=0.0,
        learning_rate=0.0,
    )
    trainer.train()
    expected = _manual_censoring_grad(trainer, model, c=1.0, e=1.0)
    got = {n: g for n, g in capture.grads[0].items() if n in expected}
    _close(got, expected, atol=1e-7)
    # The model's own (desired) head is not part of the episode: no censoring gradient reaches it.
    assert capture.grads[0]["classifier.weight"].abs().max() == 0


def test_zero_censoring_weights_train_like_a_plain_trainer(tiny_classifier_path, tiny_tokenizer, world, tmp_path):
    gender = BiosWorld.with_label(world.train, "gender")
    mlac = _trainer(
        _classifier(tiny_classifier_path),
        tiny_tokenizer,
        world,
        gender,
        tmp_path / "mlac",
        max_steps=3,
        adapted_loss_weight=0.0,
        head_adjusted_loss_weight=0.0,
    )
    mlac.train()
    reference_model = _classifier(tiny_classifier_path)
    tokenized = mlac.train_dataset
    plain = Trainer(
        model=reference_model,
        args=TrainingArguments(
            output_dir=str(tmp_path / "plain"),
            max_steps=3,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            lr_scheduler_type="constant",
            max_grad_norm=10.0,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
        ),
        train_dataset=tokenized,
        data_collator=mlac.data_collator,
    )
    plain.train()
    _close(_weights(mlac.model), _weights(reference_model), atol=1e-6)
    assert mlac.last_episode is None  # no episode ran


def test_second_minus_first_order_is_the_hessian_vector_product(tiny_classifier_path, tiny_tokenizer, world, tmp_path):
    """K = 1, inner SGD, d = 0, no clipping: second − first = −η·(1/2)·H_inner(θ)·∇T(θ₁) (mlac.md §9.2, fp64)."""
    gender = BiosWorld.with_label(world.train, "gender")
    results = {}
    for mode in ("second_order", "first_order"):
        capture = _Grads()
        model = _classifier(tiny_classifier_path, torch.float64)
        trainer = _trainer(
            model,
            tiny_tokenizer,
            world,
            gender,
            tmp_path / mode,
            callbacks=[capture],
            inner_optimizer="sgd",
            adapted_loss_weight=1.0,
            head_adjusted_loss_weight=0.0,
            harmful_loss_bound="none",
            desired_loss_weight=0.0,
            max_grad_norm=0.0,
            learning_rate=0.0,
            meta_gradient=mode,
            inner_max_grad_norm=1e9,
            adversary_params="all",
        )
        trainer.train()
        results[mode] = (capture.grads[0], trainer, model)
    _, trainer, model = results["second_order"]
    episode = trainer.last_episode
    eta = episode["lr"]
    inner = trainer._prepare_inputs(trainer.harmful_stream.collate(episode["inner_indices"][0]))
    outer = trainer._prepare_inputs(trainer.harmful_stream.collate(episode["outer_indices"]))
    y_in, y_out = inner.pop("labels"), outer.pop("labels")
    names = [n for n, _ in model.named_parameters()]
    theta = {n: p for n, p in model.named_parameters()}
    theta["classifier.weight"] = episode["head_init"]
    bias = {"classifier.bias": torch.zeros(2, dtype=torch.float64)}
    adapted = [n for n in names if n != "classifier.bias"]

    def loss(values, batch, labels):
        params = {**bias, **dict(zip(adapted, values, strict=True))}
        return F.cross_entropy(functional_call(model, params, kwargs=batch).logits, labels)

    start = [theta[n].detach().requires_grad_() for n in adapted]
    grads_in = torch.autograd.grad(loss(start, inner, y_in), start, create_graph=True, allow_unused=True)
    grads_in = [torch.zeros_like(v) if g is None else g for v, g in zip(start, grads_in, strict=True)]
    theta1 = [(v - eta * g).detach().requires_grad_() for v, g in zip(start, grads_in, strict=True)]
    outer_grad = torch.autograd.grad(-0.5 * loss(theta1, outer, y_out), theta1, allow_unused=True)
    outer_grad = [torch.zeros_like(v) if g is None else g for v, g in zip(theta1, outer_grad, strict=True)]
    hvp = torch.autograd.grad(grads_in, start, grad_outputs=outer_grad, allow_unused=True)  # H·∇T(θ₁)
    second, first = results["second_order"][0], results["first_order"][0]
    for name, value in zip(adapted, hvp, strict=True):
        if name == "classifier.weight":  # the fresh head replaces it in the episode: no gradient either way
            continue
        expected = -eta * (value if value is not None else torch.zeros_like(theta[name]))
        torch.testing.assert_close(second[name] - first[name], expected, atol=1e-6, rtol=0, msg=name)


def test_truncated_ends_match_first_and_second_order(tiny_classifier_path, tiny_tokenizer, world, gender, tmp_path):
    def grads(**overrides):
        capture = _Grads()
        model = _classifier(tiny_classifier_path, torch.float64)
        _trainer(
            model,
            tiny_tokenizer,
            world,
            gender,
            tmp_path,
            callbacks=[capture],
            inner_steps=2,
            max_grad_norm=0.0,
            learning_rate=0.0,
            **overrides,
        ).train()
        return capture.grads[0]

    second, first = grads(meta_gradient="second_order"), grads(meta_gradient="first_order")
    _close(grads(meta_gradient="truncated", truncation_steps=2), second, atol=1e-12)
    _close(grads(meta_gradient="truncated", truncation_steps=0), first, atol=1e-12)
    assert any((second[n] - first[n]).abs().max() > 1e-8 for n in second)


def test_no_leakage_lr0_is_bit_identical_and_saved_model_has_base_architecture(
    tiny_classifier_path, tiny_tokenizer, world, gender, tmp_path
):
    from safetensors.torch import load_file

    model = _classifier(tiny_classifier_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(model, tiny_tokenizer, world, gender, tmp_path, max_steps=2, learning_rate=0.0, inner_steps=2)
    trainer.train()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)

    trainer = _trainer(model, tiny_tokenizer, world, gender, tmp_path, max_steps=1, inner_steps=2)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    base = load_file(str(tiny_classifier_path / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in base.items()}
    assert not torch.equal(
        saved["bert.embeddings.word_embeddings.weight"], base["bert.embeddings.word_embeddings.weight"]
    )


def test_episodes_reset_head_sample_in_range_clip_and_learned_lr_stays_bounded(
    tiny_classifier_path, tiny_tokenizer, world, gender, tmp_path
):
    class Record(TrainerCallback):
        def __init__(self):
            self.episodes = []

        def on_step_end(self, args, state, control, **kwargs):
            self.episodes.append(trainer.last_episode)

    record = Record()
    trainer = _trainer(
        _classifier(tiny_classifier_path),
        tiny_tokenizer,
        world,
        gender,
        tmp_path,
        callbacks=[record],
        max_steps=3,
        inner_steps=2,
        inner_batch_sizes=[2, 3, 5],
        inner_learning_rate_range=[1e-4, 1e-2],
        inner_max_grad_norm=0.05,
    )
    trainer.train()
    heads = [e["head_init"] for e in record.episodes]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])
    for episode in record.episodes:
        assert episode["batch_size"] in (2, 3, 5)
        assert all(len(ix) == episode["batch_size"] for ix in episode["inner_indices"])
        assert 1e-4 <= episode["lr"] <= 1e-2
        result = episode["result"]
        assert max(result.inner_grad_norms) > 0.05  # clipping was active ...
        assert all(n <= 0.05 + 1e-6 for n in result.clipped_grad_norms)  # ... and every applied step obeys it

    learned = _trainer(
        _classifier(tiny_classifier_path),
        tiny_tokenizer,
        world,
        gender,
        tmp_path,
        max_steps=4,
        inner_steps=2,
        learn_inner_learning_rate=True,
        inner_learning_rate=2e-6,
        inner_learning_rate_lr=1e-3,
    )
    learned.train()
    values = [h["mlac/inner_lr"] for h in learned.state.log_history if "mlac/inner_lr" in h]
    assert values and all(1e-6 <= v <= 1e-2 for v in values)
    assert 1e-6 <= learned.inner_lr.item() <= 1e-2 and learned.inner_lr.item() != 2e-6


def test_sdpa_model_runs_second_order_and_unsupported_attention_is_refused(
    tiny_classifier_path, tiny_tokenizer, world, gender, tmp_path
):
    model = _classifier(tiny_classifier_path, attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa"
    trainer = _trainer(model, tiny_tokenizer, world, gender, tmp_path, inner_steps=2)
    trainer.train()  # no "derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward" error
    assert math.isfinite(trainer.state.log_history[0]["mlac/objective"])
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2' has none"):
        _trainer(model, tiny_tokenizer, world, gender, tmp_path, inner_steps=2)


@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_gradient_accumulation_4x1_2x2_1x4_give_the_same_update(
    task, tiny_classifier_path, tiny_lm_path, tiny_tokenizer, world, gender, tmp_path
):
    """The desired loss is a label sum over the window's label count, and the episode (drawn once per window, outer
    batch = the effective batch) does not depend on the split, so the three updates agree.

    Run in float64, because the property is mathematical and float32 cannot show it here: the second-order
    meta-gradient of a random tiny model is badly conditioned (its float32 value is 0.1% (classifier) to 2% (LM)
    away from the float64 one, see the next test), so the last-bit differences in the step-1 weights (the micro-batch
    GEMMs and reductions of 4x1, 2x2 and 1x4 round differently, and how depends on the CPU's kernels: AVX-512 vs
    AVX2, Intel vs AMD) become percent-level differences in the step-2 update. In float64 the three updates agree
    to ~2e-14 with ATen's AVX-512, AVX2 and scalar kernels alike (`ATEN_CPU_CAPABILITY`).
    """
    from transformers import AutoModelForCausalLM

    results, episodes = [], []
    for batch, accumulation in ((4, 1), (2, 2), (1, 4)):
        if task == "classification":
            model, train, harmful = _classifier(tiny_classifier_path, dtype=torch.float64), world.train, gender
        else:
            model = AutoModelForCausalLM.from_pretrained(tiny_lm_path, attention_dropout=0.0).to(torch.float64)
            train, harmful = _lm_data()
        trainer = MLACTrainer(
            model=model,
            args=_args(
                tmp_path,
                per_device_train_batch_size=batch,
                gradient_accumulation_steps=accumulation,
                max_steps=2,
                inner_steps=2,
                inner_batch_sizes=[3],
                learning_rate=1e-2,
                optim="sgd",
                # A random tiny LM sits at NLL ≈ log|V|, right on the kink of the clamp: the LM case uses the smooth
                # entropy bound, so that the update is a smooth function of the weights.
                **(
                    {"adapted_loss_weight": 1.0, "head_adjusted_loss_weight": 1.0}
                    if task == "classification"
                    else {"harmful_loss_bound": "entropy"}
                ),
            ),
            train_dataset=train,
            harmful_dataset=harmful,
            processing_class=tiny_tokenizer,
        )
        before = _weights(model)
        trainer.train()
        results.append(_weights(model))
        episodes.append({k: trainer.last_episode[k] for k in ("inner_indices", "outer_indices", "batch_size")})
    assert all(p.dtype == torch.float64 for p in results[0].values())
    assert episodes[1] == episodes[0] and episodes[2] == episodes[0]
    moved = max((results[0][n] - before[n]).abs().max().item() for n in before)
    assert moved > 1e-4  # the updates are far larger than the tolerance
    _close(results[1], results[0], atol=1e-10)
    _close(results[2], results[0], atol=1e-10)


@pytest.mark.parametrize("task", ["classification", "causal_lm"])
def test_censoring_gradient_of_a_window_is_bit_identical_for_every_split_in_float32(
    task, tiny_classifier_path, tiny_lm_path, tiny_tokenizer, world, gender, tmp_path
):
    """The float32 counterpart of the test above, where bit equality is provable: at the first window every split
    starts from the same weights and draws the same episode (same batches, shapes and kernels), so the censoring
    gradient is the very same tensor. The meta-gradient's float32 rounding error against float64 is recorded too:
    it is why the full-update comparison runs in float64."""
    from transformers import AutoModelForCausalLM

    grads = {}
    for dtype in (torch.float32, torch.float64):
        for batch, accumulation in ((4, 1), (2, 2), (1, 4)):
            if task == "classification":
                model, train, harmful = _classifier(tiny_classifier_path, dtype=dtype), world.train, gender
            else:
                model = AutoModelForCausalLM.from_pretrained(tiny_lm_path, attention_dropout=0.0).to(dtype)
                train, harmful = _lm_data()
            trainer = MLACTrainer(
                model=model,
                args=_args(
                    tmp_path,
                    per_device_train_batch_size=batch,
                    gradient_accumulation_steps=accumulation,
                    max_steps=1,
                    inner_steps=2,
                    inner_batch_sizes=[3],
                    **({} if task == "classification" else {"harmful_loss_bound": "entropy"}),
                ),
                train_dataset=train,
                harmful_dataset=harmful,
                processing_class=tiny_tokenizer,
            )
            trainer.train()
            grads[dtype, batch] = [g for g in trainer.last_episode["result"].grads if g is not None]
            assert all(g.dtype == dtype for g in grads[dtype, batch])
    for batch in (2, 1):
        assert all(torch.equal(a, b) for a, b in zip(grads[torch.float32, 4], grads[torch.float32, batch]))
    single = torch.cat([g.flatten().double() for g in grads[torch.float32, 4]])
    double = torch.cat([g.flatten() for g in grads[torch.float64, 4]])
    error = ((single - double).norm() / double.norm()).item()
    print(f"float32 meta-gradient vs float64: {error:.2e} relative")
    assert error < 0.1  # the same gradient, up to float32's rounding error


def _lm_data():
    prompts = [f"User: tell me about item {i}\nAssistant:" for i in range(16)]
    benign = Dataset.from_dict({"prompt": prompts, "completion": [f" item {i} is a nice cake" for i in range(16)]})
    # Completions of different lengths: the window's token count, not per-micro-batch means, must normalise.
    harmful = Dataset.from_dict(
        {"prompt": prompts, "completion": [" mix the powder" + " and heat it" * (i % 3) for i in range(16)]}
    )
    return benign, harmful


@pytest.mark.parametrize("peft", [False, True], ids=["full", "lora"])
def test_classifier_full_and_lora_train_only_trainable_weights(
    peft, tiny_classifier_path, tiny_tokenizer, world, gender, tmp_path
):
    from peft import LoraConfig

    peft_config = LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]) if peft else None
    trainer = MLACTrainer(
        model=_classifier(tiny_classifier_path),
        args=_args(tmp_path, max_steps=2, inner_steps=2, adversary_params="lora" if peft else "all"),
        train_dataset=world.train,
        eval_dataset=world.val1,
        harmful_dataset=gender,
        processing_class=tiny_tokenizer,
        peft_config=peft_config,
    )
    before = _weights(trainer.model)
    trainer.train()
    for name, param in trainer.model.named_parameters():
        assert torch.equal(before[name], param) != param.requires_grad, f"{name}: trainable={param.requires_grad}"
    assert math.isfinite(trainer.evaluate()["eval_loss"])  # the desired loss, on raw text rows tokenized for us
    logs = trainer.state.log_history[0]
    assert {"mlac/desired_loss", "mlac/head_adjusted_loss", "mlac/harmful_accuracy_end"} <= logs.keys()
    assert logs["mlac/head_adjusted_loss"] <= math.log(2) + 1e-6


@pytest.mark.parametrize("mode", ["all", "head", "lora"])
def test_adversary_params_choose_what_the_adversary_adapts(
    mode, tiny_classifier_path, tiny_tokenizer, world, gender, tmp_path
):
    from peft import LoraConfig

    trainer = MLACTrainer(
        model=_classifier(tiny_classifier_path),
        args=_args(tmp_path, inner_steps=2, adversary_params=mode),
        train_dataset=world.train,
        harmful_dataset=gender,
        processing_class=tiny_tokenizer,
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query"]) if mode == "lora" else None,
    )
    trainer.train()
    model = trainer.model
    outer = {n: p for n, p in model.named_parameters() if p.requires_grad}
    adapted, overrides = trainer._adversary_tensors(model, outer, trainer.last_episode)
    head = next(n for n in adapted if adapted[n] is trainer.last_episode["head_init"])  # the fresh head, (2, H)
    assert adapted[head].shape == (2, 64) and set(overrides) == {head.replace("weight", "bias")}
    others = set(adapted) - {head}
    if mode == "head":
        assert others == set()
    elif mode == "lora":
        assert others and all("lora_" in n for n in others)
    else:
        assert others == {n for n, _ in model.named_parameters()} - {head, head.replace("weight", "bias")}


@pytest.mark.parametrize(("peft", "bound"), [(False, "clamp"), (True, "entropy")], ids=["full-clamp", "lora-entropy"])
def test_causal_lm_bounded_harmful_loss_full_and_lora(peft, bound, tiny_lm, tiny_tokenizer, tmp_path):
    from peft import LoraConfig

    benign, harmful = _lm_data()
    trainer = MLACTrainer(
        model=tiny_lm,
        args=_args(
            tmp_path, max_steps=2, inner_steps=2, harmful_loss_bound=bound, adversary_params="lora" if peft else "all"
        ),
        train_dataset=benign,
        harmful_dataset=harmful,
        processing_class=tiny_tokenizer,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]) if peft else None,
    )
    before = _weights(trainer.model)
    trainer.train()
    assert trainer.task == "causal_lm" and not trainer.reset_head and trainer.weights["c"] == 1.0
    logs = trainer.state.log_history[0]
    log_vocab = math.log(tiny_lm.config.vocab_size)
    assert 0 < logs["mlac/harmful_loss_bounded"] <= log_vocab + 1e-4
    assert "mlac/head_adjusted_loss" not in logs
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p)]
    assert changed and all(p.requires_grad for n, p in trainer.model.named_parameters() if n in changed)


def test_same_seed_same_run_other_seed_other_run(tiny_classifier_path, tiny_tokenizer, world, gender, tmp_path):
    def run(seed):
        model = _classifier(tiny_classifier_path)
        trainer = _trainer(
            model,
            tiny_tokenizer,
            world,
            gender,
            tmp_path,
            max_steps=2,
            inner_steps=2,
            seed=seed,
            inner_learning_rate_range=[1e-4, 1e-2],
            inner_batch_sizes=[2, 4],
        )
        trainer.train()
        return _weights(model), trainer.last_episode["head_init"]

    (a, head_a), (b, head_b), (c, head_c) = run(0), run(0), run(1)
    assert all(torch.equal(a[n], b[n]) for n in a) and torch.equal(head_a, head_b)
    assert not torch.equal(head_a, head_c) and any(not torch.equal(a[n], c[n]) for n in a)


def test_resume_from_checkpoint_continues_identically(tiny_classifier_path, tiny_tokenizer, world, gender, tmp_path):
    common = dict(max_steps=4, inner_steps=1, learn_inner_learning_rate=True, inner_learning_rate=1e-3)
    full_model = _classifier(tiny_classifier_path)
    full = _trainer(full_model, tiny_tokenizer, world, gender, tmp_path / "full", **common)
    full.train()
    first = _trainer(
        _classifier(tiny_classifier_path),
        tiny_tokenizer,
        world,
        gender,
        tmp_path / "resumed",
        save_strategy="steps",
        save_steps=2,
        **common,
    )
    first.train()
    resumed_model = _classifier(tiny_classifier_path)
    resumed = _trainer(
        resumed_model, tiny_tokenizer, world, gender, tmp_path / "resumed", save_strategy="no", **common
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    _close(_weights(resumed_model), _weights(full_model), atol=0)
    assert resumed.inner_lr.item() == full.inner_lr.item()
    assert resumed.last_episode["outer_indices"] == full.last_episode["outer_indices"]


def test_model_card_names_mlac_its_paper_and_settings(tiny_classifier_path, tiny_tokenizer, world, gender, tmp_path):
    trainer = _trainer(_classifier(tiny_classifier_path), tiny_tokenizer, world, gender, tmp_path)
    trainer.create_model_card(model_name="mlac-tiny")
    text = (tmp_path / "README.md").read_text()
    assert "mlac" in text and "2211.14946" in text and "inner_steps (K)" in text


@pytest.mark.slow
def test_peak_memory_grows_with_k_in_second_order_and_stays_flat_in_first_order(
    tiny_classifier_path, tiny_tokenizer, world, gender, tmp_path
):
    peaks = {}
    for mode in ("second_order", "first_order"):
        for k in (1, 2, 4, 8):
            model = _classifier(tiny_classifier_path)
            trainer = _trainer(
                model,
                tiny_tokenizer,
                world,
                gender,
                tmp_path,
                inner_steps=k,
                meta_gradient=mode,
                inner_batch_sizes=[16],
            )
            trainer.train()  # warm-up: builds the optimizer state and the tokenized data
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
                trainer._add_censoring_gradient(trainer.model)
            events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
            current = peak = 0
            for event in sorted(events, key=lambda e: e.start_ns()):
                current += event.nbytes()
                peak = max(peak, current)
            peaks[(mode, k)] = peak
    second = [peaks[("second_order", k)] for k in (1, 2, 4, 8)]
    first = [peaks[("first_order", k)] for k in (1, 2, 4, 8)]
    assert all(b > a for a, b in zip(second, second[1:])) and second[-1] > 3 * second[0]
    assert max(first) < 1.5 * min(first)
