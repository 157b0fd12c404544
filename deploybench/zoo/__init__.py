"""The model zoo. A model is one module in this package that declares `SPEC: ModelSpec`."""

from __future__ import annotations

import importlib
import pkgutil

from deploybench.zoo.spec import ModelSpec

_NOT_MODELS = {"spec", "data", "train", "docstrings"}


def all_specs() -> dict[str, ModelSpec]:
    """Every model the zoo declares, by name."""
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
