"""Every command the README and the docs show runs a script that exists, with options that script accepts.

The commands are read from the documents themselves (fenced code blocks and inline code spans), as a user would
copy them: a line that runs a repository script (`python X.py ...`, `torchrun ... X.py ...`, `srun ... python X.py`,
`bash X.sh`, `sbatch ... X.sh ...`, `scripts_train/X.sh ...`). For a python script its own parser (captured from
the script, nothing runs) must accept every `--option` under its exact name, and the whole argument list must parse,
with placeholders (`CONFIG`, `${eval_iters}`, ...) given a value of the option's type; `--opt KEY=VALUE` overrides
must be keys of the config the command names. A shell script must be executable and parse with `bash -n`. A
repository path a command names (a config, a test file, a requirements file) must exist.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass

import pytest
from conftest import REPO
from test_cli import script

from internlm.config.loader import load_config, parse_override
from internlm.initialize.arguments import ScriptArgumentParser

# the documents that show commands (docs/demo_findings.md is a dated log: its commands are those of their commit)
DOCUMENTS = ["README.md", "docs/slurm.md", "docs/evaluation.md", "docs/training.md", "docs/reproduction.md",
             "docs/synthetic_world.md", "docs/testing.md", "benchmarks/RESULTS.md"]
REPO_DIRS = ("configs/", "scripts_train/", "tools/", "dataset_preprocess/", "benchmarks/", "tests/", "requirements/",
             "docs/", "internlm/")


@dataclass(frozen=True)
class Command:
    where: str  # "README.md:123"
    text: str
    script: str  # repository path of the script it runs
    args: tuple[str, ...]  # what follows the script


def is_placeholder(token: str) -> bool:
    """CONFIG, ${eval_iters}, RUN/save_ckpt/x, <video>, ..., {fp32,bf16}: a value the user fills in, or several."""
    return ("$" in token or "<" in token or "..." in token or "*" in token
            or re.fullmatch(r"[A-Z][A-Z0-9_]*(/.*)?", token) is not None
            or re.search(r"\{[\w.-]*(,[\w.-]*)+\}", token) is not None)


def snippets(path: str) -> list[tuple[int, str, bool]]:
    """(line number, text, fenced) of every code block line and every inline code span of a document."""
    text = open(os.path.join(REPO, path)).read()
    out, fence = [], None
    lines = text.split("\n")
    prose = []
    for i, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            fence = None if fence is not None else i
            continue
        if fence is not None:
            out.append((i, line, True))
        else:
            prose.append((i, line))
    joined = "\n".join(line for _, line in prose)
    starts = [n for n, _ in prose]
    for m in re.finditer(r"`([^`]+)`", joined):
        line_no = starts[joined.count("\n", 0, m.start())]
        span = re.sub(r"\s*\n\s*", " ", m.group(1))
        span = re.sub(r"\[(--[^]]*)\]", r"\1", re.sub(r"\|[\w.-]+", "", span))  # `--attn sdpa|flex`, `[--x N]`
        out.append((line_no, span, False))
    return out


def shell_lines(path: str) -> list[tuple[int, str]]:
    """Code lines with backslash continuations joined (each with the number of its first line)."""
    lines, pending, first = [], "", 0
    for n, text, fenced in snippets(path):
        if not fenced:
            lines.append((n, text))
            continue
        if not pending:
            first = n
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1] + " "
            continue
        lines.append((first, pending + text))
        pending = ""
    return lines


def split_commands(text: str) -> list[list[str]]:
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lex.whitespace_split, lex.commenters = True, "#"
    try:
        tokens = list(lex)
    except ValueError:  # an unbalanced quote: prose, not a command
        return []
    commands, current = [], []
    for tok in tokens:
        if tok and set(tok) <= set(";&|"):
            commands.append(current)
            current = []
        else:
            current.append(tok)
    return [c for c in commands + [current] if c]


def script_of(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(script, its arguments) when the command runs a repository script, else None."""
    i = 0
    while i < len(tokens) and (re.fullmatch(r"[A-Z_]+=\S*", tokens[i]) or tokens[i] in ("sudo", "nice", "exec")):
        i += 1 + (tokens[i] == "nice" and i + 1 < len(tokens) and tokens[i + 1] == "-n") * 2
    rest = tokens[i:]
    if not rest:
        return None
    head = rest[0]
    if head in ("python", "python3", "torchrun", "srun") or head.endswith("/python"):
        if head.startswith("python") or head.endswith("/python"):
            if "-m" in rest[1:3]:
                module = rest[rest.index("-m") + 1]
                if module != "torch.distributed.run":
                    return None
        for j, tok in enumerate(rest[1:], 1):
            if tok.endswith(".py") and not tok.startswith("-"):
                return tok, rest[j + 1:]
        return None
    if head in ("bash", "sh", "sbatch"):
        for j, tok in enumerate(rest[1:], 1):
            if tok.endswith(".sh") and not tok.startswith("-"):
                return tok, rest[j + 1:]
        return None
    if head.endswith(".sh") and "/" in head:
        return head, rest[1:]
    return None


