"""tools/run_demo.py: a rerun keeps the timings of the run that did the work."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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
