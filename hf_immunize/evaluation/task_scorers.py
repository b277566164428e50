"""Task scorers: what the user's fine-tuning is for, measured by exact match, label match or a GSM8K answer."""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence

from .scorer_base import Scorer, _check_column, _check_completions

__all__ = ["ExactMatchScorer", "GSM8KScorer", "LabelMatchScorer"]


class ExactMatchScorer(Scorer):
    """Task accuracy: 1 when the completion, stripped of spaces and a final period, equals the reference answer.

    Only the first line of the completion counts. Comparison ignores case when `case_insensitive` (the Booster SST-2
    rule accepts either capitalisation).

    >>> ExactMatchScorer().score([" 7.", "8"], answers=["7", "9"])
    [1.0, 0.0]
    """

    name = "exact_match"

    def __init__(self, case_insensitive: bool = True):
        self.case_insensitive = case_insensitive

    def _norm(self, text: str) -> str:
        text = text.strip().split("\n")[0].strip().removesuffix(".").strip()
        return text.lower() if self.case_insensitive else text

    def score(self, completions: list[str], answers: list[str] | None = None, **columns) -> list[float]:
        completions = _check_completions(completions)
        answers = _check_column("answers", answers, len(completions))
        return [1.0 if self._norm(c) == self._norm(str(a)) else 0.0 for c, a in zip(completions, answers)]


class LabelMatchScorer(Scorer):
    """Classification accuracy (SST-2, AG News): 1 when the answer's first line is exactly the reference label.

    The completion is stripped, its first line taken and stripped again, and compared to the reference without regard
    to case. An answer that is none of the known `labels` is wrong (also via :meth:`predict`, which returns None).
    References must be known labels.

    >>> LabelMatchScorer().score(["Positive\\nbecause...", "positive!", "negative"], answers=["positive"] * 3)
    [1.0, 0.0, 0.0]
    """

    name = "label_match"

    def __init__(self, labels: Sequence[str] = ("positive", "negative")):
        if isinstance(labels, str) or not isinstance(labels, Sequence) or not labels:
            raise ValueError(f"`labels` must be a non-empty list of strings, got {labels!r}.")
        if not all(isinstance(label, str) and label.strip() for label in labels):
            raise ValueError(f"`labels` must be non-empty strings, got {list(labels)!r}.")
        folded = [label.strip().lower() for label in labels]
        if len(set(folded)) != len(folded):
            raise ValueError(f"`labels` must be distinct ignoring case, got {list(labels)!r}.")
        self.labels = tuple(labels)
        self._canonical = dict(zip(folded, self.labels))

    @staticmethod
    def _first_line(text: str) -> str:
        return text.strip().split("\n")[0].strip()

    def predict(self, completion: str) -> str | None:
        """The label the completion answers (as spelled in `labels`), or None when it is none of them."""
        return self._canonical.get(self._first_line(completion).lower())

    def score(self, completions: list[str], answers: list[str] | None = None, **columns) -> list[float]:
        completions = _check_completions(completions)
        answers = _check_column("answers", answers, len(completions))
        out = []
        for i, (completion, answer) in enumerate(zip(completions, answers)):
            if not isinstance(answer, str) or answer.strip().lower() not in self._canonical:
                raise ValueError(f"`answers[{i}]` must be one of the labels {list(self.labels)}, got {answer!r}.")
            predicted = self.predict(completion)
            out.append(1.0 if predicted is not None and predicted == self._canonical[answer.strip().lower()] else 0.0)
        return out


# A number: optional minus sign (not when glued to a preceding word or digit, as in "10-2"), digits with optional
# thousands commas, optional decimals.
_NUMBER = re.compile(r"(?:(?<![\w.])-)?\d[\d,]*(?:\.\d+)?")


class GSM8KScorer(Scorer):
    """GSM8K accuracy: 1 when the predicted number equals the reference numerically.

    The prediction is the first number after `answer_marker` ("The final answer is: ") when the completion has one
    followed by a number, else the last number in the completion. Commas are removed ("1,234" is 1234). References are
    numbers as strings ("72", "1,234"); a full GSM8K solution ending in "#### 72" is also accepted.

    >>> GSM8KScorer().score(["The final answer is: 1,234. Check: 5", "so 3 + 4 = 7"], answers=["1234", "8"])
    [1.0, 0.0]
    """

    name = "gsm8k_accuracy"

    def __init__(self, answer_marker: str = "The final answer is: ", tolerance: float = 1e-6):
        if not isinstance(answer_marker, str) or not answer_marker:
            raise ValueError(f"`answer_marker` must be a non-empty string, got {answer_marker!r}.")
        if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or tolerance < 0:
            raise ValueError(f"`tolerance` must be a number >= 0, got {tolerance!r}.")
        self.answer_marker = answer_marker
        self.tolerance = float(tolerance)

    @staticmethod
    def _to_float(token: str) -> float | None:
        try:
            return float(token.replace(",", ""))
        except ValueError:  # e.g. a lone comma group such as "1,,"
            return None

    def extract_answer(self, completion: str) -> float | None:
        """The predicted number, or None when the completion has no number."""
        at = completion.find(self.answer_marker)
        if at >= 0:
            match = _NUMBER.search(completion, at + len(self.answer_marker))
            if match is not None:
                return self._to_float(match.group())
        numbers = _NUMBER.findall(completion)
        return self._to_float(numbers[-1]) if numbers else None

    def reference_value(self, answer) -> float:
        """The reference number of an `answers` entry (a number, a numeric string, or a solution with '####')."""
        if isinstance(answer, int | float) and not isinstance(answer, bool):
            return float(answer)
        if isinstance(answer, str):
            text = answer.rsplit("####", 1)[-1]
            numbers = _NUMBER.findall(text)
            value = self._to_float(numbers[-1]) if numbers else None
            if value is not None:
                return value
        raise ValueError(f"`answers` entries must be numbers or numeric strings, got {answer!r}.")

    def score(self, completions: list[str], answers: list[str] | None = None, **columns) -> list[float]:
        completions = _check_completions(completions)
        answers = _check_column("answers", answers, len(completions))
        out = []
        for i, (completion, answer) in enumerate(zip(completions, answers)):
            try:
                reference = self.reference_value(answer)
            except ValueError:
                raise ValueError(f"`answers[{i}]` must be a number or a numeric string, got {answer!r}.") from None
            predicted = self.extract_answer(completion)
            hit = predicted is not None and abs(predicted - reference) <= self.tolerance * max(1.0, abs(reference))
            out.append(1.0 if hit else 0.0)
        return out
