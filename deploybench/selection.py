"""The one reading of a `--model` option: a model's name, or `all`.

What `all` covers is each command's, and its --help says so: the zoo for `export`, what an
export root holds for `serve` and `edge`, what is being served for `load`, the quick digits
models for `run`.
"""

from __future__ import annotations

from pathlib import Path

from deploybench.errors import DeploybenchError, UsageError
from deploybench.manifest import exported_models, load_manifest


def resolve_models(name: str, root: Path | None = None, *, all_of: list[str] | None = None,
                   checked: bool = True) -> list[str]:
    """Model names for `--model NAME|all`.

    Without `root`: zoo models (`all`: every one). With `root`: models exported under it, each
    checked to have a manifest (`all`: every exported one). `all_of`, when given, is what
    `all` means instead (the models being served, the quick default of `run`). `checked=False`
    leaves a named model's manifest to the caller (edge makes a failed row of it)."""
    if root is None:
        from deploybench.zoo import UnknownModelError, all_specs, get_spec

        if name == "all":
            return list(all_of if all_of is not None else all_specs())
        try:
            get_spec(name)
        except UnknownModelError as error:
            raise DeploybenchError(str(error)) from None
        return [name]
    if not root.is_dir():
        raise UsageError(f"{root}: no such export folder; run `deploybench export --out {root}`")
    if name != "all":
        if checked:
            load_manifest(root, name)  # a clear error naming the manifest, if never exported
        return [name]
    models = all_of or exported_models(root)
    if not models:
        raise UsageError(f"{root}: no exported models; run `deploybench export --out {root}`")
    return models
