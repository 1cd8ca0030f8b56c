"""The remote code that a saved pipeline or encoder ships, generated from this package's own source: self-contained
modules that plain diffusers loads with `trust_remote_code=True`, without this package.

diffusers runs a repo's remote module alone (it copies no sibling module of the package beside it), so each module
is built by inlining the package modules it needs, dependencies first, each under a `# Copied from <module>` banner:
the imports between them are dropped (they are one module now), the other module-level imports are gathered at the
top. Two modules are built ([`MODULES`]):

- `"pipeline"`, written as `pipeline_scorevae.py` at a pipeline folder's root:
  `diffusers_scorevae.pipelines.pipeline_scorevae` and what it imports, the encoder included;
- `"encoder"`, written as `modeling_scorevae_encoder.py` in an encoder's folder: `diffusers_scorevae.models.encoder`
  and what it imports.

What remote code must not need is reduced ([`REDUCED`]): the hub mixins (Hub downloads, model cards) are replaced by
[`~diffusers_scorevae.hub.remote_saving.RemoteCodeMixin`], which only saves the code again. Building fails with a
`ValueError` naming the module when an inlined module imports anything but torch, numpy, PIL, diffusers and the
standard library, imports a package module as an object, or defines a name another inlined module defines otherwise.

`ScoreVAEPipeline.save_pretrained` / `ScoreVAEEncoder.save_pretrained` (and the pushes) write the code generated now,
so it is the installed package's code, never a copy kept by hand; [`check_remote_code`] compares a saved folder with
it, and [`write_remote_code`] adds it to a folder saved before (a training run's output, an old download).
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .hub.remote_saving import ENCODER_MODULE, PIPELINE_MODULE, write_model_code, write_pipeline_code

PACKAGE = __name__.split(".")[0]
PACKAGE_DIR = Path(__file__).resolve().parent

# what each remote module is built from: {kind: the package module it inlines, with everything that one imports}
MODULES = {
    "pipeline": f"{PACKAGE}.pipelines.pipeline_scorevae",
    "encoder": f"{PACKAGE}.models.encoder",
}
# the file each kind is written to, relative to the folder of the object saved (a pipeline, or an encoder)
FILE_NAMES = {"pipeline": f"{PIPELINE_MODULE}.py", "encoder": f"{ENCODER_MODULE}.py"}
# modules that remote code gets in a reduced form: {module: (its replacement, {name imported: name there})}
REDUCED = {
    f"{PACKAGE}.hub.mixins": (
        f"{PACKAGE}.hub.remote_saving",
        {"ScoreVAEHubMixin": "RemoteCodeMixin", "ScoreVAEPipelineHubMixin": "RemoteCodeMixin"},
    ),
}
# the only libraries remote code may import, besides the standard library
ALLOWED_IMPORTS = ("torch", "numpy", "PIL", "diffusers")

_RULE = "# " + "-" * 117


def module_source(kind: str) -> str:
    """
    The self-contained remote module `kind` (`"pipeline"` or `"encoder"`, see [`MODULES`]) built from the package's
    source as it is now.

    Returns:
        `str`: Python source that imports only torch, numpy, PIL, diffusers and the standard library.
    """
    if kind not in MODULES:
        raise ValueError(f"kind={kind!r} is not a remote module; choose one of {sorted(MODULES)}.")
    with _LOCK:
        cached = _BUILDS.get(kind)
        if cached is not None and all(_stamp(path) == stamp for path, stamp in cached[0].items()):
            return cached[1]
        _READ.clear()
        source = _build(kind)
        _BUILDS[kind] = (dict(_READ), source)
        return source


# {kind: ({path: (mtime_ns, size) of every file the build read}, source)}: saves are frequent, and a file the
# build depends on changes its stamp when it is edited (so does a module that starts importing another)
_BUILDS: dict[str, tuple[dict, str]] = {}
_READ: dict[Path, tuple[int, int] | None] = {}  # the files the build in progress read (under _LOCK)
_TREES: dict[Path, tuple[tuple[int, int], ast.Module, list[str]]] = {}  # {path: (stamp, its parse, its lines)}
_LOCK = threading.Lock()


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size)


def _read(path: Path) -> tuple[ast.Module, list[str]]:
    """The parsed source of `path` and its lines, recorded for the build cache."""
    stamp = _stamp(path)
    _READ[path] = stamp
    if path not in _TREES or _TREES[path][0] != stamp:
        text = path.read_text(encoding="utf-8")
        _TREES[path] = (stamp, ast.parse(text, filename=str(path)), text.splitlines())
    return _TREES[path][1:]


def _build(kind: str) -> str:
    order = _dependency_order(MODULES[kind])
    sections, imports, defined = [], {}, {}
    for name in order:
        module = _parse(name)
        body, module_imports = _inline(module, defined)
        for text, bindings in module_imports.items():
            _check_bindings(name, bindings, imports, defined)
            imports.setdefault(text, bindings)
        if body:
            sections.append(f"{_RULE}\n# Copied from {name}\n{_RULE}\n\n{body}")
    bound = {name for statement in imports.values() for name, _ in statement}
    clashes = sorted(bound & set(defined))
    if clashes:
        name = clashes[0]
        raise ValueError(f"{defined[name][0]} defines {name}, which another inlined module imports; rename one.")
    header = _header(kind, order)
    source = header + "\n".join(["from __future__ import annotations", ""] + _sorted_imports(imports)) + "\n\n"
    source += "\n\n\n".join(sections) + "\n"
    _check_source(source, f"the remote {kind} module")
    return source


def remote_code_files(folder: str | os.PathLike) -> dict[str, str]:
    """The remote code files this version of the package writes into a saved pipeline or encoder `folder`:
    `{path relative to folder: source}` (a pipeline folder: its module and that of each ScoreVAE encoder in it)."""
    folder = str(folder)
    kind = _folder_kind(folder)
    if kind == "encoder":
        return {FILE_NAMES["encoder"]: module_source("encoder")}
    files = {FILE_NAMES["pipeline"]: module_source("pipeline")}
    for component in _encoder_components(folder):
        files[f"{component}/{FILE_NAMES['encoder']}"] = module_source("encoder")
    return files


def write_remote_code(folder: str | os.PathLike):
    """
    Add the remote code of this version of the package to a saved pipeline or encoder `folder` (as `save_pretrained`
    writes it now): the modules of [`remote_code_files`], the pipeline and encoder entries of `model_index.json`, and
    the encoder's `auto_map`. Weights are left unchanged.

    Example:

    ```py
    >>> from diffusers_scorevae.remote_code import write_remote_code

    >>> # a pipeline folder saved before the package wrote remote code
    >>> write_remote_code("scorevae-fashion-mnist")  # doctest: +SKIP
    ```
    """
    folder = str(folder)
    kind = _folder_kind(folder)
    if kind == "encoder":
        write_model_code(folder, "ScoreVAEEncoder", module_source("encoder"))
        return
    for component in _encoder_components(folder):
        write_model_code(os.path.join(folder, component), "ScoreVAEEncoder", module_source("encoder"))
    write_pipeline_code(folder, "ScoreVAEPipeline", module_source("pipeline"))


def check_remote_code(folder: str | os.PathLike) -> list[str]:
    """The remote code files of a saved `folder` that differ from what this version of the package writes (missing
    ones included), as paths relative to `folder`; empty when the folder's code is the package's code."""
    stale = []
    for path, source in remote_code_files(folder).items():
        full = os.path.join(str(folder), path)
        if not os.path.isfile(full) or Path(full).read_text(encoding="utf-8") != source:
            stale.append(path)
    return stale


# ---------------------------------------------------------------------------------------------------------------------
# folders


def _folder_kind(folder: str) -> str:
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        return "pipeline"
    config = os.path.join(folder, "config.json")
    if os.path.isfile(config) and _json(config).get("_class_name") == "ScoreVAEEncoder":
        return "encoder"
    raise ValueError(
        f"{folder} is neither a saved pipeline (model_index.json) nor a saved ScoreVAEEncoder (config.json naming "
        "it); pass the folder `save_pretrained` wrote."
    )


def _encoder_components(folder: str) -> list[str]:
    """The components of the pipeline in `folder` that are ScoreVAE encoders (their `model_index.json` entry)."""
    model_index = _json(os.path.join(folder, "model_index.json"))
    return sorted(
        name
        for name, entry in model_index.items()
        if not name.startswith("_") and isinstance(entry, list) and len(entry) == 2 and entry[1] == "ScoreVAEEncoder"
    )


def _json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------------------------------
# inlining


@dataclass
class _Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    lines: list[str]
    # intra-package imports: (node, [(name bound here, name imported, defining module, name there)])
    package_imports: list = field(default_factory=list)
    hard_dependencies: list[str] = field(default_factory=list)  # imported at module level: must come first
    soft_dependencies: list[str] = field(default_factory=list)  # imported inside a function


def _module_path(name: str) -> tuple[Path, bool]:
    parts = name.split(".")
    if parts[0] != PACKAGE:
        raise ValueError(f"{name} is not a module of {PACKAGE}.")
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path, is_package in ((base / "__init__.py", True), (base.with_suffix(".py"), False)):
        _READ[path] = _stamp(path)  # a file that appears later changes what this name resolves to
        if _READ[path] is not None:
            return path, is_package
    raise ValueError(f"{name} has no source file under {PACKAGE_DIR}.")


def _parse(name: str) -> _Module:
    path, is_package = _module_path(name)
    tree, lines = _read(path)
    module = _Module(name, path, is_package, tree, lines)
    top_level = {id(node) for node in module.tree.body}
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    raise ValueError(
                        f"{name} ({path}) has `import {alias.name}`: remote code cannot inline a module imported as "
                        f"an object; import the names it uses (`from {alias.name} import ...`)."
                    )
        if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
            continue
        target = _imported_module(module, node)
        if target is None:
            continue
        names = []
        for alias in node.names:
            if alias.name == "*":
                raise ValueError(f"{name} ({path}) has `from {target} import *`: remote code needs explicit names.")
            defining, defined_as = _definition(target, alias.name, importer=name)
            names.append((alias.asname or alias.name, alias.name, defining, defined_as))
            dependencies = module.hard_dependencies if id(node) in top_level else module.soft_dependencies
            if defining not in dependencies:
                dependencies.append(defining)
        module.package_imports.append((node, names))
    return module


def _imported_module(module: _Module, node: ast.ImportFrom) -> str | None:
    """The package module `node` imports from, or `None` for another library."""
    if node.level == 0:
        return node.module if node.module.split(".")[0] == PACKAGE else None
    parts = module.name.split(".")
    if not module.is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _top_level_names(tree: ast.Module) -> dict[str, ast.stmt]:
    """{name: the statement defining it} for the functions, classes and assignments at a module's top level."""
    names = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for element in ast.walk(target):
                    if isinstance(element, ast.Name):
                        names[element.id] = node
    return names


