"""The composed command line: both studies, and what they share written once."""

from __future__ import annotations

import argparse
import ast
import io
import json
import tokenize
from collections import defaultdict
from pathlib import Path

import pytest

from cnnlab.commands.main import build_parser, main

SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab"
STUDIES = ("cifar", "faces")


def _subcommands(parser: argparse.ArgumentParser, path: str = ""):
    """(path, parser, help) of every subcommand below ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}".strip(), sub, helps.get(name)
                yield from _subcommands(sub, f"{path} {name}")


def _commands() -> dict[str, tuple[argparse.ArgumentParser, str | None]]:
    return {path: (p, h) for path, p, h in _subcommands(build_parser()) if path.count(" ") == 1}


def test_both_studies_and_their_commands_are_there():
    commands = _commands()
    assert {c.split()[0] for c in commands} == set(STUDIES)
    assert {"cifar train", "cifar evaluate", "cifar figures", "cifar compare", "faces train", "faces figures",
            "faces verify", "faces search", "faces download"} <= set(commands)


def test_version_and_study_help_exit_cleanly(capsys):
    for argv in (["--version"], ["cifar", "--help"], ["faces", "--help"], ["faces", "search", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    assert "space.yaml:\n  lr:" in capsys.readouterr().out


def _string_constants() -> dict[str, int]:
    """How often each string literal stands in the package (adjacent literals count as one)."""
    counts: dict[str, int] = defaultdict(int)
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                counts[node.value] += 1
    return counts


def test_a_help_text_two_commands_share_is_written_once():
    """``--device``, the figures command, --config of compare and search...: one definition each."""
    used_by: dict[str, set[str]] = defaultdict(set)
    for command, (parser, help_text) in _commands().items():
        used_by[help_text].add(command)
        for action in parser._actions:
            if action.help and action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                used_by[action.help].add(command)
    constants = _string_constants()
    shared = {h: sorted(c) for h, c in used_by.items() if len(c) > 1}
    assert "auto, cpu, cuda, cuda:N (default: auto)" in shared  # the walk saw the shared options
    written_twice = {h: constants[h] for h in shared if constants.get(h, 0) > 1}
    assert not written_twice, f"help texts written more than once in src/cnnlab: {written_twice}"


def test_commands_that_load_a_run_take_the_same_device_option():
    def option(parser, name):
        return next((a for a in parser._actions if name in a.option_strings or a.dest == name), None)

    devices = {c: option(p, "--device") for c, (p, _) in _commands().items() if option(p, "run_dir")}
    devices = {c: a for c, a in devices.items() if a is not None}
    assert {"cifar evaluate", "faces evaluate", "faces analyze", "faces verify", "faces identify"} <= set(devices)
    assert len({(a.default, a.help) for a in devices.values()}) == 1


# --- no code copied between the two studies' command lines -------------------------------------

_NOT_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
             tokenize.ENDMARKER}


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, shape) of each line of code: strings and numbers are abstracted, names kept.

    Lines of prose (only string literals), lone punctuation and imports are passed over:
    help texts differ by design and say nothing of copied logic.
    """
    by_line: dict[int, list[str]] = defaultdict(list)
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in _NOT_CODE:
            continue
        shape = {tokenize.STRING: "S", tokenize.NUMBER: "N"}.get(tok.type, tok.string)
        by_line[tok.start[0]].append(shape)
    lines = []
    for number, parts in sorted(by_line.items()):
        if all(p == "S" or p in "()[]{},:" for p in parts) or parts[0] in ("import", "from"):
            continue
        lines.append((number, " ".join(parts)))
    return lines


def shared_windows(a: str, b: str, size: int = 6) -> list[tuple[int, int]]:
    """(line in a, line in b) where ``size`` lines of code in a row stand in both texts."""
    def windows(lines):
        return {tuple(s for _, s in lines[i:i + size]): lines[i][0] for i in range(len(lines) - size + 1)}

    wa, wb = windows(code_lines(a)), windows(code_lines(b))
    return sorted((wa[w], wb[w]) for w in wa.keys() & wb.keys())


def test_shared_windows_finds_copied_code_with_other_strings():
    body = '''
def _{name}(args):
    from cnnlab.{name}.evaluate import redraw_figures

    if not args.run_dir:
        raise SystemExit(2)
    for path in redraw_figures(args.run_dir, log_far=args.log_far):  # {name}
        print(path)
    print(f"report: {{Path(args.out) / {text!r}}}")
    return {number}
'''
    a = body.format(name="cifar", text="report.html", number=0) + "x = 1\n"
    b = "y = 2\n" + body.format(name="cifar", text="index.html", number=1)
    assert shared_windows(a, b) == [(2, 3), (5, 6)]  # from the def and from the if: 7 lines in common
    other = body.format(name="cifar", text="", number=0).replace("redraw_figures(", "draw_figures(")
    assert shared_windows(a, other) == []  # another function called in the middle: not six lines alike
    prose = 'help=("a"\n      "b"\n      "c"\n      "d"\n      "e"\n      "f")\n'
    assert shared_windows(prose + "z = 1\n", prose.replace('"', "'") + "z = 2\n") == []


def test_study_command_lines_share_no_code():
    cifar, faces = ((SRC / "commands" / f"{study}.py").read_text() for study in STUDIES)
    assert len(code_lines(cifar)) > 30 and len(code_lines(faces)) > 30
    assert shared_windows(cifar, faces) == [], "commands/cifar.py and commands/faces.py repeat six lines of code"


def test_version_prints_the_package_version(capsys):
    import tomllib

    from cnnlab import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"cnnlab {__version__}\n"
    pyproject = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == __version__


def test_blocks_lists_variants_with_commas_in_every_command(capsys, tmp_path):
    assert main(["cifar", "summary", "--blocks", "A,E", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["blocks"], r["trainable_parameters"]) for r in rows] == [("A", 7_771_658), ("E", 752_266)]
    assert main(["cifar", "summary", "--blocks", "AABBCCDE"]) == 0
    assert "BaseCNN AABBCCDE" in capsys.readouterr().out
    # train takes one variant: a list is refused, pointing to compare, and nothing is written
    out = tmp_path / "run"
    assert main(["cifar", "train", "--blocks", "A,E", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--blocks 'A,E': a comma separates variants (2 here)" in err and "cifar compare --blocks A,E" in err
    assert not out.exists()


def test_search_help_groups_are_named_for_what_they_hold():
    parser = _commands()["faces search"][0]
    groups = {g.title: {a.dest for a in g._group_actions} for g in parser._action_groups}
    search = next(v for k, v in groups.items() if k.startswith("search options"))
    training = next(v for k, v in groups.items() if k.startswith("training options of every trial"))
    assert {"trials", "study", "storage", "space", "search_seed"} <= search
    assert {"lr", "margin", "epochs", "data_dir"} <= training and not search & training
    assert not any(k.startswith("run options") for k in groups)


def test_a_default_the_help_text_states_is_not_repeated():
    text = _commands()["cifar train"][0].format_help()
    assert "20% of each class on smaller sets) (default" not in text.replace("\n", " ").replace("  ", "")
    assert text.count("(default: 0.85)") == 1  # --gamma: the default appended once