def documented_commands() -> list[Command]:
    out = []
    for doc in DOCUMENTS:
        for n, text in shell_lines(doc):
            for tokens in split_commands(text):
                found = script_of(tokens)
                if found and not is_placeholder(found[0]):  # `scripts_train/*.sh`: a family, not a command
                    out.append(Command(f"{doc}:{n}", text.strip(), found[0], tuple(found[1])))
    return out


COMMANDS = documented_commands()


class _Parser(Exception):
    def __init__(self, parser):
        self.parser = parser


def script_parser(path: str, monkeypatch) -> ScriptArgumentParser:
    """The parser a script builds, taken when it parses (nothing after that runs)."""
    def capture(self, args=None, namespace=None):
        raise _Parser(self)

    module = script(path)
    with monkeypatch.context() as m:
        m.setattr(ScriptArgumentParser, "parse_args", capture)
        m.setattr(ScriptArgumentParser, "parse_known_args", capture)
        try:
            (getattr(module, "parse_args", None) or module.main)([])
        except _Parser as got:
            return got.parser
    raise AssertionError(f"{path}: no ScriptArgumentParser was used to parse its arguments")


def filled_in(parser: ScriptArgumentParser, args: list[str]) -> list[str]:
    """The command's arguments, each placeholder given a value the option accepts (its first choice, or 1)."""
    out, action = [], None
    for tok in args:
        name, eq, value = tok.partition("=")
        if tok.startswith("--"):
            action = parser._option_string_actions.get(option_name(name))
            if eq and is_placeholder(value):
                tok = name + "=" + placeholder_value(action, value)
            out.append(tok)
            continue
        out.append(placeholder_value(action, tok) if is_placeholder(tok) else tok)
    return out


def placeholder_value(action, token: str) -> str:
    if action is not None and action.choices:
        return str(list(action.choices)[0])
    if action is not None and action.type in (int, float):
        return "1"
    return token


def option_name(arg: str) -> str:
    """`--take-uids=a` -> `--take_uids`, as ScriptArgumentParser reads it."""
    return "--" + arg[2:].partition("=")[0].replace("-", "_")


def options(args) -> list[str]:
    return [option_name(a) for a in args if a.startswith("--")]


def test_the_documents_show_the_commands_a_user_needs():
    """The extraction itself: the guide's commands are found (a broken extraction would check nothing)."""
    readme = {c.script for c in COMMANDS if c.where.startswith("README.md")}
    assert {"demo.sh", "test.sh", "train.py", "eval_knn_conv_stem_cls.py", "eval_feature_retrieval.py",
            "eval_3dposes.py", "tools/convert2hf_dino_conv_stem_cls.py",
            "dataset_preprocess/undistort_egovideos.py", "dataset_preprocess/preprocess_egoexo_body_pose.py",
            "scripts_train/source_slurm_train_stage1_contrastive_w_tokenizer.sh",
            "scripts_train/slurm_train_stage2_contrastive_joint.sh", "scripts_train/sbatch_template.sh",
            "scripts_train/torchrun_train.sh"} <= readme
    assert len(COMMANDS) > 40


def test_every_script_a_document_runs_exists():
    missing = [f"{c.where}: {c.script}" for c in COMMANDS if not os.path.isfile(os.path.join(REPO, c.script))]
    assert missing == []


