"""GSM8K accuracy of generated solutions, as an `evaluate` metric.

Loads offline from the installed package:

    import evaluate
    from hf_immunize.evaluation.scorers import metric_path
    metric = evaluate.load(metric_path("gsm8k_accuracy"))
    metric.compute(predictions=["... The final answer is: 72"], references=["72"])

The work is done by `hf_immunize.evaluation.scorers.GSM8KScorer`. This script keeps one import per line:
`evaluate` reads the import lines to check that every library it needs is installed.
"""

import datasets
import evaluate

from hf_immunize.evaluation.scorers import GSM8KScorer

_DESCRIPTION = """
GSM8K accuracy: the predicted answer is the first number after "The final answer is: " when there is one, else the
last number of the completion; commas are removed and it is compared numerically with the reference.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the model's completions.
    references (list of str or numbers): reference numbers such as "72", "1,234" or 72 (a full solution ending
        "#### 72" works too).
    answer_marker (str, optional): the text announcing the answer; default "The final answer is: ".
Returns:
    accuracy (float): fraction of correct answers, in [0, 1].
Examples:
    >>> metric = evaluate.load(metric_path("gsm8k_accuracy"))
    >>> metric.compute(predictions=["The final answer is: 1,234", "7 apples"], references=["1234", "8"])
    {'accuracy': 0.5}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GSM8KAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("float64")}),
            ],
        )

    def _compute(self, predictions, references, answer_marker="The final answer is: "):
        scores = GSM8KScorer(answer_marker=answer_marker).score(list(predictions), answers=list(references))
        return {"accuracy": sum(scores) / len(scores) if scores else 0.0}
