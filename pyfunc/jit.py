"""numba's ``njit``, with the compiled machine code cached on disk where that is possible.

Compiling the tree kernels takes about a second per process (the train step, each
model-server worker, each Spark executor). numba caches beside the source
(``__pycache__``) or in the user's cache folder, and reuses the code while the
source file is unchanged, on a machine of the same kind. Where neither folder is
writable (a read-only image without a home), the kernel is compiled on first use
instead, as without a cache; nothing fails. MLflow leaves ``__pycache__`` out of
the code it logs with a model, so no cached code travels with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba


def njit(**options: Any) -> Callable[[Callable], Callable]:
    def compile_(function: Callable) -> Callable:
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(cache=False, **options)(function)

    return compile_