def test_every_repository_path_a_command_names_exists():
    missing = []
    for c in COMMANDS:
        for arg in c.args:
            value = arg.partition("=")[2] if arg.startswith("--") else arg
            if value.startswith(REPO_DIRS) and not is_placeholder(value) and not os.path.exists(
                    os.path.join(REPO, value)):
                missing.append(f"{c.where}: {value}")
    assert missing == []


def test_every_python_command_parses_with_its_script(monkeypatch, capsys):
    """Exact option names (no abbreviations), then the whole argument list through the script's own parser."""
    parsers, errors = {}, []
    for c in COMMANDS:
        if not c.script.endswith(".py"):
            continue
        if c.script not in parsers:
            parsers[c.script] = script_parser(c.script, monkeypatch)
        parser = parsers[c.script]
        unknown = [o for o in options(c.args) if o not in parser._option_string_actions]
        if unknown:
            errors.append(f"{c.where}: {c.script} has no option {', '.join(unknown)}: {c.text}")
            continue
        try:
            parser.parse_args(filled_in(parser, list(c.args)))
        except SystemExit:
            errors.append(f"{c.where}: {c.text}\n  {capsys.readouterr().err.strip().splitlines()[-1]}")
    assert errors == [], "\n".join(errors)
    assert len(parsers) >= 10


def test_every_config_override_is_a_key_of_the_named_config():
    """`--opt KEY=VALUE` with a real config (`--config X` or a launch script's CONFIG argument) loads."""
    checked, errors = 0, []
    for c in COMMANDS:
        args = list(c.args)
        configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
        configs += [a for a in args if a.startswith("configs/") and a.endswith(".py")]
        opts = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--opt"]
        configs = [p for p in configs if not is_placeholder(p)]
        if not configs or not opts or any(is_placeholder(o) for o in opts):
            continue
        try:
            load_config(os.path.join(REPO, configs[0]), [parse_override(o) for o in opts])
            checked += 1
        except Exception as e:  # noqa: BLE001 - the message is the finding
            errors.append(f"{c.where}: {c.text}\n  {type(e).__name__}: {e}")
    assert errors == [], "\n".join(errors)
    assert checked >= 2


def test_every_shell_script_a_document_runs_is_executable_and_parses():
    scripts = sorted({c.script for c in COMMANDS if c.script.endswith(".sh")})
    assert len(scripts) >= 6
    not_executable = [s for s in scripts if not os.access(os.path.join(REPO, s), os.X_OK)]
    assert not_executable == []
    proc = subprocess.run(["bash", "-c", 'for f; do bash -n "$f" || echo "does not parse: $f"; done', "_", *scripts],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.stdout == "" and proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("line, expected", [
    ("torchrun --nproc_per_node=4 eval_knn_conv_stem_cls.py --data_path x", ("eval_knn_conv_stem_cls.py",
                                                                            ["--data_path", "x"])),
    ("srun -N 1 -n 4 python -u eval_3dposes.py --config CONFIG  # a job step", ("eval_3dposes.py",
                                                                               ["--config", "CONFIG"])),
    ("sbatch -N 4 --ntasks-per-node=8 scripts_train/a.sh 4 c.py 8", ("scripts_train/a.sh", ["4", "c.py", "8"])),
    ("sudo bash tools/slurm_test_cluster.sh start", ("tools/slurm_test_cluster.sh", ["start"])),
    ("python -m venv .venv && source .venv/bin/activate", None),
    ("squeue -u $USER", None),
])
def test_commands_are_read_as_a_shell_reads_them(line, expected):
    found = [script_of(t) for t in split_commands(line)]
    assert found[0] == expected


def test_every_relative_link_of_the_documents_resolves():
    """`[text](docs/x.md#anchor)` and images: the file exists, and the anchor is one of its headings."""
    broken = []
    for doc in [*DOCUMENTS, "docs/configs.md", "docs/data_formats.md", "docs/demo_findings.md"]:
        text = open(os.path.join(REPO, doc)).read()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(REPO, os.path.dirname(doc), path)) if path else os.path.join(REPO, doc)
            if not os.path.exists(full):
                broken.append(f"{doc}: {target}")
            elif anchor:
                headings = re.findall(r"^#+ (.+)$", open(full).read(), re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
                if anchor not in slugs:
                    broken.append(f"{doc}: {target} (no such heading)")
    assert broken == []
