"""The demo report decides each of the paper's claims from the eval JSONs of the run, never from fixed text."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    """tools/make_demo_report.py (a script, not a package module), loaded once."""
    spec = importlib.util.spec_from_file_location("make_demo_report", REPO / "tools" / "make_demo_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def motion_row(mpjpe: float) -> dict:
    horizon = {"ms_after_last_input": [33.3 * (k + 1) for k in range(15)], "mpjpe": [mpjpe] * 15}
    return {"mpjpe_30fps": mpjpe, "mpjve_30fps": 50.0, "mpjpe_10fps": mpjpe, "mpjve_10fps": 30.0,
            "per_horizon": horizon}


def fake_run(root: Path, knn_top1: float, retrieval: tuple[float, float], baseline: tuple[float, float],
             mpjpe: tuple[float, float, float], num_val: int = 320) -> Path:
    """A run folder with the files the report reads, holding the given numbers."""
    run = root / "run"
    write(run / "pipeline.json", {"seed": 3, "data": "data/x", "out": str(run), "timings_s": {"stage1": 1.0},
                                  "commands": {"stage1": ["python train.py"]}})
    for name, top1 in (("egoagent", knn_top1), ("stage1", 20.0), ("untrained", 15.0)):
        write(run / "eval/knn" / f"{name}.json",
              {"top1": top1, "top5": 80.0, "num_classes": 8, "num_train": 320, "num_val": num_val,
               "temperature": 0.07, "results": [{"k": 20, "k_used": 20, "top1": top1}]})
    for name, (top1, mean_ap) in (("egoagent", retrieval), ("baseline", baseline)):
        write(run / f"eval/retrieval_{name}/retrieval.json",
              {"top1": top1, "mAP": mean_ap, "num_queries": 500, "num_gallery": 170})
    write(run / "eval/motion/motion.json",
          {"num_clips": 171, "model": motion_row(mpjpe[0]), "zero_velocity": motion_row(mpjpe[1]),
           "constant_velocity": motion_row(mpjpe[2])})
    for stage in (1, 2):
        rows = [{"step": s, "loss_rep": 6.0, "loss_pred": 5.0, "loss_act": 0.05, "teacher_entropy": 6.1,
                 "kl_teacher_student": 0.2, "feature_std": 0.07} for s in range(25, 150, 25)]
        metrics = run / f"save_ckpt/demo_stage{stage}/metrics.jsonl"
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write(run / "save_ckpt/demo_stage2/125/config.json", {"model": {"output_dim": 1024}})
    return run


def test_claims_hold_when_the_numbers_say_so(report, tmp_path):
    run = fake_run(tmp_path, knn_top1=40.0, retrieval=(30.0, 45.0), baseline=(20.0, 35.0), mpjpe=(5.0, 6.0, 9.0))
    summary = report.main(["--run", str(run)])
    assert [c["holds"] for c in summary["claims"]] == [True, True, True]
    text = (run / "REPORT.md").read_text()
    assert "does not hold" not in text and "Why a claim does not hold" not in text
    assert "40.00% (± 2.7 standard error over 320 images)" in text  # sqrt(0.4 * 0.6 / 320) = 2.74%
    assert (run / "training_curves.png").stat().st_size > 0 and (run / "motion_horizon.png").stat().st_size > 0
    assert json.loads((run / "summary.json").read_text())["mpjpe_30fps"] == [5.0, 6.0, 9.0]


@pytest.mark.parametrize("failing, numbers", [
    (0, dict(knn_top1=40.0, retrieval=(20.0, 45.0), baseline=(20.0, 35.0), mpjpe=(5.0, 6.0, 9.0))),  # a tie fails
    (0, dict(knn_top1=40.0, retrieval=(30.0, 30.0), baseline=(20.0, 35.0), mpjpe=(5.0, 6.0, 9.0))),  # mAP below
    (1, dict(knn_top1=40.0, retrieval=(30.0, 45.0), baseline=(20.0, 35.0), mpjpe=(7.0, 6.0, 9.0))),  # zero velocity
    (1, dict(knn_top1=40.0, retrieval=(30.0, 45.0), baseline=(20.0, 35.0), mpjpe=(7.0, 8.0, 6.5))),  # const velocity
    (2, dict(knn_top1=37.4, retrieval=(30.0, 45.0), baseline=(20.0, 35.0), mpjpe=(5.0, 6.0, 9.0))),  # < 3 x 12.5
])
def test_each_claim_fails_on_its_own_numbers(report, tmp_path, failing, numbers):
    run = fake_run(tmp_path, **numbers)
    summary = report.main(["--run", str(run)])
    assert [c["holds"] for c in summary["claims"]] == [k != failing for k in range(3)]
    text = (run / "REPORT.md").read_text()
    assert text.count("**does not hold**") == 1
    # the diagnosis is written from the run's own logs: 6.10 nats of ln(1024) = 6.93
    assert "Why a claim does not hold" in text and f"6.10 nats of {math.log(1024):.2f}" in text


def test_binomial_standard_error(report):
    assert report.binomial_se(50.0, 100) == pytest.approx(5.0)
    assert report.binomial_se(28.75, 80) == pytest.approx(5.06, abs=0.01)
    assert report.binomial_se(0.0, 80) == 0.0
