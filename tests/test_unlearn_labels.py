"""WHP generic labels: the invariants of shared/reference/whp_unlearning.md §12, with the byte-level BPE tokenizer."""

import copy
import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_immunize.core.tokens import surface_forms
from hf_immunize.data.toy import make_book_world
from hf_immunize.methods.unlearn import build_generic_labels, load_anchored_terms, merge_anchored_terms, use_alpha
from hf_immunize.methods.unlearn.anchors import AnchorIndex, translate_block
from hf_immunize.methods.unlearn.labels import alpha_column, generic_labels, make_blocks

BLOCK = 48


@pytest.fixture(scope="module")
def world():
    return make_book_world(seed=0, n_passages=40)


@pytest.fixture(scope="module")
def blocks(world, tiny_tokenizer):
    return make_blocks(tiny_tokenizer, world.forget["text"], BLOCK)


@pytest.fixture(scope="module")
def translated(world, tiny_tokenizer, blocks):
    index = AnchorIndex(tiny_tokenizer, world.anchored_terms)
    return [translate_block(o, index, np.random.default_rng([0, b])) for b, o in enumerate(blocks)]


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ---- dictionary --------------------------------------------------------------------------------------------------


def test_merge_rules_drop_composite_keys_and_possessives_and_dedupe_values():
    merged = merge_anchored_terms(
        {" Harry ": ["Jon", " Jon "], "Potter": "Smith", "Harry Potter": "Jon Smith", "Harry's": "Jon's", "Ron": "Tim"}
    )
    assert merged == {"Harry": ["Jon"], "Potter": ["Smith"], "Ron": ["Tim"]}
    assert merge_anchored_terms({"Harry Stone": "Jon Rock"}) == {"Harry Stone": ["Jon Rock"]}  # "Stone" is no key


def test_load_anchored_terms_from_file_string_and_clear_errors(tmp_path):
    path = tmp_path / "terms.json"
    path.write_text(json.dumps({"Dorothy": ["Mary", "Anne"], "Zeb": "Tom"}))
    assert load_anchored_terms(path) == {"Dorothy": ["Mary", "Anne"], "Zeb": ["Tom"]}
    assert load_anchored_terms('{"Oz": "the land"}') == {"Oz": ["the land"]}
    bad = tmp_path / "bad.json"
    bad.write_text('{"Dorothy": ["Mary",]}')
    with pytest.raises(ValueError, match=r"bad\.json.*not valid JSON.*line 1"):
        load_anchored_terms(bad)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_anchored_terms(tmp_path / "list.json")
    with pytest.raises(ValueError, match="'Zeb'.*substitutes"):
        load_anchored_terms({"Zeb": []})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_anchored_terms(str(tmp_path / "missing.json"))


def test_bpe_surface_variants_all_match_and_space_led_key_gets_space_led_value(tiny_tokenizer):
    tok = tiny_tokenizer
    index = AnchorIndex(tok, {"Dorothy": ["Mary"]})
    for text in ["Dorothy ran.", "Then Dorothy ran.", "Then\nDorothy ran."]:
        block = translate_block(_ids(tok, text), index, np.random.default_rng(0))
        assert len(block.spans) == 1, text
        assert tok.decode(block.translated) == text.replace("Dorothy", "Mary")
    forms = surface_forms(tok, "Mary")
    block = translate_block(_ids(tok, "Then Dorothy ran."), index, np.random.default_rng(0))
    i, k, j, m, _ = block.spans[0]
    assert tuple(block.translated[j : j + m]) == forms[" "] != forms[""]  # " Dorothy" -> " Mary", never "Mary"


def test_longest_key_wins(tiny_tokenizer):
    """Pins our rule (the reference takes the first key in dictionary order)."""
    index = AnchorIndex(tiny_tokenizer, {"Zeb": ["Tom"], "Zeb Hugson": ["Tom Miller"]})
    block = translate_block(_ids(tiny_tokenizer, "Then Zeb Hugson came."), index, np.random.default_rng(0))
    assert tiny_tokenizer.decode(block.translated) == "Then Tom Miller came."


# ---- blocks and alignment ----------------------------------------------------------------------------------------


