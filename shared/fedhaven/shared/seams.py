"""What a seam declares about the Flower internals it uses, and the check that each is still there as read.

Each side has one seam package (`fedhaven.server.seam`, `fedhaven.client.seam`): the
only modules that import a Flower symbol Flower does not document as public, patch
Flower, or hold an adapted copy of Flower code. Each lists what it relies on as
`Internal` records; `verify` imports every listed module by name and checks the
attributes and parameters recorded, so a Flower upgrade fails there first, by name.
This module imports no Flower itself: module names are data here.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["import", "patch", "copy", "format"]


@dataclass(frozen=True)
class Internal:
    """One Flower internal a seam relies on.

    `name` is an attribute path inside `module` ("WorkflowState", or "SecAggPlusWorkflow.setup_stage");
    `params` the parameter names fedhaven passes or overrides; `attrs` attributes of the object itself
    (class attributes, or fields of a dataclass) that fedhaven reads or writes; `source` fragments of the
    object's source that fedhaven's adapted copy or its use depends on (an instance attribute set in
    `__init__`, the calls a copied method makes). `kind`: imported, patched, copied and adapted, or a
    wire/storage/text format relied upon.
    """

    module: str
    name: str
    kind: Kind
    why: str
    params: tuple[str, ...] = ()
    attrs: tuple[str, ...] = ()
    source: tuple[str, ...] = ()
    equals: tuple[tuple[str, object], ...] = ()  # (attribute, value) pairs that must hold, e.g. a field number
    alternative: str = ""  # the public way in this Flower version, if any


def verify(internals: tuple[Internal, ...]) -> list[str]:
    """Every recorded internal that is gone or changed, one line each naming it (empty: all still hold)."""
    problems = []
    for it in internals:
        where = f"{it.module}.{it.name}" if it.name else it.module
        try:
            obj: Any = importlib.import_module(it.module)  # then whatever the attribute path names
        except ImportError as exc:
            problems.append(f"{where}: module {it.module} does not import ({exc})")
            continue
        missing = False
        for part in filter(None, it.name.split(".")):
            if not hasattr(obj, part):
                problems.append(f"{where}: {part!r} is gone")
                missing = True
                break
            obj = getattr(obj, part)
        if missing:
            continue
        if it.params:
            try:
                have = set(inspect.signature(obj).parameters)
            except (TypeError, ValueError):
                have = set()
            problems += [f"{where}: parameter {p!r} is gone" for p in it.params if p not in have]
        if it.attrs:
            fields = set(getattr(obj, "__dataclass_fields__", {})) | set(getattr(obj, "__annotations__", {}))
            problems += [f"{where}: attribute {a!r} is gone" for a in it.attrs
                         if a not in fields and not hasattr(obj, a)]
        problems += [f"{where}: {attr} is {getattr(obj, attr, None)!r}, fedhaven relies on {value!r}"
                     for attr, value in it.equals if getattr(obj, attr, None) != value]
        if it.source:
            try:
                code = inspect.getsource(obj)
            except (TypeError, OSError):
                code = ""
            problems += [f"{where}: its source no longer holds {frag!r}" for frag in it.source if frag not in code]
    return problems


def table(internals: tuple[Internal, ...]) -> str:
    """The internals as a markdown table (what the seam's docstring shows)."""
    rows = ["| what | kind | why | public alternative |", "|---|---|---|---|"]
    rows += [f"| `{it.module}.{it.name}` | {it.kind} | {it.why} | {it.alternative or 'none'} |" for it in internals]
    return "\n".join(rows)
