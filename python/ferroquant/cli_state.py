"""The sharded-calibration commands of the ``ferroquant`` CLI (:mod:`ferroquant.onnx.shards`):

    ferroquant calibrate MODEL --calib PART --state part_k.json    # observe one shard, no search
    ferroquant merge part_*.json --out state.json                  # order-independent merge
    ferroquant quantize MODEL --state state.json --out DIR         # search and export, no data
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Tuple

from ferroquant.errors import ConfigError


def add_commands(sub: Any, parents: Tuple[argparse.ArgumentParser, ...], common: argparse.ArgumentParser) -> None:
    """Register ``calibrate`` and ``merge``; ``parents``: the common, quantization, calibration-data and
    deploy-model options."""
    c = sub.add_parser("calibrate", parents=list(parents),
                       help="observe one shard of the calibration data into a state file (no search, no export)")
    c.add_argument("model", help="ONNX model file")
    c.add_argument("--state", required=True, metavar="JSON", help="calibration state to write (part_k.json)")
    c.add_argument("--range-from", metavar="JSON",
                   help="start every histogram on the ranges of this state (a first pass, merged): shards whose "
                        "data stays inside merge into exactly one run's histograms")
    c.set_defaults(func=cmd_calibrate)
    m = sub.add_parser("merge", parents=[common], help="merge calibration states (from `ferroquant calibrate`)")
    m.add_argument("states", nargs="+", metavar="STATE", help="state files of one model, config and profile")
    m.add_argument("--out", required=True, metavar="JSON", help="merged state to write")
    m.set_defaults(func=cmd_merge)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ferroquant.cli import _calibration, _config_and_model, _refuse_inputs
    from ferroquant.onnx.api import calibration_setup
    from ferroquant.onnx.shards import calibrate_shard, load_state, save_state
    from ferroquant.progress import ProgressBar

    if args.calib is None:
        raise ConfigError("calibrate needs --calib (this shard's calibration data)")
    _refuse_inputs(args, [Path(args.state)])
    _, prepared, cfg = _config_and_model(args)
    cm, _ = calibration_setup(cfg, prepared, profile=args.profile, cpu_types=args.cpu_types)
    grids = load_state(args.range_from) if args.range_from else None
    feeds = _calibration(args, prepared.model, cfg)
    with ProgressBar("calibrating", len(feeds), "batches") as bar:
        state = calibrate_shard(cm, feeds, len(feeds), grids, bar)
    save_state(args.state, state)
    print(f"observed {state.batches} batches for {len(state.calibrators)} tensors into {args.state} (profile "
          f"{state.profile}, {state.cpu_types} types)")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ferroquant.outputs import refuse_input
    from ferroquant.onnx.shards import merge_states, save_state

    refuse_input([args.out], list(args.states), "--out")
    state = merge_states(args.states)
    save_state(args.out, state)
    print(f"merged {len(args.states)} states ({state.batches} batches, {len(state.calibrators)} tensors) into "
          f"{args.out}")
    return 0


def calibrated_from_args(args: argparse.Namespace) -> Any:
    """``quantize --state``: the calibrated model from the state, with its config, profile and CPU types."""
    from ferroquant.cli import _load_model
    from ferroquant.onnx.api import calibration_setup, prepare_model
    from ferroquant.onnx.shards import calibrated_from_state, load_state, state_config

    if args.config or args.calib or args.report:
        raise ConfigError("--state holds the config and replaces the calibration data: it cannot be combined "
                          "with --config, --calib or --report")
    state = load_state(args.state)
    if args.profile != state.profile or (args.cpu_types and args.cpu_types != state.cpu_types):
        raise ConfigError(f"the state was calibrated for profile {state.profile} ({state.cpu_types} types): pass "
                          f"--profile {state.profile} --cpu-types {state.cpu_types}")
    cfg = state_config(state)
    prepared = prepare_model(_load_model(args.model), cfg.do_fusion, cfg.skip_fusion_layers, loaded=True)
    cm, _ = calibration_setup(cfg, prepared, profile=state.profile, cpu_types=state.cpu_types)
    return calibrated_from_state(cm, state)


__all__ = ["add_commands", "calibrated_from_args", "cmd_calibrate", "cmd_merge"]