def _definition(module_name: str, name: str, importer: str) -> tuple[str, str]:
    """(the module that defines `name`, its name there), following re-exports (`__init__.py`) and [`REDUCED`]."""
    if module_name in REDUCED:
        replacement, names = REDUCED[module_name]
        if name not in names:
            raise ValueError(
                f"{importer} imports {name} from {module_name}, which remote code gets reduced to {replacement}; "
                f"add {name} to diffusers_scorevae.remote_code.REDUCED (reduced so far: {sorted(names)})."
            )
        return replacement, names[name]
    path, is_package = _module_path(module_name)
    tree, _ = _read(path)
    if name in _top_level_names(tree):
        return module_name, name
    module = _Module(module_name, path, is_package, tree, [])
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            target = _imported_module(module, node)
            for alias in node.names:
                if target is not None and (alias.asname or alias.name) == name:
                    return _definition(target, alias.name, importer=module_name)
    if is_package and ((path.parent / f"{name}.py").is_file() or (path.parent / name / "__init__.py").is_file()):
        raise ValueError(
            f"{importer} imports the module {module_name}.{name} as an object: remote code cannot inline that; import "
            "the names it uses."
        )
    raise ValueError(f"{importer} imports {name} from {module_name}, which does not define it.")


def _dependency_order(root: str) -> list[str]:
    """`root` and every package module it imports (through [`REDUCED`]), each after the modules it imports at module
    level."""
    order, visiting, parsed = [], set(), {}

    def visit(name, chain):
        if name in order:
            return
        if name in visiting:
            raise ValueError(f"the package modules import each other at module level: {' -> '.join(chain + [name])}.")
        visiting.add(name)
        module = parsed.setdefault(name, _parse(name))
        for dependency in module.hard_dependencies:
            visit(dependency, chain + [name])
        visiting.discard(name)
        order.append(name)
        for dependency in module.soft_dependencies:
            if dependency not in order and dependency not in visiting:
                visit(dependency, [])

    visit(root, [])
    return order


