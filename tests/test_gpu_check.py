"""benchmarks/gpu_check.sh and the scripts it calls, at toy sizes on the CPU (the GPU run cannot happen here):
every part runs, a part that fails leaves the others and the merged JSON intact, and the attention check passes
the kernels that are right and stops on one that is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))


def test_attention_check_passes_right_kernels_and_names_the_backends_that_cannot_run(tmp_path):
    import check_attention

    result = check_attention.main(["--device", "cpu", "--tiny", "--json", str(tmp_path / "attention.json")])
    by = {(c["view"], c["dtype"], c["backend"]): c for c in result["cases"]}
    for view in ("global", "joint"):
        for dtype in ("float16", "bfloat16"):
            assert by[(view, dtype, "sdpa")]["status"] == "ok" and "dq_error" in by[(view, dtype, "sdpa")]
            assert by[(view, dtype, "flex")]["status"] == "ok"
            assert by[(view, dtype, "flash")]["status"] == "cannot run"
    assert "cannot express the block-causal mask" in by[("joint", "float16", "flash")]["why"]
    assert result["wrong"] == 0


def test_attention_check_catches_a_wrong_mask(tmp_path, monkeypatch):
    """A kernel given plain causal attention for the block-causal joint layout (image tokens no longer see the
    later tokens of their own frame) fails the check."""
    import check_attention

    from internlm.model import attention

    real_call = attention.AttentionKernel.__call__

    def causal_only(self, q, k, v, mask, scale):
        if mask.layout.kind == "block_causal":
            mask = attention.PreparedMask(attention.MaskLayout("causal", mask.layout.seq_len), None)
        return real_call(self, q, k, v, mask, scale)

    monkeypatch.setattr(attention.AttentionKernel, "__call__", causal_only)
    with pytest.raises(SystemExit):
        check_attention.main(["--device", "cpu", "--tiny", "--backends", "sdpa", "--dtypes", "fp16"])


def test_gpu_check_script_runs_every_part_and_survives_a_failing_one(tmp_path):
    """The whole script in its CPU mode, with the attention part made to fail (a python wrapper exits 1 for it):
    the steps still run, and gpu_check.json has every part with its status."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/usr/bin/env bash\nfor a in "$@"; do [ "$a" = benchmarks/check_attention.py ] && '
                       f'{{ echo "planted failure" >&2; exit 1; }}; done\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, GPU_CHECK_DEVICE="cpu", GPU_CHECK_TINY="1", PYTHON=str(wrapper))
    proc = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "gpu_check.sh"), str(out)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    parts = summary["parts"]
    assert parts["environment"]["status"] == "ok"
    assert parts["attention"]["status"] == "failed" and parts["attention"]["rc"] == 1
    assert "planted failure" in (out / "attention.log").read_text()
    assert parts["grad_fusion"]["status"] == "ok" and parts["grad_fusion"]["result"]["ok"]
    for step in ("step_300m", "step_1b"):
        assert parts[step]["status"] == "ok"
        result = parts[step]["result"]
        assert result["step_s_median"] > 0 and result["peak_memory_gib"] > 0 and result["checkpoint"] == 0.0
        assert summary["headline"][step]["step_s_median"] == result["step_s_median"]


def test_summary_keeps_parts_that_ran_out_of_time(tmp_path):
    import gpu_check_summary

    (tmp_path / "environment.status.json").write_text(json.dumps(
        {"part": "environment", "rc": 0, "seconds": 1, "timed_out": False, "box_s": 20}))
    (tmp_path / "environment.json").write_text(json.dumps({"name": "NVIDIA H100 80GB HBM3"}))
    (tmp_path / "step_1b.status.json").write_text(json.dumps(
        {"part": "step_1b", "rc": 124, "seconds": 185, "timed_out": True, "box_s": 185}))
    summary = gpu_check_summary.main([str(tmp_path)])
    assert summary["parts"]["environment"]["status"] == "ok"
    assert summary["parts"]["step_1b"]["status"] == "timed out"
    assert summary["parts"]["step_300m"]["status"] == "not run"
    assert json.loads((tmp_path / "gpu_check.json").read_text())["parts"]["step_1b"]["timed_out"] is True


def test_prefetcher_yields_every_batch_once_in_order():
    """On a CPU the prefetcher passes batches through (the CUDA side stream is exercised by gpu_check.sh)."""
    import torch

    from internlm.data.prefetch import DevicePrefetcher

    batches = [{"x": torch.full((2,), float(i)), "name": f"b{i}"} for i in range(3)]
    got = list(DevicePrefetcher(iter(batches), torch.device("cpu")))
    assert [b["name"] for b in got] == ["b0", "b1", "b2"] and all(g["x"][0] == i for i, g in enumerate(got))
    assert list(DevicePrefetcher(iter([]), torch.device("cpu"))) == []
