"""Command-line consistency: help texts list what the parsers accept, with defaults; both option spellings work."""

import importlib.util
import os
import re
import sys

import pytest
from conftest import REPO, load_script

import train


def help_text(main, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_train_help_lists_only_accepted_launchers(capsys):
    text = help_text(train.parse_args, capsys)
    assert "{slurm,torch}" in text and "none:" not in text and "omitted:" in text
    with pytest.raises(SystemExit):
        train.parse_args(["--config", "x.py", "--launcher", "none"])


def test_undistort_shows_defaults_and_takes_both_spellings(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per option
    undistort = load_script("undistort_egovideos")
    text = help_text(undistort.main, capsys)
    assert "--take_uids" in text and "--take-uids" not in text  # one documented spelling
    assert "(default: 448)" in text and "(default: data/egoexo4d_v2)" in text
    assert "output folder (default: ROOT/processed_data)\n" in text  # said once, not "(default: None)" too
    outputs = []
    for spelling in (["--take-uids", "a", "--no-progress"], ["--take_uids", "a", "--no_progress"]):
        assert undistort.main(["--root", str(tmp_path), "--workers", "1"] + spelling) == 1  # no take there
        outputs.append(capsys.readouterr())
    assert outputs[0] == outputs[1] and "takes.json missing" in outputs[0].err and "--parts metadata" in outputs[0].err


def test_script_parser_maps_hyphens_to_underscores_in_option_names_only():
    from internlm.initialize.arguments import ScriptArgumentParser

    p = ScriptArgumentParser()
    p.add_argument("--take_uids", nargs="*")
    p.add_argument("--out")
    args = p.parse_args(["--take-uids", "uid-1", "--out=my-dir"])
    assert args.take_uids == ["uid-1"] and args.out == "my-dir"


# ------------------------------------------------------------------------------------- every script, one convention
ENTRY_POINTS = ["train.py", "eval_feature_retrieval.py", "eval_3dposes.py", "eval_knn_conv_stem_cls.py"] + sorted(
    f"{d}/{f}" for d in ("tools", "dataset_preprocess", "benchmarks") for f in os.listdir(os.path.join(REPO, d))
    if f.endswith(".py") and f != "__init__.py")


def script(path: str):
    name = "script_" + path.replace("/", "_")[:-3]
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, path))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_every_entry_point_parses_with_the_script_parser():
    """One parser class for every script: both spellings of every option, every default in --help (the class's
    behaviour is tested above and below, once)."""
    for path in ENTRY_POINTS:
        source = open(os.path.join(REPO, path)).read()
        if "add_argument(" not in source:
            continue  # not a command-line script
        assert "argparse.ArgumentParser(" not in source and "ScriptArgumentParser(" in source, path
        hyphenated = re.findall(r'add_argument\("--(\w+-[\w-]+)"', source)
        assert not hyphenated, f"{path}: options are defined with underscores (the parser maps hyphens): {hyphenated}"


def test_tools_take_opt_overrides(capsys, tmp_path):
    count = script("tools/count_params.py")
    count.main(["--config", "configs/dino_pretrain/lr5e-4_tmp004_300m.py", "--opt", "model.flavor=1B"])
    out = capsys.readouterr().out
    assert "config: model.flavor='1B' replaces the file's model.hidden_size=1024" in out and "1.13B" in out
    help_out = help_text(count.main, capsys)
    assert "--opt KEY=VALUE" in help_out and "--config CONFIG" in help_out and "(default: None)" not in help_out
    # the untrained reference row of the demo report: the same overrides as the trained run it stands beside
    untrained = script("tools/make_untrained_checkpoint.py")
    untrained.main(["--config", "configs/demo/stage2_joint_tiny.py", "--out", str(tmp_path / "u"), "--opt",
                    "model.flavor=tiny", "--seed", "3"])
    import torch

    from internlm.checkpoint.layout import STUDENT_FILE, step_folder
    state = torch.load(os.path.join(step_folder(str(tmp_path / "u"), 0), STUDENT_FILE), weights_only=True)
    assert state["state_query"].shape[-1] == 64
    assert "config: teacher follows model: flavor None -> 'tiny'" in capsys.readouterr().out


def test_knn_says_what_to_do_with_a_flat_val_folder_or_a_training_checkpoint(tmp_path, capsys):
    import cv2
    import numpy as np

    knn = script("eval_knn_conv_stem_cls.py")
    data = tmp_path / "imagenet"
    for split in ("train/n01440764", "val"):
        os.makedirs(data / split)
    for name in ("train/n01440764/a.JPEG", "val/ILSVRC2012_val_00000001.JPEG", "val/ILSVRC2012_val_00000002.JPEG"):
        cv2.imwrite(str(data / name), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SystemExit) as exit_:
        knn.main(["--pretrained_weights", str(tmp_path), "--data_path", str(data)])
    assert str(exit_.value).startswith(f"--data_path {data}: image folder {data / 'val'} has no class sub-folders")
    assert "but 2 images directly in it: sort them into one sub-folder per class first" in str(exit_.value)
    # a training step folder or run folder (its config.json is the training config): convert it first
    step = tmp_path / "run" / "7"
    os.makedirs(step)
    for name in ("model_tp0_pp0.pt", "config.json", "COMPLETE"):
        (step / name).write_text("{}")
    for folder, what in ((step, "a training checkpoint step folder"), (step.parent, "a training run folder")):
        with pytest.raises(SystemExit) as exit_:
            knn.check_hf_export(str(folder), "--pretrained_weights")
        assert f"--pretrained_weights {folder}: {what}" in str(exit_.value)
        assert f"convert2hf_dino_conv_stem_cls.py --src_folder {folder} --tgt_folder" in str(exit_.value)
