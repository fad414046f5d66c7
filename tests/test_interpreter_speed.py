"""The test-time shortcuts in the Triton interpreter (``svm_kernels.interpreter_speed``) change nothing but time."""

import os

import pytest
import torch

from svm_kernels.utils import HAS_TRITON

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" or not HAS_TRITON,
    reason="the shortcut is for Triton's interpreter",
)

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _twice(b_x):
        return b_x * 2.0

    @triton.jit
    def _scaled_sum(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m_n = offs < n
        b_x = tl.load(x_ptr + offs, mask=m_n, other=0.0)
        tl.store(out_ptr + offs, _twice(_twice(b_x)) + tl.exp(b_x), mask=m_n)


def test_nested_helpers_run_and_the_language_is_restored():
    from triton.runtime import interpreter

    assert getattr(interpreter._patch_lang, "_patches_once", False)  # installed by conftest
    x = torch.randn(37)
    out = torch.full_like(x, float("nan"))
    _scaled_sum[(3,)](x_ptr=x, out_ptr=out, n=37, BLOCK=16)
    torch.testing.assert_close(out, 4 * x + x.exp())
    # after the launch the language module is the compiler's again (its builtins unpatched);
    # tl.core may stay patched: the interpreter itself leaves it so after a call into Triton's
    # standard library (tl.cdiv, tl.sigmoid: helpers whose module sees only tl.core)
    assert tl.core.is_builtin(tl.load)
    assert interpreter._get_np_dtype(tl.float32) == interpreter._get_np_dtype(tl.block_type(tl.float32, [4]))


if HAS_TRITON:

    @triton.jit
    def _index_math(x_ptr, out_ptr, n, stride, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m_n = offs < n
        # int32 products and sums, some past 2^31 (they wrap, as on a GPU)
        b_i = tl.load(x_ptr + offs, mask=m_n, other=0)
        tl.store(out_ptr + offs, b_i * stride + offs - 7, mask=m_n)


def test_overflow_checks_whose_verdict_is_dropped_are_skipped():
    """Without debug mode the interpreter drops the overflow sanitizer's verdict: turning the
    sanitizer off changes no result, with or without wrap-around."""
    import dataclasses

    from triton.runtime import interpreter

    builder = interpreter.interpreter_builder
    assert not builder.options.debug and not builder.options.sanitize_overflow  # installed by conftest
    x = torch.tensor([0, 1, 3, 1 << 20, -(1 << 20), 2047, 5], dtype=torch.int32)
    outs = []
    for sanitize in (False, True):
        before = builder.options
        builder.options = dataclasses.replace(before, sanitize_overflow=sanitize)
        try:
            out = torch.full_like(x, -1)
            _index_math[(2,)](x_ptr=x, out_ptr=out, n=7, stride=1 << 12, BLOCK=4)
        finally:
            builder.options = before
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    exact = x.long() * (1 << 12) + torch.arange(7) - 7
    assert (exact.abs() >= 1 << 31).any()  # some wrapped
    assert torch.equal(outs[0], ((exact + (1 << 31)) % (1 << 32) - (1 << 31)).int())


def test_memoised_block_types_match_fresh_ones():
    """A block type from the memo has the fields a fresh one computes, whatever form its shape
    takes (list, Triton's tuple through with_element_ty, constexpr dimensions)."""
    block_type = tl.core.block_type
    memoised = block_type.__init__
    assert getattr(memoised, "_memoised", False)  # installed by conftest
    original = next(
        c.cell_contents
        for c in memoised.__closure__
        if getattr(c.cell_contents, "__name__", "") == "__init__"
    )
    for element, shape in [
        (tl.float32, [4, 8]),
        (tl.int32, [16]),
        (tl.pointer_type(tl.bfloat16), [2, 1, 4]),
        (tl.float32, [tl.constexpr(2), 4]),
    ]:
        for _ in range(2):  # the second build comes from the memo
            built = block_type(element, shape)
            fresh = block_type.__new__(block_type)
            original(fresh, element, shape)
            assert (built.element_ty, built.shape, built.numel, built.name) == (
                fresh.element_ty,
                fresh.shape,
                fresh.numel,
                fresh.name,
            )
        retyped = built.with_element_ty(tl.int8)  # the shape is Triton's tuple here
        assert retyped.name == f"<{built.shape}, int8>" and retyped.numel == built.numel


def test_installing_twice_wraps_once():
    from triton.runtime import interpreter

    from svm_kernels import interpreter_speed

    patch_lang = interpreter._patch_lang
    assert interpreter_speed.install() is False  # installed by conftest already
    assert interpreter._patch_lang is patch_lang


def test_a_function_that_cannot_see_the_language_fails_as_without_the_shortcut():
    # the interpreter asserts that triton.language is visible; the shortcut must not answer for it
    from triton.runtime import interpreter

    fn = type(_twice.fn)(_twice.fn.__code__, {})  # the same code with no module globals
    with pytest.raises(AssertionError, match="triton.language must be visible"):
        interpreter._patch_lang(fn)


def test_a_helper_that_sees_only_the_core_module_counts_as_patched():
    """Triton's standard library (tl.sum, tl.sigmoid...) sees only tl.core: inside a launch its
    builtins are replaced already, so the call reuses them (fakes stand for tl and tl.core)."""
    import types

    from svm_kernels.interpreter_speed import _already_patched

    def builtin():
        pass

    builtin.__triton_builtin__ = True
    core = types.ModuleType("core")
    core.is_builtin = lambda f: getattr(f, "__triton_builtin__", False)
    core.load = lambda: None  # replaced by the interpreter: no longer a builtin
    lang = types.ModuleType("language")
    lang.core, lang.load = core, builtin  # the language module itself still unpatched

    def in_module(**globals_):
        return type(_twice.fn)(_twice.fn.__code__, globals_)

    assert _already_patched(in_module(core=core), lang, {})
    assert not _already_patched(in_module(tl=lang), lang, {})
    assert not _already_patched(in_module(tl=lang, core=core), lang, {})
    assert not _already_patched(in_module(), lang, {})  # nothing visible: the interpreter's assert


def test_overflow_checks_stay_in_debug_mode():
    """In debug mode the sanitizer's verdict asserts: the shortcut leaves it on there."""
    import dataclasses
    import types

    from triton.runtime import interpreter

    from svm_kernels.interpreter_speed import _skip_discarded_overflow_checks

    options = interpreter.interpreter_builder.options
    for debug in (True, False):
        fake = types.SimpleNamespace(
            interpreter_builder=types.SimpleNamespace(
                options=dataclasses.replace(options, debug=debug, sanitize_overflow=True)
            )
        )
        _skip_discarded_overflow_checks(fake)
        assert fake.interpreter_builder.options.sanitize_overflow is debug
