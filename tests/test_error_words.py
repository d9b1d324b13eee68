"""Errors in the library's words: a message names values and the parameters that carried them; the command line
shows the flag instead of the parameter (``--image-size`` for ``image_size``), so a user of the Python API is
never told about a flag they did not pass."""

from __future__ import annotations

import ast
import re

import pytest

from cnnlab.commands.main import flag, main
from cnnlab.errors import CnnlabError, ConfigError, param
from tests.test_imports import SRC, package_modules
from tests.test_layers import LAYERS, layer_of


def test_a_parameter_reads_as_its_name_from_python_and_as_its_flag_on_the_command_line():
    e = ConfigError(f"{param('image_size')} must be an integer of at least 8, got 4; see {param('k')}")
    assert str(e) == "image_size must be an integer of at least 8, got 4; see k"
    assert e.worded(flag) == "--image-size must be an integer of at least 8, got 4; see -k"
    # Built around another message, the parameters stay parameters.
    outer = CnnlabError(f"{param('space')}: trial 3 drew values the training options refuse: {e.worded()}")
    assert outer.worded(flag) == ("--space: trial 3 drew values the training options refuse: --image-size must be "
                                  "an integer of at least 8, got 4; see -k")
    assert str(outer).startswith("space: trial 3") and "--" not in str(outer)


def test_a_value_from_a_config_file_is_named_by_the_file_and_key(tmp_path):
    from cnnlab.config import FaceTrainConfig, from_dict

    with pytest.raises(ConfigError) as e:
        from_dict(FaceTrainConfig, {"image_size": 8}, source="my.yaml")
    assert str(e.value) == e.value.worded(flag) == "my.yaml: image_size: expected an integer of at least 16, got 8"
    with pytest.raises(ConfigError) as e:
        from_dict(FaceTrainConfig, {"image_size": 8}, source="options")
    assert str(e.value).startswith("image_size: expected") and e.value.worded(flag).startswith("--image-size: expected")


def test_the_api_names_the_parameter_and_the_command_its_flag(tmp_path, capsys):
    from cnnlab.faces.align_folder import align_folder

    src = tmp_path / "photos"
    src.mkdir()
    with pytest.raises(CnnlabError) as e:
        align_folder(src, tmp_path / "aligned", size=8)
    assert str(e.value) == "size: expected an integer of at least 16, got 8"
    assert main(["faces", "align", str(src), str(tmp_path / "aligned"), "--size", "8"]) == 2
    assert capsys.readouterr().err == "cnnlab: error: --size: expected an integer of at least 16, got 8\n"


# --- no flag in the library's messages ----------------------------------------------------------

# The layers whose messages reach a user of the Python API: everything below the services (the HTTP service
# speaks to its clients and to whoever started it with cnnlab serve; the commands speak to the command line).
LIBRARY = max(i for i, (name, _) in enumerate(LAYERS) if name == "study analysis")
FLAG = re.compile(r"(?<![\w}-])--[a-z][\w-]*")
# A whole command line to run ("cnnlab faces train --resume RUN", "pip install --force-reinstall ...") is
# advice a user of either can follow: its flags belong to that command.
COMMAND = re.compile(r"\b(cnnlab|pip) ")


def _template(node: ast.expr) -> str | None:
    """The text of a string or f-string, its replacement fields as ``{}``; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left), _template(node.right)
        return None if left is None or right is None else left + right
    return None


def flags_in_messages(path) -> list[str]:
    """The flags the error messages raised in the module at ``path`` name outside a command line to run."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
            continue
        for arg in node.exc.args:
            text = _template(arg)
            for m in FLAG.finditer(text or ""):
                if not COMMAND.search(text[: m.start()]):
                    found.append(f"line {node.lineno}: {m.group(0)}")
    return found


def test_the_checker_finds_a_flag_but_not_a_command_to_run(tmp_path):
    (tmp_path / "m.py").write_text(
        "def f(x, run):\n"
        "    raise ValueError(f'--width: expected a number, got {x}')\n"
        "    raise ValueError('bad; use ' + '--skip-bad-images')\n"
        "    raise ValueError(f'finish it with cnnlab faces train --resume {run}')\n"
        "    raise ValueError(f'{x}--y is not a flag, nor is a-b--c')\n")
    assert flags_in_messages(tmp_path / "m.py") == ["line 2: --width", "line 3: --skip-bad-images"]


@pytest.mark.parametrize("module", sorted(m for m in package_modules() if layer_of(m) <= LIBRARY))
def test_library_messages_name_no_flags(module):
    found = flags_in_messages(package_modules()[module])
    assert not found, f"{module} raises messages naming flags (name the parameter with param()):\n  " + \
        "\n  ".join(found)


def test_the_library_is_checked():
    assert "cnnlab.inference.faces" in package_modules() and layer_of("cnnlab.inference.faces") <= LIBRARY
    assert layer_of("cnnlab.serve.app") > LIBRARY and layer_of("cnnlab.commands.main") > LIBRARY
    assert SRC.is_dir()