def _inline(module: _Module, defined: dict[str, tuple[str, str]]) -> tuple[str, dict[str, list]]:
    """
    The body of `module` as it goes into the remote module, and its module-level imports of other libraries
    (`{statement: [(name bound, what it binds)]}`) to gather at the top. `defined` ({name: (module, source)}, the
    names the modules before it define) is updated; a name defined again with other source is a `ValueError`.
    """
    lines, text = module.lines, "\n".join(module.lines)
    replace = {}  # first line index -> replacement lines; the rest of the statement's lines are dropped
    drop = set()

    def remove(node, replacement=()):
        start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
        end = node.end_lineno
        drop.update(range(start, end))
        replace[start] = list(replacement)

    body = module.tree.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        if isinstance(body[0].value.value, str):
            remove(body[0])  # the module docstring: the banner names the module instead

    imports = {}
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            remove(node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and not _is_package_import(module, node):
            _check_library(module, node)
            imports[ast.get_source_segment(text, node)] = _bindings(node)
            remove(node)

    blocks = _bodies(module.tree)
    for node, names in module.package_imports:
        indent = " " * node.col_offset
        source_module = _imported_module(module, node)
        reduced = " (reduced)" if source_module in REDUCED else ""
        aliases = [
            f"{indent}{bound} = {name}  # {source_module}.{imported}{reduced}"
            for bound, imported, _, name in names
            if bound != name
        ]
        block = blocks.get(id(node))
        if not aliases and block is not None and all(n is node or _removed(n, drop) for n in block):
            aliases = [f"{indent}pass"]  # the import was the only statement of its block
        remove(node, aliases)
    for node in ast.walk(module.tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in body:
            if not _is_package_import(module, node):
                _check_library(module, node)
        if isinstance(node, ast.Name) and node.id == "__file__":
            raise ValueError(
                f"{module.name} ({module.path}:{node.lineno}) uses __file__, which names another file once inlined "
                "in remote code."
            )

    for name, node in _top_level_names(module.tree).items():
        source = ast.get_source_segment(text, node)
        if name in defined:
            other, other_source = defined[name]
            if other_source != source:
                raise ValueError(
                    f"{module.name} and {other} both define {name}, differently; remote code inlines both into one "
                    "module. Rename one of them."
                )
            remove(node)  # the same statement (`logger = logging.get_logger(__name__)`): once is enough
        else:
            defined[name] = (module.name, source)

    out = []
    for index, line in enumerate(lines):
        if index in replace:
            out.extend(replace[index])
        if index not in drop:
            out.append(line)
    text = "\n".join(out)
    text = re.sub(r"\n{4,}", "\n\n\n", text).strip("\n")
    return text, imports


def _bodies(tree: ast.Module) -> dict[int, list[ast.stmt]]:
    """{id(statement): the statements of the block it is in}, for every statement in a nested block."""
    blocks = {}
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, name, None)
            if node is not tree and isinstance(block, list):
                for statement in block:
                    blocks[id(statement)] = block
    return blocks


def _removed(node: ast.stmt, drop: set[int]) -> bool:
    return all(index in drop for index in range(node.lineno - 1, node.end_lineno))


def _is_package_import(module: _Module, node: ast.stmt) -> bool:
    return isinstance(node, ast.ImportFrom) and node.module != "__future__" and _imported_module(module, node)


def _check_library(module: _Module, node: ast.stmt):
    roots = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module]
    for root in (name.split(".")[0] for name in roots):
        if root not in ALLOWED_IMPORTS and root not in sys.stdlib_module_names:
            raise ValueError(
                f"{module.name} ({module.path}:{node.lineno}) imports {root}, which the remote code of a saved "
                f"pipeline cannot: it may import only {', '.join(ALLOWED_IMPORTS)} and the standard library. Import "
                f"it where remote code does not reach, or reduce the module (diffusers_scorevae.remote_code.REDUCED)."
            )


