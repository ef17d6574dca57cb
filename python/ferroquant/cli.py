"""Command line: ``ferroquant demo`` (and ``python -m ferroquant demo``)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ferroquant.errors import QuantError


def _demo(args: argparse.Namespace) -> int:
    from ferroquant.demo import weights_demo

    return weights_demo(layers=args.layers, check_reference=not args.no_reference)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferroquant", description="Model quantization with a Rust core.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser(
        "demo",
        help="quantize MobileNetV2's pretrained ImageNet weights with ARQ and NUQ; error and speed vs NumPy",
    )
    d.add_argument("--layers", type=int, default=0, help="only the first N weight tensors (0: all)")
    d.add_argument("--no-reference", action="store_true", help="skip the NumPy reference (no parity/speed check)")
    d.set_defaults(func=_demo)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except QuantError as e:
        print(f"ferroquant: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
