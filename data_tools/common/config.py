"""Config as data: dataclass defaults, merged with YAML files, then dotted CLI overrides.

Every subcommand uses the same three layers, so `wsl X --config a.yaml b.yaml key.sub=3`
means the same thing everywhere. A wrong key or type fails at once with one line naming
the key, before any work starts.
"""
from __future__ import annotations

import dataclasses
import inspect
import io
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from data_tools.common.fields import check_ranges


class ConfigError(ValueError):
    """A config problem, reported to the user as one line."""


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    # YAML typing, so `a.b=3` is an int, `a.b=[1,2]` a list and `a.b=null` None.
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def set_dotted(tree: dict, keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{'.'.join(keys)}': '{key}' is not a section")
    node[keys[-1]] = value


def build(cls: type, files: list[str] = (), overrides: list[str] = (), check: bool = True):
    """Make a `cls` instance from defaults, YAML files (in order) and dotted overrides.

    Types and declared ranges are always checked; `check=False` skips the cross-field
    `check()` methods (`wsl config` shows a config that still lacks, say, its run_dir)."""
    tree: dict = {}
    for path in files:
        tree = merge(tree, load_yaml(path))
    for text in overrides:
        keys, value = parse_override(text)
        set_dotted(tree, keys, value)
    obj = from_dict(cls, tree, check=False)
    if check:
        check_sections(obj)
    return obj


def from_dict(cls: type, data: dict, check: bool = True):
    """A checked `cls` instance: types, then every declared range, then each check()."""
    obj = _make(cls, data, "")
    try:
        check_ranges(obj)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if check:
        check_sections(obj)
    return obj


def check_sections(obj, prefix: str = "") -> None:
    """Each section's cross-field check(), innermost first; errors name the section."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_sections(value, prefix + f.name + ".")
    check = getattr(obj, "check", None)
    if check is None:
        return
    try:
        check()
    except ValueError as err:
        where = f"in section '{prefix.rstrip('.')}': " if prefix else ""
        raise ConfigError(f"{where}{err}") from None


def _make(cls: type, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    hints = typing.get_type_hints(cls)
    if unknown:
        key = prefix + unknown[0]
        if unknown[0] in renamed(cls):
            new = renamed(cls)[unknown[0]]
            choices = _choices(hints[new])
            listed = f" (one of {', '.join(map(str, choices))})" if choices else ""
            raise ConfigError(f"config key '{key}' is now '{prefix}{new}'{listed}")
        raise ConfigError(f"unknown config key '{key}' (known here: {', '.join(sorted(fields))})")
    values = {name: _coerce(hints[name], data[name], prefix + name) for name in data}
    return cls(**values)


def renamed(cls: type) -> dict[str, str]:
    """{old key: new key} of a config class's renamed fields: its `RENAMED` class variable."""
    return getattr(cls, "RENAMED", {})


def upgrade(cls: type, data: dict) -> dict:
    """A recorded config (a checkpoint's, a run's config.yaml) with the keys renamed since it
    was written under their new names: what we wrote ourselves loads again, while a user's
    old key is refused in one line that names the new one."""
    out = dict(data)
    for old, new in renamed(cls).items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]) and isinstance(out.get(f.name), dict):
            out[f.name] = upgrade(hints[f.name], out[f.name])
    return out


def _coerce(hint: Any, value: Any, key: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' = {value!r} is not a valid {_name(hint)}")
    if dataclasses.is_dataclass(hint):
        return _make(hint, value or {}, key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        return _choice(typing.get_args(hint), value, key)
    if hint is Any:
        return value
    if hint in (int, float):
        return _number(hint, value, key)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if hint in (bool, str) and not isinstance(value, hint):
        raise ConfigError(f"config key '{key}' = {value!r} must be of type {hint.__name__}")
    return value


def _choice(choices: tuple, value: Any, key: str):
    listed = ", ".join(map(str, choices))
    if isinstance(value, bool):
        # YAML 1.1 reads a bare yes/no/on/off/true/false as a bool.
        word = "off" if not value else "on"
        if word in choices:
            return word
        raise ConfigError(f"config key '{key}' must be one of {listed}; got a yes/no value "
                          f"(YAML reads yes, no, on, off, true and false as booleans)")
    if value not in choices:
        raise ConfigError(f"config key '{key}' = {value!r} must be one of {listed}")
    return value


def _number(hint: type, value: Any, key: str):
    """An int or float; `1e6` counts as an int, and PyYAML's strings '1e6' / '1e-4' as numbers."""
    number = value
    if isinstance(value, str):
        try:
            number = int(value) if hint is int and value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            number = value
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ConfigError(f"config key '{key}' = {value!r} must be of type {hint.__name__}")
    if hint is float:
        return float(number)
    if isinstance(number, float):
        if not number.is_integer():
            raise ConfigError(f"config key '{key}' = {value!r} must be a whole number")
        return int(number)
    return number


def _name(hint: Any) -> str:
    return " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(hint) if a is not type(None))


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def dump(obj, path: str | Path) -> None:
    """Write the resolved config, so a run directory says exactly what ran."""
    Path(path).write_text(yaml.safe_dump(to_dict(obj), sort_keys=False))


def annotated_yaml(obj, title: str) -> str:
    """The config as YAML that loads back, each key with the comment beside its field in
    the source, its range and its choices."""
    rows: list[tuple[str, str]] = []
    _rows(obj, 0, rows)
    width = min(48, max(len(text) for text, _ in rows) + 2)
    lines = [f"# {title}"]
    for text, note in rows:
        # YAML needs a space before '#' for a comment; a long line gets two.
        lines.append(f"{text:<{max(width, len(text) + 2)}}# {note}" if note else text)
    return "\n".join(lines)


def _rows(obj, depth: int, rows: list) -> None:
    comments = field_comments(type(obj))
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, indent = getattr(obj, f.name), "  " * depth
        notes = [comments.get(f.name, "")]
        if dataclasses.is_dataclass(value):
            rows.append((f"{indent}{f.name}:", notes[0]))
            _rows(value, depth + 1, rows)
            continue
        choices = _choices(hints[f.name])
        if choices:
            notes.append(f"one of {', '.join(map(str, choices))}")
        if "range" in f.metadata:
            notes.append(f"in {f.metadata['range']}")
        rows.append((f"{indent}{f.name}: {_scalar(value)}", "; ".join(n for n in notes if n)))


def _choices(hint: Any) -> tuple:
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    return ()


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
    return text.removesuffix("\n...\n").strip()


def field_comments(cls: type) -> dict[str, str]:
    """{field: the `# comment` on its line} read from the class's source."""
    source = textwrap.dedent(inspect.getsource(cls))
    names = {f.name for f in dataclasses.fields(cls)}
    first: dict[int, str] = {}  # line -> the field declared on it
    comments: dict[str, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        line, column = token.start
        if token.type == tokenize.NAME and line not in first:
            first[line] = token.string if column == 4 and token.string in names else ""
        elif token.type == tokenize.COMMENT and first.get(line):
            comments.setdefault(first[line], token.string.lstrip("#").strip())
    return comments
