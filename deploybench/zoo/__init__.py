"""The model zoo. A model is one module in this package that declares `SPEC: ModelSpec`, or a
user's model imported into the user model folder (zoo/user.py): both are specs, and every stage
asks the zoo, never where a model came from."""

from __future__ import annotations

import importlib
import pkgutil

from deploybench.zoo.spec import ModelSpec

_NOT_MODELS = {"spec", "data", "train", "docstrings", "user"}


def all_specs() -> dict[str, ModelSpec]:
    """Every model: the zoo's, then the user's imported ones, by name."""
    from deploybench.zoo.user import user_specs

    zoo = zoo_specs()
    users = {name: spec for name, spec in user_specs().items() if name not in zoo}
    return {**zoo, **users}


def zoo_specs() -> dict[str, ModelSpec]:
    """Every model the zoo's own modules declare, by name."""
    specs: dict[str, ModelSpec] = {}
    for module_info in pkgutil.iter_modules(__path__):
        if module_info.name in _NOT_MODELS:
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        spec = getattr(module, "SPEC", None)
        if isinstance(spec, ModelSpec):
            specs[spec.name] = spec
    return dict(sorted(specs.items()))


class UnknownModelError(LookupError):
    pass


def get_spec(name: str) -> ModelSpec:
    specs = all_specs()
    if name not in specs:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(specs)}"
        )
    return specs[name]