def test_blocks_are_full_non_overlapping_and_drop_the_tail(world, tiny_tokenizer, blocks):
    stream = _ids(tiny_tokenizer, "\n\n".join(world.forget["text"]))
    assert len(blocks) == len(stream) // BLOCK and len(stream) % BLOCK  # a tail exists and was dropped
    assert sum(blocks, []) == stream[: len(blocks) * BLOCK]


def test_alignment_lengths_and_masked_positions(translated):
    """Invariants 1 and 2 on every block of the toy book."""
    assert sum(len(b.spans) for b in translated) > 50 and any(s[4] for b in translated for s in b.spans)
    for b in translated:
        T = len(b.original)
        assert len(b.mapping) == T
        assert len(b.translated) == T + sum(m - k for _, k, _, m, _ in b.spans)
        kept = [x for x in b.mapping if x != -1]
        assert all(x < y for x, y in zip(kept, kept[1:]))
        key_tokens = {p for i, k, *_ in b.spans for p in range(i, i + k)}
        last_tokens = {i + k - 1 for i, k, *_ in b.spans}
        expected_masked = {p for i, k, *_ in b.spans for p in range(i, i + k - 1)}
        expected_masked |= {i - 1 for i, k, j, m, repeated in b.spans if repeated and i > 0}
        assert {p for p, x in enumerate(b.mapping) if x == -1} == expected_masked
        for p, x in enumerate(b.mapping):
            if x != -1 and p not in key_tokens:
                assert b.translated[x] == b.original[p]  # copied tokens
        for i, k, j, m, _ in b.spans:
            if i + k - 1 not in expected_masked:
                assert b.mapping[i + k - 1] == j + m - 1  # last key token <-> last value token
        assert last_tokens <= key_tokens


def test_one_substitute_per_key_per_block_and_seeded(world, tiny_tokenizer, blocks):
    index = AnchorIndex(tiny_tokenizer, world.anchored_terms)
    again = [translate_block(o, index, np.random.default_rng([0, b])) for b, o in enumerate(blocks)]
    other = [translate_block(o, index, np.random.default_rng([1, b])) for b, o in enumerate(blocks)]
    first = [translate_block(o, index, np.random.default_rng([0, b])) for b, o in enumerate(blocks)]
    assert [b.translated for b in again] == [b.translated for b in first]
    assert [b.translated for b in other] != [b.translated for b in first]
    substitutes_seen = 0
    for b in first:
        for i, k, j, m, _ in b.spans:
            key = tiny_tokenizer.decode(b.original[i : i + k]).strip()
            value = tiny_tokenizer.decode(b.translated[j : j + m]).strip()
            assert value == world.anchored_terms[key][b.choices[key]]  # every occurrence: the block's one draw
            substitutes_seen += 1
    assert substitutes_seen > 50


# ---- labels from logits ------------------------------------------------------------------------------------------


def _random_logits(block, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(block.translated), vocab, generator=g), torch.randn(len(block.original), vocab, generator=g)


def test_label_positions_follow_the_mapping(translated, tiny_tokenizer):
    """Invariant 3."""
    for b in translated[:10]:
        zb, zr = _random_logits(b, len(tiny_tokenizer))
        labels = generic_labels(zb, zr, b, 5.0)
        assert labels.shape == (len(b.original),) and labels[0] == -100
        for p, x in enumerate(b.mapping[:-1]):
            assert (labels[p + 1] == -100) == (x == -1)


def test_forbidden_tokens_never_become_labels_after_insertion(translated, tiny_tokenizer):
    """Invariant 4: B strongly prefers the inserted substitutes' first tokens everywhere; none is ever a label after
    its insertion (the row mean replaces its logit), while before insertion it is."""
    block = next(b for b in translated if len(b.inserted) >= 2 and b.inserted[0][0] > 2)
    zb, zr = _random_logits(block, len(tiny_tokenizer))
    forbidden_tokens = sorted({t for _, tokens in block.inserted for t in tokens})
    zb[:, forbidden_tokens] += 50.0
    labels = generic_labels(zb, zr, block, 5.0)
    for p in range(len(block.original) - 1):
        q = block.mapping[p]
        if q == -1:
            continue
        banned = {t for j, tokens in block.inserted if j < q for t in tokens}
        assert int(labels[p + 1]) not in banned
    first_j = block.inserted[0][0]
    before = [p for p, q in enumerate(block.mapping[:-1]) if q != -1 and q <= first_j]
    assert any(int(labels[p + 1]) in forbidden_tokens for p in before)


