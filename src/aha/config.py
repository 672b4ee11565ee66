"""Typed dataclass configs: an optional YAML recipe plus `key=value` overrides with dotted keys.

Unknown keys and wrong types fail with a one-line `AhaError` naming the file, line and key and
suggesting the closest valid key. The resolved config is saved with every run (`save_config`).
Fields are documented where they are declared (a string right under each field).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from aha.errors import AhaError, closest
from aha.io import atomic_write_text, read_text

# ---------------------------------------------------------------------------------------------
# Number ranges, declared with a field's type and checked where a value enters (recipe or command line).
# Every float must be finite (nan and inf never mean anything here); a field that takes a range says so
# in its type: `group_size: PositiveInt = 8`.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The allowed range of a number field, attached to its type with `Annotated[int, Bounds(low=1)]`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """True: `low` itself is excluded."""
    high_open: bool = False
    """True: `high` itself is excluded."""

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


PositiveInt = Annotated[int, Bounds(low=1)]
"""Sizes and counts: group sizes, batch sizes, token budgets, intervals."""
NonNegInt = Annotated[int, Bounds(low=0)]
"""Counts where 0 has a documented meaning (none, off, all)."""
PositiveFloat = Annotated[float, Bounds(low=0, low_open=True)]
"""Time limits, learning rates."""
NonNegFloat = Annotated[float, Bounds(low=0)]
"""Temperatures (0: greedy), coefficients and norms (0: off)."""
Probability = Annotated[float, Bounds(low=0, high=1, low_open=True)]
"""In (0, 1]: top_p, similarity thresholds."""
Fraction = Annotated[float, Bounds(low=0, high=1)]
"""In [0, 1]: shares of a batch or of a text."""
FractionBelowOne = Annotated[float, Bounds(low=0, high=1, high_open=True)]
"""In [0, 1): Adam's betas, dropout, a share whose complement is divided by."""

