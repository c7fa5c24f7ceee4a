"""Values from a request made safe to quote back in a JSON answer.

Python's ``json`` reads ``NaN``, ``Infinity`` and lone UTF-16 surrogates (``"\\ud800"``) without complaint,
but a strict JSON answer can carry none of them: Starlette's ``JSONResponse`` refuses the first two and
cannot encode the third as UTF-8. A 422 that quotes such an input must not turn into a 500 on the way
out, so the panel's answers pass what they quote through ``json_safe``.
"""

from __future__ import annotations

import math
from typing import Any


def is_text(value: str) -> bool:
    """True for a string that UTF-8 can hold and a file name can carry: no lone surrogate, no NUL."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float written as a string (``"NaN"``, ``"Infinity"``) and every
    string's lone surrogates escaped (``\\ud800``), recursively through lists, tuples and dicts."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        return value if is_text(value.replace("\x00", "")) else value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
