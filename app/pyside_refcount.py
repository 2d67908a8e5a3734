"""A guard against a reference-counting bug in PySide6 6.12 on Python 3.11.

Measured here (PySide6-Essentials 6.12.0, CPython 3.11): every call of a void C++ method (e.g.
``QPainter.drawImage``, ``QWidget.update``) drops one reference to ``None`` and every
``Signal.emit()`` drops one to ``True``, without having taken it. ``None`` starts with a few thousand
references, so a viewer that paints a few hundred calls per frame aborts within seconds with
"Fatal Python error: none_dealloc". From Python 3.12 these objects are immortal (PEP 683) and the
bug is harmless; PySide6 6.11.3 does not have it (measured the same way). On older Pythons we give
``None``, ``True`` and ``False`` a reserve of 2**40 references, which no session can exhaust; they
are never freed anyway, so nothing else changes.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

_RESERVE = 1 << 40
_applied = False


def protect_singletons() -> bool:
    """Top up the reference counts of None, True and False once; False where not needed/possible."""
    global _applied
    if _applied or sys.version_info >= (3, 12) or sys.implementation.name != "cpython" \
            or hasattr(sys, "getobjects"):  # 3.12+: immortal; debug (trace-refs) builds: other layout
        return False
    for obj in (None, True, False):
        before = sys.getrefcount(obj)
        ctypes.c_ssize_t.from_address(id(obj)).value += _RESERVE  # ob_refcnt is PyObject's first field
        if abs(sys.getrefcount(obj) - before - _RESERVE) > 1000:  # not the layout we expected: undo
            ctypes.c_ssize_t.from_address(id(obj)).value -= _RESERVE
            log.warning("could not guard %r against PySide6's reference-count bug", obj)
            return False
    _applied = True
    return True