# ---------------------------------------------------------------------------------------------
# Generic machinery: YAML + overrides -> dataclass, with located errors.
# ---------------------------------------------------------------------------------------------


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key path -> 1-based line in the YAML text, for error messages."""
    lines: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}{k.value}"
                lines[key] = k.start_mark.line + 1
                walk(v, key + ".")

    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass
    return lines


class _Source:
    """Where a value came from: a recipe file (with line numbers), the command line, or (`origin`) a config
    object built in code."""

    def __init__(self, path: str | None = None, lines: dict[str, int] | None = None, origin: str = "command line"):
        self.path, self.lines, self.cli_keys, self.origin = path, lines or {}, set(), origin

    def where(self, key: str) -> str:
        if key in self.cli_keys or self.path is None:
            return self.origin
        line = self.lines.get(key)
        return f"{self.path}:{line}" if line else self.path


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise AhaError(f"command line: '{item}' is not key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise AhaError(f"command line: '{item}' has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # Comma lists on the command line: rewards=accuracy,format
    if isinstance(value, str) and "," in value and not raw.strip().startswith(("'", '"')):
        value = [yaml.safe_load(v) if v.strip() else "" for v in value.split(",")]
    return key, value


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str, src: _Source) -> Any:
    """Check (and gently convert) `value` against the annotation `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def bad(expected: str) -> AhaError:
        return AhaError(f"{src.where(key)}: {key}: expected {expected}, got {value!r}")

    if tp is Any:
        return value
    if origin is Annotated:
        value = _coerce(value, args[0], key, src)
        for bounds in (m for m in tp.__metadata__ if isinstance(m, Bounds)):
            if value is not None and not bounds.holds(value):
                raise AhaError(f"{src.where(key)}: {key}: must be {bounds}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, src)
            except AhaError as e:
                errors.append(e)
        if len(errors) == 1:  # `X | None`: the one real arm's message (a range says "must be >= 0")
            raise errors[0]
        raise bad(" or ".join(_type_name(typing.get_args(a)[0] if typing.get_origin(a) is Annotated else a) for a in args))
    if origin is Literal:
        if value in args:
            return value
        raise AhaError(f"{src.where(key)}: {key}: expected one of {list(args)}, got {value!r}{closest(value, args)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # an object built in code (`check`)
            check(value, key + ".", src)
            return value
        if not isinstance(value, dict):
            raise bad("a mapping")
        return _build(tp, value, key + ".", src)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise bad("an integer")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads `1e-5` as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None and math.isfinite(number):
            return number
        raise bad("a finite number")
    if tp is str:
        if isinstance(value, (str, int, float, os.PathLike)) and not isinstance(value, bool):
            return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        raise bad("a string")
    if origin in (list, tuple):
        if value is None:
            value = []
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, key, src) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise bad("a mapping")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{key}.{k}", src) for k, v in value.items()}
    return value


def _build(cls, data: dict, prefix: str, src: _Source):
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        renamed = getattr(cls, "RENAMED", {})
        if k not in fields and k in renamed:  # a new key, or (with a space) what to do instead
            new = renamed[k]
            raise AhaError(f"{src.where(key)}: {key}: " + (new if " " in new else f"renamed to {prefix}{new}"))
        if k not in fields:
            valid = [f"{prefix}{n}" for n in fields]
            raise AhaError(f"{src.where(key)}: {key}: unknown key{closest(key, valid)}")
        kwargs[k] = _coerce(v, hints[k], key, src)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise AhaError(f"{src.where(prefix.rstrip('.') or 'config')}: {e}") from None
    _run_check(obj, prefix, src)
    return obj


# ---------------------------------------------------------------------------------------------
# Checks beyond a field's type and range, in one style: a config class may define `check(self)`, which raises
# `Invalid(key, why)` for a value its type allows but the config's meaning does not (two fields that disagree,
# a string that must name something). Loading a recipe runs it for every section (the error names the file and
# line); `check(cfg)` does the same for a config built in code, types and ranges included.
# ---------------------------------------------------------------------------------------------


class Invalid(ValueError):
    """Raised by a config's `check()`: `key` is dotted, relative to that config."""

    def __init__(self, key: str, why: str):
        super().__init__(f"{key}: {why}")
        self.key, self.why = key, why


def _run_check(obj, prefix: str, src: _Source) -> None:
    method = getattr(obj, "check", None)
    if method is None:
        return
    try:
        method()
    except Invalid as e:
        key = f"{prefix}{e.key}"
        raise AhaError(f"{src.where(key)}: {key}: {e.why}") from None


def check(cfg, prefix: str = "", _src: _Source | None = None) -> None:
    """Check a config object built in code as loading a recipe checks one: every field against its type and
    range, then each section's `check()` (inner sections first). A failure is a one-line AhaError naming the
    key in full (`prefix` + key) after the config's class name."""
    src = _src or _Source(origin=type(cfg).__name__)
    hints = typing.get_type_hints(type(cfg), include_extras=True)
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        _coerce(getattr(cfg, f.name), hints[f.name], f"{prefix}{f.name}", src)
    _run_check(cfg, prefix, src)


def _with_defaults(cls, tree: dict, default_obj) -> dict:
    """The recipe tree completed with the defaults, so that a nested mapping (`data: {eval_size: 0}`) or a
    dotted override (`rewards.weights.format=0.2`) changes only the keys it names. Unknown keys are kept
    (and rejected later, with their location)."""
    import copy

    out = dict(tree)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        value = getattr(default_obj, f.name)
        if dataclasses.is_dataclass(value):
            sub = tree.get(f.name, {})
            if isinstance(sub, dict):
                out[f.name] = _with_defaults(type(value), sub, value)
        elif f.name not in tree:
            out[f.name] = copy.deepcopy(value)
    return out


RUNTIME = "runtime"
"""The recipe section (and `runtime.*` command-line keys) of process settings (`aha.runtime.RuntimeConfig`):
read by `aha.runtime.load`, left out of every stage's config."""


def _read_recipe(recipe: str | os.PathLike | None) -> tuple[dict, _Source]:
    if recipe is None:
        return {}, _Source()
    path = Path(recipe)
    if not path.is_file():
        raise AhaError(f"{recipe}: recipe file not found")
    text = read_text(path)
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise AhaError(f"{recipe}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise AhaError(f"{recipe}:1: a recipe must be a mapping of keys to values")
    return loaded or {}, _Source(str(recipe), _key_lines(text))


def _is_runtime(key: str) -> bool:
    return key == RUNTIME or key.startswith(RUNTIME + ".")


def load_config(cls, recipe: str | os.PathLike | None = None, overrides: list[str] | None = None):
    """Build `cls` from an optional YAML recipe and `key=value` overrides (dotted keys). The `runtime`
    section and `runtime.*` overrides are not the stage's (`aha.runtime.load` reads them)."""
    tree, src = _read_recipe(recipe)
    tree = {k: v for k, v in tree.items() if k != RUNTIME}
    try:
        tree = _with_defaults(cls, tree, cls())
    except TypeError:  # a config with required fields: no defaults to complete
        pass
    for item in overrides or []:
        key, value = _parse_override(item)
        if _is_runtime(key):
            continue
        src.cli_keys.add(key)
        _set_dotted(tree, key, value)
    return _build(cls, tree, "", src)


def load_runtime(cls, recipe: str | os.PathLike | None = None, overrides: list[str] | None = None):
    """`cls` (`aha.runtime.RuntimeConfig`, whose module builds on this one) from a recipe's `runtime:` section
    and the `runtime.KEY=VALUE` overrides, checked with located errors like any section."""
    tree, src = _read_recipe(recipe)
    if not isinstance(tree.get(RUNTIME) or {}, dict):
        raise AhaError(f"{src.where(RUNTIME)}: {RUNTIME}: expected a mapping (threads, malloc)")
    section = dict(tree.get(RUNTIME) or {})
    for item in overrides or []:
        key, value = _parse_override(item)
        if key == RUNTIME:  # runtime={malloc: default}
            if not isinstance(value, dict):
                raise AhaError(f"command line: {RUNTIME}: expected a mapping, got {value!r}")
            src.cli_keys.update(f"{RUNTIME}.{k}" for k in value)
            section.update(value)
        elif _is_runtime(key):
            src.cli_keys.add(key)
            _set_dotted(section, key[len(RUNTIME) + 1:], value)
    return build_section(cls, section, RUNTIME + ".", src)


def recipe_source(recipe: str | os.PathLike | None = None, overrides: list[str] | None = None) -> _Source:
    """Where each dotted key of a loaded recipe came from: `.where(key)` is "file:line" or "command line"."""
    src = _Source()
    if recipe is not None:
        src = _Source(str(recipe), _key_lines(read_text(recipe)))
    src.cli_keys = {_parse_override(o)[0] for o in overrides or []}
    return src


def build_section(cls, tree: dict, prefix: str, source: _Source):
    """`cls` from `tree`, one section of an already-loaded recipe (e.g. a pipeline stage under `prefix`):
    defaults completed, unknown keys and wrong types reported at `prefix + key` via `source`."""
    try:
        tree = _with_defaults(cls, tree, cls())
    except TypeError:  # a config with required fields: no defaults to complete
        pass
    return _build(cls, tree, prefix, source)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | os.PathLike, runtime=None) -> None:
    """Write the resolved config as YAML, atomically; `runtime` (a RuntimeConfig): the process settings it ran
    with, as the `runtime:` section (a run folder's config.yaml is then the whole recipe of its run)."""
    tree = to_dict(cfg)
    if runtime is not None:
        tree[RUNTIME] = to_dict(runtime)
    atomic_write_text(Path(path), yaml.safe_dump(tree, sort_keys=False))


def field_docs(cls) -> dict[str, str]:
    """Field name -> the docstring written under it (used by `aha <cmd> --help`)."""
    import ast
    import inspect
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    body = tree.body[0].body if tree.body else []
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                if isinstance(nxt.value.value, str):
                    docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) for every leaf field: the reference printed by `--help`."""
    rows = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, f"{prefix}{f.name}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        rows.append((f"{prefix}{f.name}", repr(default), docs.get(f.name, "")))
    return rows
