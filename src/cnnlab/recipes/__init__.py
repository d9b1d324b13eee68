"""Named training recipes of the CIFAR-10 study: YAML files of options a run starts from (``--recipe NAME``).

A recipe file holds a one-line ``description`` and the options it sets, under their config names. The
ones shipped with cnnlab live beside this module; ``cnnlab cifar recipes`` lists them and
``cnnlab cifar recipes NAME`` prints one, to copy and change: ``--recipe`` takes the path of such a file
too. A run records the recipe it started from (``recipe`` in ``config.yaml``); ``--config`` files and
the options given override the recipe's values.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from cnnlab.config import DEFAULT_CIFAR_RECIPE, CifarTrainConfig, check_fields, load_yaml
from cnnlab.errors import ConfigError, param

SUFFIX = ".yaml"


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    options: dict
    source: str
    """The file it was read from, as messages name it."""


def _folder():
    return resources.files(__name__)


def recipe_names() -> list[str]:
    """The recipes shipped with cnnlab, by name."""
    return sorted(p.name[:-len(SUFFIX)] for p in _folder().iterdir() if p.name.endswith(SUFFIX))


def recipe_text(name: str) -> str:
    """The YAML text of the shipped recipe ``name`` (what a user copies)."""
    _check_name(name)
    return (_folder() / f"{name}{SUFFIX}").read_text(encoding="utf-8")


def _check_name(name: str) -> None:
    if name not in recipe_names():
        raise ConfigError(f"{param('recipe')}: expected a recipe name ({', '.join(recipe_names())}) or a YAML file, "
                          f"got {name!r}")


def _is_path(value: str) -> bool:
    """A shipped recipe's name is that recipe, even where a file of that name lies in the current folder."""
    return value not in recipe_names()


def load_recipe(value: str) -> Recipe:
    """The recipe ``value`` names: a shipped one, or a YAML file of options. Its values are checked
    against :class:`~cnnlab.config.CifarTrainConfig`'s fields, errors naming the file and the key."""
    if _is_path(value):
        path = Path(value)
        if not path.exists():
            raise ConfigError(f"{param('recipe')}: expected a recipe name ({', '.join(recipe_names())}) or a YAML file, "
                              f"got {value!r}, which is neither")
        data, source = load_yaml(path), str(path)
    else:
        _check_name(value)
        with resources.as_file(_folder() / f"{value}{SUFFIX}") as path:
            data, source = load_yaml(path), f"recipe {value} ({path.name})"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of option names to values")
    data = dict(data)
    description = data.pop("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{source}: description: expected one line of text, got {description!r}")
    if "recipe" in data:
        raise ConfigError(f"{source}: recipe: a recipe cannot name another recipe; copy its options instead")
    options = check_fields(CifarTrainConfig, data, source=source)
    return Recipe(Path(value).stem if _is_path(value) else value, description.strip(), options, source)


def recipe_base(values: dict, sources: dict[str, str]) -> tuple[dict, str]:
    """The values a CIFAR run starts from, below its ``--config`` file and options (``values``, each
    key's origin in ``sources``): the recipe they name (``recipe``), or :data:`DEFAULT_CIFAR_RECIPE`.
    Returns them with the recipe's name, and where they come from."""
    name = values.get("recipe", DEFAULT_CIFAR_RECIPE)
    if name is None:  # recipe: null, no recipe: the dataclass defaults
        return {"recipe": None}, "defaults"
    try:
        recipe = load_recipe(name)
    except ConfigError as e:
        where = sources.get("recipe", "options")
        if where == "options" or not str(e).startswith("recipe: "):
            raise
        raise ConfigError(f"{where}: recipe: {str(e).removeprefix('recipe: ')}") from None
    return {**_fitted(recipe.options, values), "recipe": name}, recipe.source


def _fitted(options: dict, values: dict) -> dict:
    """A recipe's ``options`` for a run whose own values are ``values``: a run given fewer epochs than the
    recipe warms up for the same share of them (the fast recipe's 2 of 30 epochs are a fifteenth of a 3-epoch
    run), unless it gives its own warm-up."""
    epochs, warmup = values.get("epochs"), options.get("warmup_epochs")
    mine = options.get("epochs")
    if "warmup_epochs" in values or not (epochs and warmup and mine) or epochs >= mine:
        return options
    return {**options, "warmup_epochs": warmup * epochs / mine}


def describe() -> list[tuple[str, str]]:
    """``(name, description)`` of every shipped recipe, for ``cnnlab cifar recipes``."""
    return [(name, load_recipe(name).description) for name in recipe_names()]
