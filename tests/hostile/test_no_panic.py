"""Issue 13, item 13: the no-panic test can fail. A Rust panic becomes InternalError (a QuantError), which the
old test accepted; now it fails on InternalError, and a deliberately panicking entry (built with the
`debug-panic` cargo feature, as scripts/test.sh does) shows both the mapping and the failure."""

import pytest

from ferroquant import _native, errors
from tests.test_errors import check_no_panic


def _internal():
    raise errors.InternalError("internal error in a native kernel (please report): boom")


def test_the_no_panic_check_fails_on_internal_error():
    with pytest.raises(pytest.fail.Exception, match="Rust panic"):
        check_no_panic(_internal)
    check_no_panic(lambda: (_ for _ in ()).throw(errors.ParameterError("a clear error is fine")))


@pytest.mark.parametrize("long", [False, True])
def test_a_real_panic_becomes_internal_error_and_fails_the_check(long):
    if not hasattr(_native, "_debug_panic"):
        pytest.skip("native module built without the debug-panic feature (scripts/test.sh builds with it)")
    with pytest.raises(errors.InternalError, match="deliberate panic"):
        _native._debug_panic(long)
    with pytest.raises(pytest.fail.Exception, match="Rust panic"):
        check_no_panic(lambda: _native._debug_panic(long))
