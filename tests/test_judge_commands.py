"""The command line of judges, lm-eval utility and sweeps: `hf-immunize evaluate / attack --judge ... --lm_eval_tasks
...` and `hf-immunize sweep`. User errors are one line and exit code 2, before any compute, with nothing written."""

import json
import shutil
from pathlib import Path

import pytest
from test_lm_eval import write_toy_task

from hf_immunize.evaluation import ImmunizationReport
from hf_immunize.evaluation.provenance import describe_scorer
from hf_immunize.evaluation.scorers import RefusalKeywordScorer
from hf_immunize.testing import tiny_causal_lm

TINY_ATTACK = ["--max_steps", "2", "--n_samples", "20", "--max_eval_samples", "4", "--max_new_tokens", "4"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny_causal_lm(save_dir=root / "defended")
    tiny_causal_lm(seed=2, save_dir=root / "judge")
    shutil.copytree(root / "judge", root / "templateless-judge")
    config = root / "templateless-judge" / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    (root / "templateless-judge" / "chat_template.jinja").unlink(missing_ok=True)
    write_toy_task(root / "tasks")
    return root


def _fails(command: str, argv: list[str], capsys, match: str) -> str:
    import importlib

    module = importlib.import_module(f"hf_immunize.commands.{command}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    # transformers' own "Loading weights" bar (a judge loaded before the check that refuses it) is not our message
    err = "".join(line for line in capsys.readouterr().err.splitlines(True) if "Loading weights" not in line).lstrip()
    assert exit_info.value.code == 2 and err.startswith(f"hf-immunize {command}: error: ") and match in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    return err


def test_evaluate_with_a_judge_and_lm_eval_puts_both_on_the_card(folders, tmp_path):
    from hf_immunize.commands import evaluate

    model = tmp_path / "model"
    shutil.copytree(folders / "defended", model)
    argv = ["--model", str(model), "--method", "booster", "--write_card", "--no_progress"]
    argv += ["--output_dir", str(tmp_path / "report"), *TINY_ATTACK]
    argv += ["--judge", "guard", "--judge_model", str(folders / "judge"), "--judge_max_new_tokens", "4"]
    argv += ["--lm_eval_tasks", "toy_add", "--lm_eval_include_path", str(folders / "tasks")]
    report = evaluate.main(argv)
    card = (model / "README.md").read_text()
    import lm_eval

    assert "scored by: `guard_judge` (GenerativeJudge('judge', protocol='guard'))" in card
    assert "judge verdicts that could not be read:" in card  # an untrained judge: counted, not a crash
    assert f"lm-evaluation-harness {lm_eval.__version__}, tasks `toy_add`" in card
    assert "| booster | toy_add | acc |" in card and str(folders) not in card
    assert report.defended[0]["after"]["scored_by"] == report.evaluation["scorer"]


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--judge", "guard"], "--judge guard needs --judge_model"),
        (["--judge_model", "org/judge"], "--judge_model need a model judge"),
        (["--judge", "rubric", "--judge_model", "org/j", "--judge_template", "no.txt"], "--judge_template: 'no.txt'"),
        (["--judge", "guard", "--judge_model", "{templateless}"], "has no chat template, which protocol 'guard'"),
        (["--lm_eval_limit", "5"], "--lm_eval_limit need --lm_eval_tasks"),
        (["--lm_eval_tasks", "toy_ad", "--lm_eval_include_path", "{tasks}"], "'toy_ad' (close: ['toy_add'])"),
        (["--method", "unlearn", "--judge", "beaver-dam-7b"], "--judge applies to the fine-tuning attack"),
    ],
)
def test_evaluate_judge_and_lm_eval_mistakes(extra, match, folders, tmp_path, capsys, monkeypatch):
    import transformers

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the error")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    extra = [e.format(templateless=folders / "templateless-judge", tasks=folders / "tasks") for e in extra]
    method = [] if "--method" in extra else ["--method", "booster"]
    out = tmp_path / "report"
    _fails(
        "evaluate", ["--model", str(folders / "defended"), *method, "--output_dir", str(out), *extra], capsys, match
    )
    assert not out.exists()


