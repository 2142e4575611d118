"""The words of Flower's and Ray's own errors, made readable for people (never acted on: see fedhaven.shared.refusal).

A ClientApp that raises reaches the coordinator as text Flower formatted
(`<class 'T'>:<'message'>`, flwr/supernode/runtime/run_clientapp.py and the
simulation engine's vce_api), and in simulation wrapped in Ray's traceback
(`ClientAppException occurred. Message: ...`, flwr/clientapp/client_app.py),
with nested reprs escaping quotes and newlines.
"""

from __future__ import annotations

import re

#: Where Flower's ClientAppException puts the app's own message.
_CLIENTAPP_MARKER = "occurred. Message:"
#: How Flower writes a raised exception into an Error's reason.
_CLASS_WRAPPED = re.compile(r"<class '[\w.]+'>:<'(.*)'>", flags=re.S)


def readable_reason(reason: str) -> str:
    """The message inside Flower's `<class ...>:<'...'>` wrapping and Ray's tracebacks, at most 400 characters."""
    wrapped = _CLASS_WRAPPED.fullmatch(reason)
    return short_reason(wrapped.group(1) if wrapped else reason)


def short_reason(text: str, *, limit: int = 400) -> str:
    """The innermost error message of a Flower/Ray error text, without the tracebacks (for display only)."""
    text = text.replace("\\n", "\n").replace("\\'", "'").replace('\\"', '"')  # Flower nests reprs
    lines = [ln.strip() for ln in text.rsplit(_CLIENTAPP_MARKER, 1)[-1].splitlines() if ln.strip()]
    if _CLIENTAPP_MARKER not in text:
        errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Refused): ", ln)]
        lines = errors[-1:] or lines
    out = (lines[0] if lines else text).strip(" '\">)\\")
    return out if len(out) <= limit else out[: limit - 3] + "..."
