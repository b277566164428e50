"""`hf_immunize.data.tokenize`: rows → token ids and labels, and padding, for Trainer-based methods."""

import pytest
import torch
from datasets import Dataset

from hf_immunize.data.tokenize import PadCollator, pad_token_id_of, tokenize_rows


def test_prompt_completion_rows_carry_loss_on_the_completion_and_eos_only(tiny_tokenizer):
    rows = Dataset.from_list([{"prompt": "User: hi\nAssistant:", "completion": " hello there"}])
    row = tokenize_rows(rows, tiny_tokenizer, "causal_lm", 64, "train_dataset")[0]
    prompt_len = len(tiny_tokenizer("User: hi\nAssistant:")["input_ids"])
    assert row["labels"][:prompt_len] == [-100] * prompt_len
    assert row["labels"][prompt_len:] == row["input_ids"][prompt_len:]
    assert row["input_ids"][-1] == tiny_tokenizer.eos_token_id
    cut = tokenize_rows(rows, tiny_tokenizer, "causal_lm", 5, "train_dataset")[0]
    assert len(cut["input_ids"]) == len(cut["labels"]) == 5


def test_text_rows_and_classifier_rows(tiny_tokenizer):
    text = tokenize_rows(Dataset.from_list([{"text": "a b c"}]), tiny_tokenizer, "causal_lm", 64, "x")[0]
    assert text["labels"] == text["input_ids"]
    bios = Dataset.from_list([{"text": "She is a nurse.", "label": 3}])
    row = tokenize_rows(bios, tiny_tokenizer, "classification", 64, "x")[0]
    assert row["labels"] == 3 and "text" not in row


@pytest.mark.parametrize(
    "rows, task, match",
    [
        ([{"text": "a"}], "classification", "harmful_dataset.*label"),
        ([{"question": "a"}], "causal_lm", "harmful_dataset.*prompt"),
    ],
)
def test_wrong_columns_name_the_dataset_and_what_was_found(rows, task, match, tiny_tokenizer):
    with pytest.raises(ValueError, match=match):
        tokenize_rows(Dataset.from_list(rows), tiny_tokenizer, task, 64, "harmful_dataset")
    with pytest.raises(ValueError, match="empty"):
        tokenize_rows(Dataset.from_list(rows).select([]), tiny_tokenizer, task, 64, "harmful_dataset")


def test_pad_collator_pads_ids_labels_and_masks_differently(tiny_tokenizer):
    pad = pad_token_id_of(tiny_tokenizer, None)
    batch = PadCollator(pad)(
        [
            {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [5, 6, 7]},
            {"input_ids": [8], "attention_mask": [1], "labels": [8]},
        ]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, pad, pad]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    classes = PadCollator(pad)([{"input_ids": [1], "label": 2}, {"input_ids": [1, 2], "label": 0}])
    assert torch.equal(classes["labels"], torch.tensor([2, 0]))
