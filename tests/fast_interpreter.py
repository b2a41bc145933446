"""A faster Triton interpreter for the test suite: the same results, less
host time.

Triton 3.6's interpreter patches triton.language (inspect.getmembers over
tl, tl.tensor, tl.math and more) when a kernel launch starts, and again at
every call of a @triton.jit helper inside it, once per program of the grid.
The launch's patch already covers the helpers (they see the same module
objects), so the repeats change nothing; they took about a third of a fused
training step's time under the interpreter (cProfile: 127k getmembers calls,
~0.15 ms each). Here a helper's call patches only the language modules the
launch has not patched yet (tl.core, for a helper that uses it where the
kernel uses tl).

Installed (tests/conftest.py) only on the Triton version it was written
against, and only where its internals are as expected; elsewhere, or with
MIGT_PLAIN_INTERPRETER=1 set, the interpreter runs as shipped.
"""
from __future__ import annotations

import inspect

SUPPORTED_TRITON = ("3.6.",)


def install() -> bool:
    """Patch the interpreter; returns whether it did."""
    import triton
    import triton.language as tl

    if not triton.__version__.startswith(SUPPORTED_TRITON):
        return False
    try:
        from triton.runtime import interpreter
        real_patch, real_launch = interpreter._patch_lang, interpreter.GridExecutor.__call__
    except (ImportError, AttributeError):
        return False
    patched = [None]  # the ids of the language modules the running launch patched

    def language_modules(fn):
        return {id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)}

    def patch_lang(fn):
        modules = language_modules(fn)
        if patched[0] is not None and modules and modules <= patched[0]:
            return None  # a helper inside a launch that patched these already
        # (a helper that sees no language module gets the real call, and its error)
        scope = real_patch(fn)
        if patched[0] is not None:
            patched[0] |= modules
        return scope

    def launch(self, *args, **kwargs):
        outer, patched[0] = patched[0], set()
        try:
            return real_launch(self, *args, **kwargs)
        finally:
            patched[0] = outer

    interpreter._patch_lang = patch_lang
    interpreter.GridExecutor.__call__ = launch
    return True