def test_attack_command_takes_a_judge(folders, tmp_path, capsys):
    from hf_immunize.commands import attack

    argv = ["--model", str(folders / "defended"), "--output_dir", str(tmp_path / "out"), "--no_progress"]
    argv += [*TINY_ATTACK, "--judge", "logits", "--judge_model", str(folders / "judge")]
    report = attack.main(argv)
    assert report.evaluation["scorer"] == "`logits_judge` (GenerativeJudge('judge', protocol='logits'))"
    capsys.readouterr()
    _fails("attack", [*argv[:2], "--judge", "logits"], capsys, "--judge logits needs --judge_model")


# ---- hf-immunize sweep ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--space", "learning_rate"], "write FIELD=V1,V2"),
        (["--space", "lr=1e-4"], "'lr' is not an AttackConfig field"),
        (["--space", "max_steps=1,two"], "--space max_steps: 'two' is not an int"),
        (["--space", "lora_target_modules=q_proj"], "cannot be swept from the command line"),
        (["--utility_drop", "1.5"], "`utility_drop` must be in (0, 1)"),
        (["--storage", "sqlite:////no/such/dir/s.db", "--study_name", "s"], "does not exist or is not writable"),
        (["--storage", "sqlite:///{tmp}/s.db"], "--storage and --study_name go together"),
        (["--budget", "0"], "`budget` must be an integer >= 1"),
    ],
)
def test_sweep_command_mistakes(extra, match, folders, tmp_path, capsys):
    out = tmp_path / "sweep"
    extra = [e.format(tmp=tmp_path) for e in extra]
    _fails("sweep", ["--model", str(folders / "defended"), "--output_dir", str(out), *extra], capsys, match)
    assert not out.exists()


def _keyword_report(folder: Path) -> Path:
    scored_by = describe_scorer(RefusalKeywordScorer())
    point = {"harmful_score": 50.0, "scored_by": scored_by}
    ImmunizationReport(
        method="booster",
        model="defended",
        defended=[{"config": {"seed": 0}, "before": point, "after": point, "curve": []}],
        evaluation={"scorer": scored_by},
    ).save(folder)
    return folder


def test_sweep_command_shares_a_study_and_adds_the_sweep_to_a_report(folders, tmp_path, capsys):
    from hf_immunize.commands import sweep

    report_dir = _keyword_report(tmp_path / "report")
    argv = ["--model", str(folders / "defended"), "--output_dir", str(tmp_path / "out"), "--no_progress"]
    argv += ["--space", "learning_rate=1e-4,1e-3", "--budget", "2", *TINY_ATTACK]
    argv += ["--storage", f"sqlite:///{tmp_path / 'sweep.db'}", "--study_name", "cli", "--report", str(report_dir)]
    results = sweep.main(argv)
    assert [t["overrides"] for t in results["defended"][0]["trials"]] == [
        {"learning_rate": 1e-4},
        {"learning_rate": 1e-3},
    ]
    saved = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert saved == json.loads(json.dumps(results))
    report = ImmunizationReport.load(report_dir)
    assert report.sweeps["defended"][0]["study"] == {"study_name": "cli", "storage": "sqlite"}
    assert "Sweep, defended: 2 attack settings (grid); worst harmful score after" in report.to_markdown()
    # Run again: the study is finished, nothing is attacked twice, the same result comes back.
    assert sweep.main(argv)["defended"][0]["trials"] == results["defended"][0]["trials"]
    # A sweep by another judge cannot join this report.
    capsys.readouterr()
    judged = [*argv, "--judge", "guard", "--judge_model", str(folders / "judge")]
    _fails("sweep", judged, capsys, "this report mixes judges")
