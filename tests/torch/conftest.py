"""The torch tests need the ``torch`` extra: each module starts with ``pytest.importorskip("torch")``, so without
torch they are reported as skipped (not silently left out)."""
