"""Command-line consistency: help texts list what the parsers accept, with defaults; both option spellings work."""

import pytest
from conftest import load_script

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
