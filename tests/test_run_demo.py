"""tools/run_demo.py and tools/run_ablation.py: a rerun keeps the timings of the run that did the work; both end to
end on a tiny world."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from train_helpers import tiny_overrides

REPO = Path(__file__).resolve().parents[1]


def load_run_demo():
    spec = importlib.util.spec_from_file_location("run_demo", REPO / "tools" / "run_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_step_that_finds_its_work_done_keeps_the_first_timing(tmp_path):
    run_demo = load_run_demo()
    out = tmp_path / "run"
    out.mkdir()
    (out / "pipeline.json").write_text(json.dumps({"timings_s": {"stage1": 123.0, "knn": 45.0}, "commands": {}}))
    pipe = run_demo.Pipeline(run_demo.parse_args(["--out", str(out), "--data", str(tmp_path / "world")]))
    quick = ["-c", "pass"]
    pipe.run("stage1", quick, done=True)  # resumed training that had nothing left to do
    assert pipe.timings["stage1"] == 123.0
    pipe.run("stage1", quick, done=False)  # work was done now: its own time
    assert pipe.timings["stage1"] < 60.0
    pipe.run("knn", quick, done=True)  # evaluations always rerun: never "cached"
    assert pipe.timings["knn"] < 60.0
    assert pipe.commands["stage1"] == ["python -c pass", "python -c pass"]


# the tests' tiny model (train_helpers) for both stages and the evaluations; the run's folders are run_demo's
TINY_OPTS = [f"{k}={v!r}" for k, v in tiny_overrides("unused", steps=2, micro_num=4, accum=1)
             if not k.startswith(("ckpt.", "data.dataset_type", "data.calibration_takes"))]


def run_script(*args) -> None:
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_demo_and_ablation_end_to_end_on_a_tiny_world(tmp_path):
    """The main job and the Table-4 miniature as a user runs them (every step a subprocess: the world generator's
    CLI, preprocessing, both stages, the untrained checkpoint, conversion, the three evaluations, the report), on a
    tiny world and model; each variant's numbers where the answer is known: without L_act the action head never
    leaves its zero initialisation, so its rollout is the zero-velocity baseline; without L_pred the predicted
    feature is the prediction base, so its retrieval row is the base's."""
    world, run, ablation = tmp_path / "world", tmp_path / "run", tmp_path / "ablation"
    common = ["--seed", "3", "--data", world, "--size", "tiny", "--frame_size", "64", "--motion_baseline_steps", "5",
              *[x for o in TINY_OPTS for x in ("--opt", o)]]
    run_script("tools/run_demo.py", *common, "--out", run)
    summary = json.loads((run / "summary.json").read_text())
    pipeline = json.loads((run / "pipeline.json").read_text())
    assert set(pipeline["timings_s"]) >= {"world", "undistort", "poses", "stage1", "stage2", "convert", "knn",
                                          "retrieval", "motion"}
    assert (run / "REPORT.md").stat().st_size > 1000 and (run / "training_curves.png").stat().st_size > 10_000
    assert json.loads((world / "synthetic_world.json").read_text())["seed"] == 3
    assert summary  # the report's numbers, written by make_demo_report.py

    run_script("tools/run_ablation.py", *common, "--demo_out", run, "--out", ablation, "--variants", "no_pred",
               "no_act")
    result = json.loads((ablation / "ablation.json").read_text())["results"]
    assert set(result) == {"no_pred", "no_act"} and (ablation / "ablation.png").stat().st_size > 10_000
    no_act = json.loads((ablation / "no_act" / "motion" / "motion.json").read_text())
    assert no_act["model"]["mpjpe_30fps"] == pytest.approx(no_act["zero_velocity"]["mpjpe_30fps"], rel=1e-5)
    full_motion = json.loads((run / "eval" / "motion" / "motion.json").read_text())
    assert full_motion["model"]["mpjpe_30fps"] != pytest.approx(full_motion["zero_velocity"]["mpjpe_30fps"],
                                                                rel=1e-3)
    no_pred = json.loads((ablation / "no_pred" / "retrieval" / "retrieval.json").read_text())["rows"]
    base = "reprojection" if "reprojection" in no_pred else "copy"
    assert no_pred["egoagent"]["top1"] == no_pred[base]["top1"] and no_pred["egoagent"]["mAP"] == no_pred[base]["mAP"]


def test_a_run_stopped_half_way_keeps_the_timings_of_its_finished_steps(tmp_path):
    run_demo = load_run_demo()
    args = run_demo.parse_args(["--out", str(tmp_path / "run"), "--data", str(tmp_path / "world")])
    first = run_demo.Pipeline(args)
    first.run("stage1", ["-c", "import time; time.sleep(1.5)"])  # the work, then the run is stopped
    resumed = run_demo.Pipeline(args)
    resumed.run("stage1", ["-c", "pass"], done=True)
    assert resumed.timings["stage1"] >= 1.5  # not the resumed no-op's
    record = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert record["timings_s"]["stage1"] >= 1.5 and record["commands"]["stage1"]
