"""Spare the Triton interpreter work that it repeats or whose results it throws away.

When a kernel launches, the interpreter replaces triton.language's builtins with interpreted
versions and restores them when the launch returns. Every call of a ``@triton.jit`` helper
inside the kernel patches again: by then each builtin is already replaced (and no longer marked
as a builtin), so the call only re-installs the same stateless replacements, but it walks every
member of the language modules with ``inspect.getmembers`` to get there: about 3 ms per helper
call, and the backward's walks call helpers thousands of times per test.

``install()`` makes a call whose language modules are already patched (a helper inside a running
launch) reuse those patches; a launch patches and restores as before.
It also memoises the interpreter's map from a Triton dtype to a NumPy dtype, which builds a
20-entry dict on every call (tens of thousands of calls per test), and the derived fields of
Triton's block types, which every operation between a scalar and a block rebuilds.

And it turns off the overflow sanitizer of the interpreter's builder while that builder is not in
debug mode. The sanitizer redoes every 32-bit integer add, sub and mul in 64 bits and compares the
result with the 32-bit range, then hands the verdict to ``device_assert``, which drops it unless
``debug`` is on (as the compiled kernel's dead-code elimination drops it on a GPU). The
interpreter's builder is never in debug mode, so those operations, about half of the index
arithmetic's cost under the interpreter, check nothing.

Without the interpreter, or with an interpreter of another shape, it does nothing. For the test
suite and the gate's CPU smoke run; the package never calls it by itself.
"""

from __future__ import annotations

import dataclasses
import inspect


def _already_patched(fn, tl, langs_of: dict) -> bool:
    """Whether every language module visible to fn (as the interpreter finds them) has its
    builtins replaced already: ``load`` stands for all of them, since one walk replaces all."""
    langs = langs_of.get(fn)
    if langs is None:  # a module's globals scanned once per function, not once per call
        langs = langs_of[fn] = [
            v for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)
        ]
    return bool(langs) and not any(tl.core.is_builtin(lang.load) for lang in langs)


def install() -> bool:
    """Patch the interpreter's ``_patch_lang``; True when installed."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = getattr(interpreter, "_patch_lang", None)
    scope_type = getattr(interpreter, "_LangPatchScope", None)
    if original is None or scope_type is None or getattr(original, "_patches_once", False):
        return False

    langs_of = {}

    def patch_lang(fn):
        if _already_patched(fn, tl, langs_of):
            return scope_type()  # a helper inside a launch: nothing to patch, nothing to restore
        return original(fn)

    patch_lang._patches_once = True
    interpreter._patch_lang = patch_lang
    _memoise_np_dtype(interpreter, tl)
    _skip_discarded_overflow_checks(interpreter)
    _memoise_block_types(tl)
    return True


def _memoise_block_types(tl) -> None:
    """A block type's derived fields (shape, size, name) looked up by (element type, shape): every
    interpreted operation on a scalar and a block builds one, and building it validates and
    formats the shape (a fifth of an interpreted operation's cost)."""
    block_type = getattr(tl.core, "block_type", None)
    original = getattr(block_type, "__init__", None)
    if original is None or getattr(original, "_memoised", False):
        return
    cache = {}
    # the shapes the original accepts: lists and the tuple type its module sees (Triton's own
    # tuple where it has one: a block type keeps its shape as one, and with_element_ty passes it on)
    shape_types = (list, getattr(tl.core, "tuple", tuple))

    def init(self, element_ty, shape):
        if not isinstance(shape, shape_types) or not all(type(s) is int for s in shape):
            return original(self, element_ty, shape)  # constexpr dimensions: as the original
        key = (str(element_ty), *shape)  # the fields depend on the element type's name only
        fields = cache.get(key)
        if fields is None:
            original(self, element_ty, shape)
            cache[key] = (self.shape, self.numel, self.name)
        else:
            self.element_ty = element_ty
            self.shape, self.numel, self.name = fields

    init._memoised = True
    block_type.__init__ = init


def _skip_discarded_overflow_checks(interpreter) -> None:
    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if options is None or getattr(options, "debug", True) or not hasattr(options, "sanitize_overflow"):
        return  # in debug mode the checks assert: keep them
    builder.options = dataclasses.replace(options, sanitize_overflow=False)


def _memoise_np_dtype(interpreter, tl) -> None:
    original = getattr(interpreter, "_get_np_dtype", None)
    if original is None:
        return
    cache = {}

    def get_np_dtype(tt_dtype):
        # a block's NumPy dtype is its element's (pointers included), as the original computes it
        key = tt_dtype.element_ty if isinstance(tt_dtype, tl.block_type) else tt_dtype
        if isinstance(key, tl.pointer_type):  # unhashable; one answer for every pointer
            return original(key)
        try:
            return cache[key]
        except KeyError:
            value = cache[key] = original(key)
            return value

    interpreter._get_np_dtype = get_np_dtype