def test_degenerate_row_breaks_mean_but_not_minus_inf(translated):
    block = next(b for b in translated if b.inserted)
    j, tokens = block.inserted[0]
    p = next(p for p, q in enumerate(block.mapping[:-1]) if q > j)
    V = max(t for _, ts in block.inserted for t in ts) + 10
    zb, zr = torch.zeros(len(block.translated), V), torch.zeros(len(block.original), V)
    zb[:, tokens[0]] = 10.0  # every other token sits below the row mean
    # Forbidden at p's translated position: the first tokens of every substitute inserted before it. Under "mean"
    # they all sit at the row mean, above every other token, so the label is one of them.
    forbidden = {t for q, ts in block.inserted if q < block.mapping[p] for t in ts}
    assert int(generic_labels(zb, zr, block, 5.0, "mean")[p + 1]) in forbidden
    assert int(generic_labels(zb, zr, block, 5.0, "-inf")[p + 1]) not in forbidden


def test_label_formula_and_extra_alpha_columns(translated, tiny_tokenizer):
    """Invariant 10 and the formula itself at one position."""
    block = next(b for b in translated if b.spans and b.spans[0][0] > 2)
    zb, zr = _random_logits(block, len(tiny_tokenizer), seed=3)
    rows = generic_labels(zb, zr, block, [5.0, 2.5, 10.0])
    for a, row in zip([5.0, 2.5, 10.0], rows, strict=True):
        assert torch.equal(row, generic_labels(zb, zr, block, a))
    p = next(p for p, q in enumerate(block.mapping[:-1]) if q != -1 and not any(j < q for j, _ in block.inserted))
    gb = zb[block.mapping[p]]
    assert int(rows[0][p + 1]) == int(torch.argmax(gb - 5.0 * torch.relu(zr[p] - gb)))


# ---- with real models --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_models(tiny_lm_path):
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    other = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return base, other


def test_alpha_zero_and_empty_dictionary_is_greedy_self_distillation(world, tiny_tokenizer, two_models):
    """Invariant 5, and R == B gives the same for any α."""
    base, other = two_models
    texts = world.forget["text"][:12]
    ds = build_generic_labels(other, tiny_tokenizer, texts, {}, baseline=base, block_size=BLOCK, alpha=0.0)
    same = build_generic_labels(base, tiny_tokenizer, texts, None, baseline=base, block_size=BLOCK, alpha=5.0)
    ids = torch.tensor(ds["input_ids"])
    with torch.no_grad():
        greedy = base(input_ids=ids).logits.argmax(-1)  # (N, T)
    labels = torch.tensor(ds["labels"])
    assert (labels[:, 0] == -100).all()
    assert torch.equal(labels[:, 1:], greedy[:, :-1])
    assert torch.equal(torch.tensor(same["labels"]), labels)
    assert not torch.equal(torch.tensor(ds[alpha_column(10.0)]), labels)  # R differs from B: α matters


def test_label_shift_matches_the_models_causal_loss(world, tiny_tokenizer, two_models):
    """Invariant 6: manual CE of B's logits at p against L[p] equals `model(input_ids, labels=labels).loss`."""
    base, other = two_models
    ds = build_generic_labels(
        other, tiny_tokenizer, world.forget["text"][:12], world.anchored_terms, baseline=base, block_size=BLOCK
    )
    ids, labels = torch.tensor(ds["input_ids"]), torch.tensor(ds["labels"])
    assert (labels == -100).sum() > labels.shape[0]  # anchors masked some positions
    with torch.no_grad():
        logits = base(input_ids=ids).logits  # (N, T, V)
        model_loss = base(input_ids=ids, labels=labels).loss
    target = labels[:, 1:]  # L[p] sits at labels[p + 1]
    manual = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(model_loss, manual)
    assert use_alpha(ds, 10.0)["labels"] == ds[alpha_column(10.0)]
    with pytest.raises(ValueError, match="alpha=7"):
        use_alpha(ds, 7.0)


