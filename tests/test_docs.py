"""The README, line by line (issue 15 item 7; ``make docs-check``): every ``e3d`` command in its fenced blocks
parses with the real argument parser, every flag it names exists, every repository path and link target it
cites exists, every measured figure names its source, and the fenced commands that need no cloud or GPU run for
real on tiny synthetic data.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pipeline.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TOP_DIRS = ("shards", "preprocess", "training", "pipeline", "cluster", "bench", "tests")
# How the README starts the CLI: the console script, the venv's copy, the module, the script ray submit runs.
E3D = re.compile(r"(?:^|\s)(?:\.venv/bin/e3d|e3d|python -m pipeline|pipeline/cli\.py)\s+(?=[a-z])")


def fenced_blocks(text: str) -> list[tuple[int, str, str]]:
    """``(first line number, language, body)`` of every fenced code block."""
    out, lang, start, body = [], None, 0, []
    for n, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^```\s*(\w*)", line)
        if fence and lang is None:
            lang, start, body = fence.group(1) or "text", n + 1, []
        elif fence:
            out.append((start, lang, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return out


def shell_commands(text: str) -> list[tuple[int, str]]:
    """Shell commands of the README's bash/sh blocks: continuation lines joined, comments and a trailing ``&``
    dropped; ``(line number, command)``."""
    cmds = []
    for start, lang, body in fenced_blocks(text):
        if lang not in ("bash", "sh", "shell"):
            continue
        pending, first = "", start
        for i, raw in enumerate(body.splitlines()):
            line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
            if not pending:
                first = start + i
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            line = (pending + line).strip().removesuffix("&").strip()
            pending = ""
            if line:
                cmds.append((first, line))
    return cmds


def e3d_argv(command: str) -> list[str] | None:
    """The ``e3d`` arguments of a shell command (None when it runs something else). Optional parts written
    ``[--gpu]`` count as given; ``...`` (elided arguments) is kept for the caller to see."""
    m = E3D.search(command)
    if not m:
        return None
    rest = command[m.end():].split(" -- ")[0]
    rest = re.sub(r"\[([^\]]*)\]", r"\1", rest)
    return [t for t in shlex.split(rest) if t]


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return parser, action.choices


def _flags(sub) -> set[str]:
    return {s for a in sub._actions for s in a.option_strings}


def _bench_parsers():
    """``e3d bench models`` hands its arguments to these parsers (the speed table, or with ``--runtime`` the
    deployment-runtime table)."""
    from training import runtime_bench, speed

    return speed.build_parser(), runtime_bench.build_parser()


def _bench_problems(line: int, argv: list[str]) -> list[str]:
    plain, runtime = _bench_parsers()
    p = runtime if "--runtime" in argv else plain
    known = _flags(p)
    problems = [f"README.md:{line}: e3d bench models has no flag {t}" for t in argv[2:]
                if t.startswith("--") and t.split("=")[0] not in known]
    if not problems and "..." not in argv:
        try:
            p.parse_args(argv[2:])
        except SystemExit:
            problems.append(f"README.md:{line}: `e3d {' '.join(argv)}` does not parse")
    return problems


def test_every_documented_e3d_command_parses_and_every_flag_exists():
    parser, subs = _subparsers()
    text = README.read_text()
    checked, problems = 0, []
    for line, cmd in shell_commands(text):
        argv = e3d_argv(cmd)
        if argv is None:
            continue
        checked += 1
        if argv[0] not in subs:
            problems.append(f"README.md:{line}: unknown command e3d {argv[0]}")
            continue
        if argv[:2] == ["bench", "models"]:
            problems += _bench_problems(line, argv)
            continue
        known = _flags(subs[argv[0]])
        problems += [f"README.md:{line}: e3d {argv[0]} has no flag {t}" for t in argv
                     if t.startswith("--") and t.split("=")[0] not in known]
        if "..." in argv or "…" in argv:
            continue  # elided arguments: flags checked, the line cannot parse as a whole
        try:
            parser.parse_args(argv)
        except SystemExit:
            problems.append(f"README.md:{line}: `e3d {' '.join(argv)}` does not parse")
    assert checked >= 20, f"only {checked} e3d commands found: is the README parser broken?"
    assert not problems, "\n".join(problems)


def test_every_flag_and_inline_command_in_the_prose_exists():
    _, subs = _subparsers()
    text = prose(README.read_text())
    every_flag = set().union(*(_flags(s) for s in subs.values()), *(_flags(p) for p in _bench_parsers()))
    spans = re.findall(r"`([^`]+)`", text.replace("\n", " "))
    problems = []
    for span in spans:
        argv = e3d_argv(" " + span)
        if argv and argv[0].endswith(":"):
            continue  # a quoted message ("e3d preprocess: error: ..."), not a command
        if argv and argv[0] in subs:
            known = _flags(subs[argv[0]])
            problems += [f"`{span}`: no flag {t}" for t in argv if t.startswith("--") and t not in known]
        elif argv and not argv[0].startswith(("kinetics600|", "<")):
            problems.append(f"`{span}`: unknown command")
        elif span.startswith("--"):  # an e3d option named on its own, e.g. `--max-failed 0.05`
            for flag in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", span):
                if flag not in every_flag:
                    problems.append(f"`{span}`: no e3d command has {flag}")
    assert not problems, "\n".join(problems)


def prose(text: str) -> str:
    """``text`` without its fenced blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


