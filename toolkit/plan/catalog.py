"""Find targets and recipes: the packaged catalog first, then an explicit .toml path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, UnknownNameError, did_you_mean
from .config import Recipe, Target, check_sections, read_toml

_PACKAGE = Path(__file__).resolve().parent.parent  # toolkit/


def _data_dir(name: str) -> Path:
    # A wheel carries the folders inside the package; a source checkout has them beside it.
    inside = _PACKAGE / name
    return inside if inside.is_dir() else _PACKAGE.parent / name


def targets_dir() -> Path:
    return _data_dir("targets")


def recipes_dir() -> Path:
    return _data_dir("recipes")


def target_names() -> list[str]:
    return sorted(p.stem for p in targets_dir().glob("*.toml"))


def recipe_names() -> list[str]:
    root = recipes_dir()
    return sorted(f"{p.parent.name}/{p.stem}" for p in root.glob("*/*.toml"))


def _header(
    raw: dict[str, Any], key: str, where: str, fields: dict[str, type], optional: tuple[str, ...] = ()
) -> dict[str, Any]:
    head = raw.get(key)
    if not isinstance(head, dict):
        raise ConfigError(f"{where}: missing the [{key}] table.")
    for name in head:
        if name not in fields:
            valid = ", ".join(sorted(fields))
            raise ConfigError(
                f"{where} [{key}]: unknown key '{name}'. Valid keys: {valid}.{did_you_mean(name, fields)}"
            )
    for name, tp in fields.items():
        if name not in head:
            if name in optional:
                continue
            raise ConfigError(f"{where} [{key}]: missing required key '{name}'.")
        value = head[name]
        if tp is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, tp) and (tp is not list or all(isinstance(v, str) for v in value))
        if not ok:
            kind = {list: "a list of strings", float: "a number"}.get(tp, "a string")
            raise ConfigError(f"{where} [{key}]: '{name}' must be {kind}, got {value!r}.")
    return head


def load_target_file(path: Path) -> Target:
    raw = read_toml(path)
    head = _header(raw, "target", str(path), {"description": str})
    sections = check_sections(raw, str(path), "target")
    return Target(name=path.stem, description=head["description"], sections=sections, path=path)


_RECIPE_FIELDS = {
    "target": str,
    "description": str,
    "architectures": list,
    "rope_scaling": str,
    "examples": list,
    # Optional: the checkpoint's partial_rotary_factor this recipe is for (1.0: the whole head
    # turns). Phi-4-mini is Phi3ForCausalLM with longrope like Phi-3.5-mini; 0.75 tells it apart.
    "partial_rotary_factor": float,
}


def load_recipe_file(path: Path, name: str | None = None) -> Recipe:
    raw = read_toml(path)
    head = _header(raw, "recipe", str(path), _RECIPE_FIELDS, optional=("partial_rotary_factor",))
    if head["rope_scaling"] not in ("longrope", "none", "any"):
        raise ConfigError(
            f"{path} [recipe]: 'rope_scaling' = {head['rope_scaling']!r} is not allowed. "
            "Valid values: longrope, none, any."
        )
    sections = check_sections(raw, str(path), "recipe")
    return Recipe(
        name=name or str(path),
        target=head["target"],
        description=head["description"],
        architectures=tuple(head["architectures"]),
        rope_scaling=head["rope_scaling"],
        partial_rotary_factor=float(head.get("partial_rotary_factor", 1.0)),
        examples=tuple(head["examples"]),
        sections=sections,
        path=path,
    )


def _looks_like_path(name: str) -> bool:
    return name.endswith(".toml")


def load_target(name: str) -> Target:
    if _looks_like_path(name):
        return load_target_file(Path(name))
    path = targets_dir() / f"{name}.toml"
    if not path.is_file():
        names = target_names()
        raise UnknownNameError(f"Unknown target '{name}'. Available: {', '.join(names)}.{did_you_mean(name, names)}")
    return load_target_file(path)


def load_recipe(name: str) -> Recipe:
    if _looks_like_path(name):
        return load_recipe_file(Path(name))
    path = recipes_dir() / f"{name}.toml"
    if "/" not in name or not path.is_file():
        names = recipe_names()
        raise UnknownNameError(
            f"Unknown recipe '{name}'. Available: {', '.join(names)}.{did_you_mean(name, names)}"
            " A recipe is named <model>/<target>, or give the path of a .toml file."
        )
    return load_recipe_file(path, name)


def recipes_for_target(target: str) -> list[Recipe]:
    return [load_recipe(n) for n in recipe_names() if n.endswith(f"/{target}")]


def recipe_fits(recipe: Recipe, architecture: str, rope_scaling: str, partial_rotary_factor: float = 1.0) -> bool:
    return (
        architecture in recipe.architectures
        and recipe.rope_scaling in ("any", rope_scaling)
        and abs(recipe.partial_rotary_factor - partial_rotary_factor) < 1e-9
    )


def _rope_words(rope_scaling: str, partial_rotary_factor: float) -> str:
    partial = f", partial rotary factor {partial_rotary_factor:g}" if partial_rotary_factor != 1.0 else ""
    return f"rope scaling: {rope_scaling}{partial}"


def choose_recipe(
    recipe_name: str | None,
    target_name: str | None,
    architecture: str,
    rope_scaling: str,
    partial_rotary_factor: float = 1.0,
) -> tuple[Recipe, Target]:
    """The recipe named, or the catalog recipe for this target that fits the checkpoint."""
    if recipe_name is None and target_name is None:
        raise ConfigError(f"Give --target ({', '.join(target_names())}) or --recipe (see `slmkit ls`).")
    what = f"{architecture} ({_rope_words(rope_scaling, partial_rotary_factor)})"
    if recipe_name is not None:
        recipe = load_recipe(recipe_name)
        if target_name is not None and target_name != recipe.target:
            raise ConfigError(
                f"Recipe '{recipe.name}' is for target '{recipe.target}', but --target is '{target_name}'. "
                "Drop --target, or pick the recipe for that target."
            )
        if not recipe_fits(recipe, architecture, rope_scaling, partial_rotary_factor):
            raise ConfigError(
                f"Recipe '{recipe.name}' is for {', '.join(recipe.architectures)} with "
                f"{_rope_words(recipe.rope_scaling, recipe.partial_rotary_factor)}; this checkpoint is {what}."
            )
        return recipe, load_target(recipe.target)
    target = load_target(target_name)
    fits = [
        r for r in recipes_for_target(target.name) if recipe_fits(r, architecture, rope_scaling, partial_rotary_factor)
    ]
    if not fits:
        names = [r.name for r in recipes_for_target(target.name)]
        raise ConfigError(
            f"No recipe for {what} on target '{target.name}'. Recipes for {target.name}: "
            f"{', '.join(names) or 'none'}. Start one with `slmkit cp <recipe> my.toml` and pass --recipe my.toml."
        )
    # A recipe for this rope type beats one that accepts any.
    fits.sort(key=lambda r: (r.rope_scaling == "any", r.name))
    return fits[0], target