def _bindings(node: ast.stmt) -> list[tuple[str, str]]:
    """[(name bound, what it binds)] for a module-level `import` / `from ... import`."""
    if isinstance(node, ast.Import):
        return [(a.asname or a.name.split(".")[0], a.name if a.asname else a.name.split(".")[0]) for a in node.names]
    return [(a.asname or a.name, f"{node.module}.{a.name}") for a in node.names]


def _check_bindings(module_name, bindings, imports, defined):
    bound = {name: target for statement in imports.values() for name, target in statement}
    for name, target in bindings:
        if bound.get(name, target) != target:
            raise ValueError(
                f"{module_name} imports {target} as {name}, which another inlined module binds to {bound[name]}; "
                "import it under one name."
            )
        if name in defined:
            raise ValueError(
                f"{module_name} imports {target} as {name}, which {defined[name][0]} defines; rename one of them."
            )


def _sorted_imports(imports: dict[str, list]) -> list[str]:
    """The gathered import statements, merged per module and sorted as the repository's ruff (isort) sorts them:
    the standard library, then the libraries; `import x` before `from x import y`; one statement per module."""
    plain, froms = set(), {}
    for statement in imports:
        node = ast.parse(statement).body[0]
        names = {alias.name + (f" as {alias.asname}" if alias.asname else "") for alias in node.names}
        if isinstance(node, ast.Import):
            plain |= {f"import {name}" for name in names}
        else:
            froms.setdefault(node.module, set()).update(names)
    entries = [(line.split()[1], False, line) for line in plain]
    for module, names in froms.items():
        names = sorted(names, key=lambda n: (0 if n.isupper() and len(n) > 1 else 1 if n[0].isupper() else 2, n))
        line = f"from {module} import {', '.join(names)}"
        if len(line) > 119:
            line = f"from {module} import (\n" + "".join(f"    {name},\n" for name in names) + ")"
        entries.append((module, True, line))
    lines = []
    for stdlib in (True, False):
        group = [e for e in entries if (e[0].split(".")[0] in sys.stdlib_module_names) == stdlib]
        if group and lines:
            lines.append("")
        lines += [line for _, _, line in sorted(group, key=lambda e: (e[1], e[0].lower()))]
    return lines


