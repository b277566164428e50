"""Label accuracy of generated answers (SST-2, AG News style tasks), as an `evaluate` metric.

Loads offline from the installed package:

    import evaluate
    from hf_immunize.evaluation.scorers import metric_path
    metric = evaluate.load(metric_path("label_accuracy"))
    metric.compute(predictions=["positive", "Negative"], references=["positive", "positive"])

The work is done by `hf_immunize.evaluation.scorers.LabelMatchScorer`. This script keeps one import per line:
`evaluate` reads the import lines to check that every library it needs is installed.
"""

import datasets
import evaluate

from hf_immunize.evaluation.scorers import LabelMatchScorer

_DESCRIPTION = """
Accuracy of generated class labels: the first line of the stripped answer must equal the reference label, ignoring
case. An answer that is none of the known labels is wrong.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the model's completions.
    references (list of str): the reference labels (each one of `labels`).
    labels (list of str, optional): the task's labels; default ("positive", "negative") for SST-2.
        AG News: ("World", "Sports", "Business", "Sci/Tech").
Returns:
    accuracy (float): fraction of correct answers, in [0, 1].
Examples:
    >>> metric = evaluate.load(metric_path("label_accuracy"))
    >>> metric.compute(predictions=["positive", "Negative"], references=["positive", "positive"])
    {'accuracy': 0.5}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LabelAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, labels=("positive", "negative")):
        scores = LabelMatchScorer(labels).score(list(predictions), answers=list(references))
        return {"accuracy": sum(scores) / len(scores) if scores else 0.0}
