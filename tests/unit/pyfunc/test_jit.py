"""pyfunc/jit.py: kernels cached on disk where numba can, compiled without a cache where it cannot."""

from __future__ import annotations

import numba
import pytest

from pyfunc.explain import _tree_shap
from pyfunc.fast import _tree_sum
from pyfunc.jit import njit


def without_a_source_file():
    namespace: dict = {}
    exec("def add(a, b):\n    return a + b\n", namespace)  # noqa: S102 (a function numba cannot locate a file for)
    return namespace["add"]


def test_the_project_kernels_are_cached_beside_their_source():
    assert type(_tree_sum._cache).__name__ == "FunctionCache"
    assert type(_tree_shap._cache).__name__ == "FunctionCache"


def test_a_kernel_numba_cannot_cache_is_compiled_without_a_cache_instead_of_failing():
    with pytest.raises(RuntimeError, match="cannot cache"):  # what a plain cache=True does here
        numba.njit(cache=True)(without_a_source_file())
    add = njit()(without_a_source_file())
    assert add(2, 3) == 5
    assert type(add._cache).__name__ == "NullCache"