#: where a run's checkpoints are (the loop's checkpoint tag, Ray's folder name); tests/test_logs.py checks a real
#: run's path against it, this module checks every path the README shows
CHECKPOINT_PATH = re.compile(r"(?:epoch\d{4}-step\d{8}|<tag>|trials/<name>)/checkpoint\.pt$")


def test_documented_checkpoint_paths_have_the_runs_layout():
    paths = re.findall(r"[\w./<>:…-]*/checkpoint\.pt", README.read_text())
    assert paths, "the README shows no checkpoint path"
    stale = [p for p in paths if not CHECKPOINT_PATH.search(p)]
    assert not stale, f"checkpoint paths unlike a run's layout (epochNNNN-stepNNNNNNNN/checkpoint.pt): {stale}"


def _anchors(md: str) -> set[str]:
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+\s+(.*)$", md, flags=re.M)}


def test_every_repository_path_and_link_in_the_readme_exists():
    text = README.read_text()
    problems = []
    cited = set(re.findall(r"`([^`\s]+)`", text)) | {t for t in re.findall(r"(?<=\s)([\w./-]+\.(?:py|md|yaml))",
                                                                          text)}
    in_repo = re.compile(r"(?:^|\s)((?:" + "|".join(TOP_DIRS) + r")/[\w./-]+)")
    for _, _, body in fenced_blocks(text):  # paths the commands use: cluster/aws-gpu.yaml, ...
        cited |= set(in_repo.findall(body))
    for path in sorted(cited):
        ours = path.split("/")[0] in TOP_DIRS and not any(c in path for c in "<>*…")
        if ours and not path.startswith("shards/k600") and not (REPO / path.rstrip("/")).exists():
            problems.append(f"cited path {path} does not exist")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        doc = REPO / file if file else README
        if not doc.exists():
            problems.append(f"link {target}: no file {file}")
        elif anchor and anchor not in _anchors(doc.read_text()):
            problems.append(f"link {target}: no heading #{anchor} in {doc.name}")
    assert not problems, "\n".join(problems)


def test_every_measured_figure_names_where_it_comes_from():
    """A paragraph with a measured figure (speed-up ratios, timings, accuracies) cites the command or bench that
    produced it, and a cited bench document holds the same figure."""
    text = README.read_text()
    figure = re.compile(r"\d+(?:\.\d+)?x (?:less|more|faster)|\d+ min \d+ s|top-1 \d\.\d+")
    problems = []
    for para in re.split(r"\n\s*\n", text):
        if para.lstrip().startswith("```"):
            continue
        found = figure.findall(para)
        if not found:
            continue
        sources = re.findall(r"`([^`]*(?:make demo|bench/[\w./-]+|e3d [^`]+|pytest[^`]*|tests/[\w./-]+))`", para)
        if not sources:
            problems.append(f"figures {found} without a command or bench that measured them: {para[:80]!r}")
        for bench_doc in re.findall(r"\]\((bench/README\.md)[#)]", para):
            doc = (REPO / bench_doc).read_text()
            for ratio in re.findall(r"(\d+\.\d+)x", para):
                if ratio not in doc:
                    problems.append(f"{ratio}x is not in {bench_doc}")
    assert not problems, "\n".join(problems)


def test_readme_parser_sees_continuations_options_and_elisions():
    text = "```bash\ne3d eval --checkpoint a \\\n    --shards b --out c   # comment\nray dashboard x &\n```\n"
    assert shell_commands(text) == [(2, "e3d eval --checkpoint a      --shards b --out c"), (4, "ray dashboard x")]
    assert e3d_argv("ray submit c.yaml pipeline/cli.py preprocess jester --src /s") == [
        "preprocess", "jester", "--src", "/s"]
    assert e3d_argv("e3d sweep --grid table8 [--gpu] [--set epochs=60]") == [
        "sweep", "--grid", "table8", "--gpu", "--set", "epochs=60"]
    assert e3d_argv("ray job submit --address http://h:8265 -- python -m pipeline verify /d") == ["verify", "/d"]
    assert e3d_argv("docker build -f x .") is None


@pytest.mark.slow
@pytest.mark.ray
def test_the_local_preprocessing_commands_run_on_tiny_data(tmp_path, capsys):
    """The README's "Preprocess a dataset" block for Jester, run as written with its paths pointed at a tiny
    synthetic copy; then the verify line."""
    from pipeline.cli import main
    from preprocess.synth import SynthConfig, generate

    src, out = tmp_path / "jester", tmp_path / "shards" / "jester"
    generate("jester", src, SynthConfig(num_classes=2, videos_per_class=2, seed=0, bad_inputs=False))
    ran = []
    for _, cmd in shell_commands(README.read_text()):
        argv = e3d_argv(cmd)
        if not argv or "://" in cmd:  # cloud: not run here (tests/test_object_storage.py covers the bucket)
            continue
        if argv[0] in ("preprocess", "verify") and "/data/jester" in cmd or argv[:2] == ["verify",
                                                                                      "/data/shards/jester"]:
            argv = [a.replace("/data/shards/jester", str(out)).replace("/data/jester", str(src)) for a in argv]
            if argv[0] == "preprocess":
                argv += ["--num-cpus", "1", "--no-progress", "--short-side", "32"]
            assert main(argv) == 0, argv
            ran.append(argv[0])
    if "verify" not in ran:  # the README verifies k600; verify the shards this test made the same way
        assert main(["verify", str(out)]) == 0
        ran.append("verify")
    assert ran[0] == "preprocess" and "verify" in ran
    assert "OK" in capsys.readouterr().out
