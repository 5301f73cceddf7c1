"""Find a plug-in value (a conversion `Table`, a parity `Suite`) by `MODULE:NAME`, or by a registered name.

MODULE is a dotted module importable from the current environment (`examples.gpt2.table`) or a path to a
Python file (`path/to/my_port.py`); NAME is an attribute of it. Registered names (`vae`, `dit`) are short
for a `MODULE:NAME` and are resolved the same way, so the project's own models are plug-ins like any other.

Framework-free: importing this imports neither torch nor jax (the plug-in module may).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class PluginError(ValueError):
    """A plug-in spec that cannot be resolved; the message names the spec and what is wrong."""


def _package_module(resolved: Path) -> tuple[Path, str] | None:
    """For a file inside a package (its folder has `__init__.py`): the folder above the outermost package
    and the file's dotted module name (`examples/gpt2/suite.py` -> `examples.gpt2.suite`)."""
    if not (resolved.parent / "__init__.py").is_file() or resolved.name == "__init__.py":
        return None
    parts, root = [resolved.stem], resolved.parent
    while (root / "__init__.py").is_file():
        parts.insert(0, root.name)
        root = root.parent
    return root, ".".join(parts)


def _import_file(path: Path):
    resolved = path.resolve()
    package = _package_module(resolved)
    if package is not None:
        # a file of a package is that package's module, so that its own imports (relative or absolute
        # through the package) work the same whichever way it is named
        root, dotted = package
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        return importlib.import_module(dotted)
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    name = f"_dfc_plugin_{resolved.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise PluginError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    # the file's own folder first, so that it may import the modules beside it
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module  # dataclasses and pickling look a module up by name while it runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _is_path(module: str) -> bool:
    return module.endswith(".py") or "/" in module or "\\" in module


def load_plugin(spec: str, what: str, registry: Mapping[str, str] = {}, expect: type | None = None) -> Any:
    """The value `spec` names. `what` ("table", "suite") is for messages; `registry` maps short names to
    `MODULE:NAME`; `expect` is the type the value must have. Errors are `PluginError`, one line each."""
    original = spec
    if spec in registry:
        spec = registry[spec]
    module_name, colon, attribute = spec.rpartition(":")
    if not colon or not module_name or not attribute:
        known = f"; registered names: {', '.join(sorted(registry))}" if registry else ""
        raise PluginError(f"{what} {original!r}: expected MODULE:NAME (a dotted module or a .py path){known}")
    try:
        if _is_path(module_name):
            path = Path(module_name)
            if not path.is_file():
                raise PluginError(f"{what} {original}: {module_name}: no such file")
            module = _import_file(path)
        else:
            module = importlib.import_module(module_name)
    except PluginError:
        raise
    except ModuleNotFoundError as err:
        raise PluginError(f"{what} {original}: cannot import {module_name}: {err}") from None
    except Exception as err:  # the plug-in's own code failed while importing
        raise PluginError(
            f"{what} {original}: importing {module_name} failed: {type(err).__name__}: {err}"
        ) from None
    if not hasattr(module, attribute):
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise PluginError(
            f"{what} {original}: {module_name} has no {attribute!r} (it has: {', '.join(public)})"
        )
    value = getattr(module, attribute)
    if expect is not None and not isinstance(value, expect):
        raise PluginError(
            f"{what} {original}: {module_name}:{attribute} is a {type(value).__name__}, "
            f"not a {expect.__name__}"
        )
    return value
