"""gin plumbing: parse files + bindings, validate every binding before work starts, and
turn each problem into one `UserError` naming the file, the line and the nearest valid names.

Checks, in order: files exist, are UTF-8 text and include no cycle; gin parses them (syntax
errors name the file and line, or the ``--bind``); names exist (nearest-name hints); values
have their annotated types; values are in range, devices exist, macros are defined and task
kwargs are accepted (`dmarl.validation`).
"""
from __future__ import annotations

import difflib
import logging
import inspect
import re
import tokenize
import types
import typing
from pathlib import Path
from typing import Any

import gin

from dmarl import resources, validation
from dmarl.errors import UserError

PROJECT_ROOT = resources.DATA_ROOT  # the repository root, or the installed package (dmarl.resources)
_INCLUDE = re.compile(r"""^\s*include\s+['"](?P<path>[^'"]+)['"]""", re.MULTILINE)


def _configurable_names() -> list[str]:
    names: set[str] = set()
    for selector, _ in gin.config._REGISTRY.items():  # e.g. "dmarl.runners.online.OnlineRunner"
        names.add(selector)
        names.add(selector.rsplit(".", 1)[-1])
    return sorted(names)


def _parameter_names(selector: str) -> list[str]:
    configurable = gin.config._REGISTRY.get_match(selector)
    if configurable is None:
        return []
    return list(_signature(configurable.wrapped).parameters)


def _signature(fn: Any) -> inspect.Signature:
    return inspect.signature(fn.__init__ if inspect.isclass(fn) else fn)


def _nearest(name: str, candidates: list[str]) -> str:
    near = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    return f" Nearest valid names: {', '.join(near)}." if near else ""


def _friendly_gin_error(err: Exception) -> str:
    text = str(err)
    missing_param = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", text)
    if missing_param:
        selector, param = missing_param.groups()
        return text + "\n" + _nearest(param, _parameter_names(selector)).strip()
    missing_conf = re.search(r"No configurable matching '([^']+)'", text)
    if missing_conf:
        return text + "\n" + _nearest(missing_conf.group(1), _configurable_names()).strip()
    return text