def _header(kind: str, order: list[str]) -> str:
    loads = {
        "pipeline": "DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)",
        "encoder": "diffusers.AutoModel.from_pretrained(folder_or_repo_id, trust_remote_code=True)",
    }[kind]
    lines = [
        f"ScoreVAE remote code ({kind}), generated by {PACKAGE} {_package_version()} from its own source;",
        "do not edit it.",
        "",
        "Plain diffusers loads the folder this file is saved in with",
        f"`{loads}`;",
        f"with {PACKAGE} installed, its own `from_pretrained` loads the folder without this file.",
        "",
        "The sections below are the package's modules, each under a `# Copied from <module>` line, with their",
        "imports of each other removed and their other imports gathered here, so that this module imports only",
        f"{', '.join(ALLOWED_IMPORTS)} and the Python standard library:",
    ]
    lines += [f"  {name}" for name in order]
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)


def _package_version() -> str:
    tree, _ = _read(PACKAGE_DIR / "__init__.py")
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return node.value.value
    raise ValueError(f"{PACKAGE_DIR / '__init__.py'} sets no __version__.")


# diffusers' own scan of a remote module's imports (utils/dynamic_modules_utils.py: `check_imports`,
# `get_relative_imports`): line-based, so it also reads docstrings
_DIFFUSERS_IMPORT_RES = (
    re.compile(r"^\s*import\s+(\S+)\s*$", flags=re.MULTILINE),
    re.compile(r"^\s*from\s+(\S+)\s+import", flags=re.MULTILINE),
)


def _check_source(source: str, what: str):
    compile(source, what, "exec")
    for pattern in _DIFFUSERS_IMPORT_RES:
        for name in pattern.findall(source):
            root = name.split(".")[0]
            if name.startswith(".") or (root not in ALLOWED_IMPORTS and root not in sys.stdlib_module_names):
                raise ValueError(
                    f"{what} has a line diffusers reads as an import of {name} (it scans every line, docstrings "
                    "included): diffusers would ask for a package remote code must not need."
                )