def test_lora_reinforced_model_serves_as_both_b_and_r(world, tiny_tokenizer, tiny_lm_path):
    """With R a LoRA adapter on B, labels equal those from two separate full models (B, and R merged)."""
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_lm_path),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False),
    )
    texts = world.forget["text"][:12]
    kwargs = dict(block_size=BLOCK, seed=3)
    from_adapter = build_generic_labels(peft, tiny_tokenizer, texts, world.anchored_terms, **kwargs)
    merged = copy.deepcopy(peft).merge_and_unload()
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    from_two = build_generic_labels(merged, tiny_tokenizer, texts, world.anchored_terms, baseline=base, **kwargs)
    assert from_adapter["labels"] == from_two["labels"]
    assert from_adapter["input_ids"] == from_two["input_ids"]
    with pytest.raises(ValueError, match="`baseline` is required"):
        build_generic_labels(base, tiny_tokenizer, texts, {}, block_size=BLOCK)


def test_real_text_oz_book(shared_data, tiny_tokenizer, tiny_lm_path):
    """The Oz novel: its main anchors are found in every surface form the tokenizer gives them."""
    path = shared_data / "books" / "wizard_of_oz.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found: the real-text check needs the public-domain Oz novel")
    text = path.read_text(encoding="utf-8")[:6000]
    terms = {"Dorothy": ["Mary", "Anne"], "Zeb": ["Tom"], "Wizard": ["Magician"], "Eureka": ["Kitty"], "Jim": ["Ned"]}
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_path)
    ds = build_generic_labels(model, tiny_tokenizer, text.split("\n\n"), terms, baseline=model, block_size=64)
    index = AnchorIndex(tiny_tokenizer, load_anchored_terms(terms))
    replaced = sum(
        len(translate_block(o, index, np.random.default_rng([0, b])).spans) for b, o in enumerate(ds["input_ids"])
    )
    occurrences = sum(text.count(k) for k in terms)
    assert replaced >= 0.9 * occurrences - 5  # all but the few in the dropped tail or cut at a block edge
    assert all(len(row) == 64 and row[0] == -100 for row in ds["labels"])


def test_suggestion_helper_ranks_the_forget_worlds_own_words_first(tiny_tokenizer, tmp_path):
    """B knows the retain world (same templates, ordinary names); R = B + a LoRA adapter reinforced on the forget
    passages. The words R raises most are the invented names and the forget world's themes, not function words."""
    from trl import SFTTrainer

    from hf_immunize.methods.unlearn import reinforce, suggest_anchored_terms
    from hf_immunize.testing import tiny_causal_lm
    from hf_immunize.utils import sft_config

    world = make_book_world(seed=0, n_passages=60)
    base = tiny_causal_lm()
    args = dict(per_device_train_batch_size=16, learning_rate=3e-3, max_length=128)
    SFTTrainer(
        model=base,
        args=sft_config(tmp_path / "b", max_steps=60, **args),
        train_dataset=world.retain,
        processing_class=tiny_tokenizer,
    ).train()
    reinforced = reinforce(base, tiny_tokenizer, world.forget, sft_config(tmp_path / "r", max_steps=40, **args))
    ranked = suggest_anchored_terms(reinforced, tiny_tokenizer, world.forget["text"][:30], top_k=10)
    specific = {w for key in world.anchored_terms for w in key.split()} | set(world.theme_terms)
    assert sum(word in specific for word, _, _ in ranked) >= 8, ranked
    assert all(score > 0 and count >= 2 for _, score, count in ranked)
    assert not {"the", "and", "to", "a"} & {word for word, _, _ in ranked}
    # One long text read in windows of 24 tokens ranks the same kind of words first.
    windows = suggest_anchored_terms(
        reinforced, tiny_tokenizer, [" ".join(world.forget["text"][:30])], top_k=10, max_length=24
    )
    assert sum(word in specific for word, _, _ in windows) >= 7, windows
