"""Skip the whole folder when torch is not installed."""

try:
    import torch  # noqa: F401

    collect_ignore_glob: list = []
except ImportError:
    collect_ignore_glob = ["test_*.py", "models.py"]
