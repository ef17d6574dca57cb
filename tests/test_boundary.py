"""The typed native boundary (issue 9, item 4): one door to the native module (ferroquant.ops), a NumPy twin
with the same signatures and result types, a stub that tells the truth, and no positional tuples of numbers
or string-keyed dicts coming back from a search."""

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from ferroquant import _native, ops, reference
from ferroquant.ops import types

PKG = Path(ops.__file__).resolve().parents[1]
SHARED = sorted(n for n in reference.__all__ if callable(getattr(ops, n, None)))


def _native_functions() -> set:
    """The native module's functions; its classes (``#[pyclass]`` result types) are not functions."""
    return {n for n in dir(_native) if callable(getattr(_native, n)) and not isinstance(getattr(_native, n), type)
            and not n.startswith("__")}


def _params(f):
    return [(p.name, p.kind, p.default) for p in inspect.signature(f).parameters.values()]


@pytest.mark.parametrize("name", SHARED)
def test_reference_has_the_signature_of_ops(name):
    """Same parameters, in the same order, with the same defaults; ops may add a trailing ``name``."""
    got, want = _params(getattr(ops, name)), _params(getattr(reference, name))
    if got and got[-1][0] == "name":
        got = got[:-1]
    assert got == want


def test_every_native_function_has_an_ops_function_and_a_twin():
    native = {n for n in _native_functions() if not n.startswith("_")}
    for n in native - {"set_num_threads", "get_num_threads"}:
        assert callable(getattr(ops, n, None)), n
        assert n in SHARED, n


def test_only_ops_imports_the_native_module():
    pattern = re.compile(r"\b_native\b")
    offenders = []
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG).as_posix()
        if rel.startswith("ops/") or rel == "__init__.py":
            continue
        if any(pattern.search(line) and not line.lstrip().startswith("#") for line in p.read_text().splitlines()):
            offenders.append(rel)
    assert offenders == []
    init = (PKG / "__init__.py").read_text()
    assert re.findall(r"_native\b.*", init) == ["_native import __version__"]


def _stub(kind=ast.FunctionDef):
    tree = ast.parse((PKG / "_native.pyi").read_text())
    return {f.name: f for f in tree.body if isinstance(f, kind)}


def test_the_stub_lists_every_native_function():
    assert set(_stub()) - {"_debug_panic"} == _native_functions() - {"_debug_panic"}


def test_the_stub_lists_every_native_class():
    classes = {n for n in dir(_native) if isinstance(getattr(_native, n), type) and not n.startswith("__")}
    classes -= {n for n in classes if issubclass(getattr(_native, n), BaseException)}
    assert classes <= set(_stub(ast.ClassDef))


@pytest.mark.parametrize("name", sorted(_stub()))
def test_the_stub_has_the_native_signature(name):
    if not hasattr(_native, name):
        pytest.skip(f"{name} is not in this build")
    f = _stub()[name]
    args = f.args.args
    defaults = [None] * (len(args) - len(f.args.defaults)) + list(f.args.defaults)
    stub = [(a.arg, inspect.Parameter.empty if d is None else ast.literal_eval(d)) for a, d in zip(args, defaults)]
    real = [(p.name, p.default) for p in inspect.signature(getattr(_native, name)).parameters.values()]
    assert stub == real


def test_results_are_typed_values():
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    h = ops.histogram_observe(None, x, 256)
    for k in (ops, reference):
        assert isinstance(k.histogram_observe(None, x, 256), types.Histogram)
        assert isinstance(k.hfmg_search(h), types.HfmgSearch)
        assert isinstance(k.percentile_clip(h), types.Clip) and isinstance(k.kl_search(h), types.Clip)
        assert isinstance(k.ifmr(x), types.IfmrResult) and isinstance(k.ifmr_histogram(h), types.IfmrResult)
        assert isinstance(k.qparams_from_range(-1, 1), types.QParams)
        assert isinstance(k.compare(x, x), types.Comparison)
        assert isinstance(k.arq(x.reshape(50, 100)), types.ArqResult)
        assert isinstance(k.nuq(x.reshape(50, 100)), types.NuqResult)
        assert isinstance(k.ulq_fake_quant(x, -1, 1), types.UlqForward)
        assert isinstance(k.ulq_backward(x, x, -1, 1), types.UlqBackward)
    for cls in (types.HfmgSearch, types.Clip, types.IfmrResult, types.IfmrOptions):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


def test_ifmr_options_are_one_object():
    """The nine options are fields of IfmrOptions, written once; the kernels take that object."""
    fields = [f.name for f in dataclasses.fields(types.IfmrOptions)]
    assert fields == ["bits", "symmetric", "max_percentile", "min_percentile", "search_start", "search_end",
                      "search_step", "search_extend", "search_2d"]
    for k in (ops, reference):
        assert list(inspect.signature(k.ifmr).parameters) == ["x", "options", "zeros"]  # zeros: data, not an option
    o = types.IfmrOptions(bits=4, search_extend=False)
    x = np.linspace(-1, 2, 1000, dtype=np.float32)
    assert ops.ifmr(x, o) == reference.ifmr(x, o)
    with pytest.raises(Exception, match="search_extend must be a bool"):
        types.IfmrOptions(search_extend="no")


def test_backend_switch_is_one_place():
    assert ops.backend("native") is ops and ops.backend("reference") is reference
    with pytest.raises(ValueError, match="backend"):
        ops.backend("gpu")