def _read(path: Path) -> str:
    """A gin file's text, or one `UserError` naming the file when it is not UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f'file "{path}": not a gin text file (byte {err.start} is not UTF-8); expected gin text') from None
    except OSError as err:
        raise UserError(f'file "{path}": cannot read it ({err.strerror or err})') from None


def _resolve(path: Path) -> Path | None:
    return next((p.resolve() for p in _search_candidates(path) if p.is_file()), None)


def _all_files(config_files: list[str]) -> list[Path]:
    """The config files and everything they include (for locating a binding's line)."""
    seen: list[Path] = []
    stack = [Path(f) for f in config_files]
    while stack:
        resolved = _resolve(stack.pop())
        if resolved is None or resolved in seen:
            continue
        seen.append(resolved)
        stack.extend(Path(m.group("path")) for m in _INCLUDE.finditer(_read(resolved)))
    return seen


def check_includes(config_files: list[str]) -> None:
    """Every config file (and include) is UTF-8 text, and no file includes itself through a
    chain of includes (gin would recurse until Python's stack runs out)."""

    def visit(path: Path, chain: list[Path]) -> None:
        if path in chain:
            cycle = " -> ".join(str(p) for p in chain[chain.index(path):] + [path])
            raise UserError(f"include cycle: {cycle}; expected each file to be included at most once per chain")
        for match in _INCLUDE.finditer(_read(path)):
            child = _resolve(Path(match.group("path")))
            if child is not None:  # a missing include is reported by gin with its name
                visit(child, chain + [path])

    for name in config_files:
        resolved = _resolve(Path(name))
        if resolved is not None:
            visit(resolved, [])


def _search_candidates(path: Path) -> list[Path]:
    return resources.candidates(path)


def _locate(selector: str, param: str, files: list[Path], bindings: list[str]) -> str:
    short = re.escape(selector.rsplit(".", 1)[-1])
    pattern = re.compile(rf"^\s*(?:[\w/]+/)?(?:[\w.]*\.)?{short}\.{re.escape(param)}\s*=", re.MULTILINE)
    for binding in bindings:
        if pattern.search(binding):
            return f"--bind '{binding}'"
    for path in files:
        text = _read(path)
        match = pattern.search(text)
        if match:
            return f'file "{path}", line {text.count(chr(10), 0, match.start()) + 1}'
    return "the configuration"


def _type_ok(value: Any, hint: Any) -> bool:
    """A small structural check of a gin value against a type hint (unknown hints pass)."""
    if hint is Any or hint is inspect.Parameter.empty or isinstance(value, gin.config.ConfigurableReference):
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if origin in (list, tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return not args or all(_type_ok(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _validate_types(config_files: list[str], bindings: list[str]) -> None:
    files = _all_files(config_files)
    for (_, selector), params in gin.config._CONFIG.items():
        configurable = gin.config._REGISTRY.get_match(selector)
        if configurable is None:
            continue
        target = configurable.wrapped
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
        for param, value in params.items():
            hint = hints.get(param, inspect.Parameter.empty)
            if not _type_ok(value, hint):
                where = _locate(selector, param, files, bindings)
                expected = getattr(hint, "__name__", str(hint))
                raise UserError(
                    f"{where}: {selector.rsplit('.', 1)[-1]}.{param} = {value!r} has the wrong type; "
                    f"expected {expected}."
                )


class _DropGinPathProbes(logging.Filter):
    """gin logs "Path not found" for every search-path candidate it tries; a real missing
    include still fails with one UserError."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Path not found")


def parse(config_files: list[str], bindings: list[str]) -> None:
    """Parse gin files and bindings into the global config, or raise one `UserError`."""
    for path in config_files:
        resources.resolve(path)  # one UserError naming where a missing file was looked for
    # gin itself finds a path as given or under PROJECT_ROOT; other names (no `.gin`, under gin/) go resolved
    config_files = [f if Path(f).is_file() or (PROJECT_ROOT / f).is_file() else str(resources.resolve(f))
                    for f in config_files]
    check_includes(config_files)
    gin.clear_config()
    gin.add_config_file_search_path(str(PROJECT_ROOT))
    quiet = _DropGinPathProbes()
    logging.getLogger().addFilter(quiet)
    try:
        gin.parse_config_files_and_bindings(config_files, bindings, finalize_config=False)
    except tokenize.TokenError as err:
        line = err.args[1][0] if len(err.args) > 1 else "?"
        raise UserError(f"malformed gin in {config_files or bindings}: {err.args[0]} (at line {line})") from None
    except SyntaxError as err:
        where = f'file "{err.filename}", line {err.lineno}' if err.filename else _bind_of(err.text, bindings)
        text = (err.text or "").strip()
        raise UserError(f"malformed gin: {where}: {err.msg}" + (f"\n    {text}" if text else "")) from None
    except RecursionError:
        raise UserError(f"include cycle in {', '.join(config_files)}: the files include each other") from None
    except (ValueError, OSError, NameError, TypeError) as err:
        raise UserError(_friendly_gin_error(err)) from None
    finally:
        logging.getLogger().removeFilter(quiet)
    _validate_types(config_files, bindings)
    files = _all_files(config_files)
    validation.validate_values(lambda selector, param: _locate(selector, param, files, bindings))


def _bind_of(text: str | None, bindings: list[str]) -> str:
    """The --bind a syntax error came from (gin reports bindings as file None)."""
    line = (text or "").strip()
    match = next((b for b in bindings if line and line in b), None)
    if match is None and len(bindings) == 1:
        match = bindings[0]
    return f"--bind '{match}'" if match is not None else f"--bind ({len(bindings)} given)"


def operative_params() -> dict[str, str]:
    """The parameters the run used, as ``"Configurable.param" -> repr(value)`` (MLflow params):
    gin's operative config, i.e. bound and default values of the configurables that were
    called; bindings of configurables the run never called (another algorithm's, macros) are
    left out."""
    return _flatten(gin.config._OPERATIVE_CONFIG)


def _flatten(config: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    flat: dict[str, str] = {}
    for (scope, selector), params in sorted(config.items()):
        prefix = (f"{scope}/" if scope else "") + selector.rsplit(".", 1)[-1]
        for param, value in sorted(params.items()):
            flat[f"{prefix}.{param}"] = repr(value)[:6000]
    return flat


def bound_value(selector: str, param: str, default: Any = None) -> Any:
    """The value bound to ``selector.param`` in the parsed config (or ``default``)."""
    for (_, sel), params in gin.config._CONFIG.items():
        if sel.rsplit(".", 1)[-1] == selector and param in params:
            return params[param]
    return default
