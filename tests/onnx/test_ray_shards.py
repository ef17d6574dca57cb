"""Sharded calibration on a local Ray cluster of 2 workers (:mod:`ferroquant.onnx.ray_shards`): 4 shards through
Ray give the state of the single-process sharded run (the CLI's merge) and, on a fixed histogram range, the
qparams of one run over all the data. Skipped when ray is not installed (the ``ray`` extra)."""

from __future__ import annotations

import hashlib
import sys

import numpy as np
import onnx
import pytest

from ferroquant.errors import ConfigError, DataError
from ferroquant.onnx.api import calibration_setup, create_quant_config
from ferroquant.onnx.ray_shards import calibrate_with_ray
from ferroquant.onnx.shards import (calibrate_shard, calibrated_from_state, document_digest, load_state,
                                   merge_states, save_state)
from tests.cli.sensitive import write_case


@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray_shards")
    paths = write_case(folder)
    x = np.load(paths["calib"])
    paths["x"], paths["parts"] = x, []
    for k in range(4):
        paths["parts"].append(folder / f"part_{k}.npy")
        np.save(paths["parts"][-1], x[k * 16:(k + 1) * 16])
    return paths


def _config(model, algo):
    return create_quant_config(None, model, batch_num=None,
                               config_defination={"common_config": {"activation": {"algorithm": algo}}})


def _observe(model, cfg, data, grids=None):
    cm, _ = calibration_setup(cfg, model)
    return calibrate_shard(cm, data, None, grids)


def _qparams(model, cfg, state):
    table = calibrated_from_state(calibration_setup(cfg, model)[0], state).table()
    return {n: (a.scale, a.zero_point, a.clip_min, a.clip_max) for n, a in table.activations().items()}


def _batches(x):
    return [{"x": x[i:i + 8]} for i in range(0, len(x), 8)]


def test_four_shards_through_ray_equal_the_local_merge_and_one_run(ray, case, tmp_path):
    model = onnx.load(str(case["model"]))
    grids = _observe(model, _config(model, "minmax"), _batches(case["x"]))  # a first pass: the fixed range
    cfg = _config(model, "hfmg")
    one = _observe(model, cfg, _batches(case["x"]), grids)
    files = [save_state(tmp_path / f"part_{k}.json", _observe(model, cfg, _batches(np.load(p)), grids))
             for k, p in enumerate(case["parts"])]
    local = merge_states(files)  # the single-process sharded run (`ferroquant merge`)
    assert all(document_digest(load_state(f).to_json()) == hashlib.sha256(f.read_bytes()).hexdigest()
               for f in files)

    by_path = calibrate_with_ray(case["model"], cfg, case["parts"], batch_size=8, grids=grids)
    in_memory = calibrate_with_ray(model, cfg, [_batches(np.load(p)) for p in reversed(case["parts"])],
                                   grids=grids)
    assert by_path.to_json() == local.to_json()  # the state `ferroquant merge` writes for these shards
    assert in_memory.to_json() == local.to_json()  # whatever the order of the shards and tasks
    assert by_path.batches == 8
    assert _qparams(model, cfg, by_path) == _qparams(model, cfg, one)  # bit-identical to one run
    with pytest.raises(DataError, match="list of shards"):
        calibrate_with_ray(model, cfg, str(case["parts"][0]))  # one path is not a list of shards
    with pytest.raises(DataError, match="calibration data not found: .*missing.npy"):  # raised in a task
        calibrate_with_ray(model, cfg, [case["parts"][0], tmp_path / "missing.npy"])


def test_a_ray_dataset_split_over_the_workers_gives_one_runs_qparams(ray, case):
    model = onnx.load(str(case["model"]))
    grids = _observe(model, _config(model, "minmax"), _batches(case["x"]))
    cfg = _config(model, "percentile")
    one = _observe(model, cfg, _batches(case["x"]), grids)
    ds = ray.data.from_numpy(case["x"]).rename_columns({"data": "x"})
    state = calibrate_with_ray(model, cfg, ds, num_shards=4, batch_size=8, grids=grids)
    assert state.calibrators.keys() == one.calibrators.keys()
    assert _qparams(model, cfg, state) == _qparams(model, cfg, one)


def test_missing_ray_is_a_clear_error(case, monkeypatch):
    model = onnx.load(str(case["model"]))
    cfg = _config(model, "hfmg")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    with pytest.raises(ConfigError, match=r"pip install 'ferroquant\[ray\]'"):
        calibrate_with_ray(model, cfg, case["parts"])
