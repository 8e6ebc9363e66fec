"""Hugging Face export: a checkpoint -> a folder that transformers loads without this repository, with the
training model's features to 1e-5."""

import json
import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from eval_helpers import REPO, converter_module, make_checkpoint, run_script, write_tiny_config

# Loads an export the way a user would, in a Python that cannot import this repository: the repository is off
# sys.path and an import hook refuses `internlm` (the editable install would otherwise find it).
ISOLATED_LOADER = textwrap.dedent("""
    import importlib.abc, os, sys
    repo = os.path.realpath(sys.argv[1])
    inside = lambda p: (os.path.realpath(p or ".") + "/").startswith(repo + "/")
    sys.path = [p for p in sys.path if not inside(p) or "/.venv/" in p]

    class NoRepo(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "internlm":
                raise ImportError("this test forbids importing the repository: " + name)

    sys.meta_path.insert(0, NoRepo())
    try:
        import internlm  # noqa: F401
        sys.exit("the repository is importable")
    except ImportError:
        pass
    import torch, transformers
    model = transformers.AutoModel.from_pretrained(sys.argv[2], trust_remote_code=True).eval()
    images = torch.load(sys.argv[3])
    with torch.no_grad():
        out = model(pixel_values=images, output_logits=True)
    torch.save({"pooler_output": out.pooler_output, "logits": out.logits, "hidden": out.last_hidden_state},
               sys.argv[4])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "internlm")
    print("transformers", transformers.__version__, "internlm modules:", loaded)
    assert not loaded
""")


def load_isolated(tmp_path, folder, images, python=sys.executable):
    script, inputs, outputs = tmp_path / "load.py", tmp_path / "images.pt", tmp_path / "out.pt"
    script.write_text(ISOLATED_LOADER)
    torch.save(images, inputs)
    work = tmp_path / "elsewhere"
    work.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1")
    proc = subprocess.run([python, str(script), REPO, str(folder), str(inputs), str(outputs)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "internlm modules: []" in proc.stdout
    return torch.load(outputs)


def convert(tmp_path, src, *flags):
    tgt = tmp_path / "hf_export"
    proc = run_script(["tools/convert2hf_dino_conv_stem_cls.py", "--src_folder", str(src), "--tgt_folder", str(tgt),
                       *flags], env_extra={"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"})
    return tgt, proc.stdout + proc.stderr


@pytest.fixture
def stage2_run(tmp_path):
    cfg = write_tiny_config(tmp_path / "cfg.py", 2, tmp_path / "run")
    make_checkpoint(cfg, step=3)
    return tmp_path / "run"


def reference(run, which, images):
    from internlm.checkpoint import load_model

    model, _, _ = load_model(str(run), which)
    with torch.no_grad():
        out = model.represent(images)
    return out.feature, out.logits


def test_export_loads_without_the_repo_and_matches_encode(tmp_path, stage2_run):
    tgt, log = convert(tmp_path, stage2_run, "--remove_vq_embed")
    assert "has no VQGAN embedding weights; nothing to remove" in log  # a no-op, said so
    assert "check: max |HF pooler_output - EgoAgent.encode|" in log  # the converter's own check ran
    files = set(os.listdir(tgt))
    assert {"config.json", "model.safetensors", "modeling_egoagent.py", "configuration_egoagent.py",
            "modeling_internlm.py", "attention.py", "norm.py", "rotary.py", "projectors.py", "heads.py"} <= files
    for name in files - {"config.json", "model.safetensors"}:
        assert not re.search(r"^\s*(from|import)\s+internlm", (tgt / name).read_text(), re.M), name
    config = json.loads((tgt / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_egoagent.EgoAgentConfig",
                                  "AutoModel": "modeling_egoagent.EgoAgentModel"}
    assert config["source_weights"] == "teacher" and config["source_checkpoint"].endswith(os.path.join("run", "3"))

    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got = load_isolated(tmp_path, tgt, images)
    feature, logits = reference(stage2_run, "teacher", images)
    assert got["pooler_output"].shape == (3, 64) and got["hidden"].shape == (3, 17, 64)
    assert torch.allclose(got["pooler_output"], feature, atol=1e-5, rtol=0)
    assert torch.allclose(got["logits"], logits, atol=1e-5, rtol=0)
    # the student differs from the teacher here: the export really holds the teacher
    student_feature, _ = reference(stage2_run, "model", images)
    assert (student_feature - feature).abs().max() > 1e-3


@pytest.mark.skipif(not os.environ.get("EGOAGENT_HF_COMPAT_PYTHON"),
                    reason="set EGOAGENT_HF_COMPAT_PYTHON to a python with another transformers version (e.g. 4.46)")
def test_export_loads_with_another_transformers_version(tmp_path, stage2_run):
    tgt, _ = convert(tmp_path, stage2_run, "--no_verify")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    got = load_isolated(tmp_path, tgt, images, python=os.environ["EGOAGENT_HF_COMPAT_PYTHON"])
    feature, _ = reference(stage2_run, "teacher", images)
    assert torch.allclose(got["pooler_output"], feature, atol=1e-5, rtol=0)


def test_student_weights_vq_weights_and_stage1(tmp_path, caplog):
    from internlm.hf.modeling_egoagent import EgoAgentModel

    tool = converter_module()
    cfg = write_tiny_config(tmp_path / "cfg1.py", 1, tmp_path / "run1")
    make_checkpoint(cfg, step=2, vq_weights=True)  # VQGAN embedding tensors in the teacher file
    with pytest.raises(SystemExit, match="holds 1 VQGAN embedding tensors .* pass --drop_vqgan_weights .*remove_vq"):
        tool.convert(str(tmp_path / "run1"), str(tmp_path / "vq"), check=False)
    # the authors' flag and ours are one option
    assert tool.parse_args(["--src_folder", "x", "--remove_vq_embed"]).drop_vqgan_weights
    assert tool.parse_args(["--src_folder", "x", "--drop_vqgan_weights"]).drop_vqgan_weights
    assert not tool.parse_args(["--src_folder", "x"]).drop_vqgan_weights
    with caplog.at_level(logging.INFO, logger="convert2hf"):
        tool.convert(str(tmp_path / "run1"), str(tmp_path / "vq"), drop_vqgan_weights=True, check=False)
    assert any("(--remove_vq_embed): dropping 1 VQGAN embedding tensors" in m for m in caplog.messages)

    # the student of a stage-1 step folder, without the head (in-process load: the remote-code path is above)
    tgt = tool.convert(str(tmp_path / "run1" / "2"), str(tmp_path / "student"), which="model", keep_head=False,
                       check=False)
    model = EgoAgentModel.from_pretrained(tgt).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = model(pixel_values=images).pooler_output
    feature, _ = reference(tmp_path / "run1", "model", images)
    assert torch.allclose(got, feature, atol=1e-5, rtol=0)
    assert model.rep_head is None and json.loads((tmp_path / "student" / "config.json").read_text())[
        "source_weights"] == "model"
