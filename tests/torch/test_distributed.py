"""Under torch.distributed (gloo, 2 CPU processes), the IFMR initialisation and the learned clips are the same
on every rank although each rank sees different data; and they equal a single-process IFMR on all the data."""

import contextlib
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

WORLD = 2


@contextlib.contextmanager
def _group(rank: int, out_dir: str, tag: str = ""):
    """A gloo group of WORLD ranks, torn down only once every rank is done with it."""
    # a file rendezvous: no TCP port to pick (a free port picked, then released, can be taken in between)
    dist.init_process_group("gloo", init_method=f"file://{os.path.join(out_dir, 'rendezvous' + tag)}", rank=rank,
                            world_size=WORLD)
    try:
        torch.set_num_threads(1)
        yield
    finally:
        # every rank done with the group before any tears it down: tearing down gloo while the other rank
        # still talks to it aborts the process ("terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()


def _worker(rank: int, out_dir: str) -> None:
    with _group(rank, out_dir):
        import ferroquant.torch as fqt
        from tests.torch.models import SmallCNN

        torch.manual_seed(0)
        model = SmallCNN(4, 8)
        g = torch.Generator().manual_seed(100 + rank)  # different data on each rank
        batches = [torch.randn(16, 1, 8, 8, generator=g) for _ in range(4)]
        labels = [torch.randint(0, 10, (16,), generator=g) for _ in range(4)]
        cfg = fqt.create_quant_retrain_config(None, model, batches[0], batch_num=2)
        fqt.create_quant_retrain_model(cfg, model, batches[0])
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        model.train()
        init = None
        for i, (x, y) in enumerate(zip(batches, labels)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            if i == 1:
                init = {n: (l.act_quant.clip_min.item(), l.act_quant.clip_max.item())
                        for n, l in fqt.quant_layers(model).items()}
            opt.step()
        model(batches[0])  # the next step's forward averages the clips
        clips = {n: (l.act_quant.clip_min.item(), l.act_quant.clip_max.item())
                 for n, l in fqt.quant_layers(model).items()}
        x0 = [b.numpy() for b in batches[:2]]
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), {"init": init, "clips": clips, "x": x0}, allow_pickle=True)


def test_clips_identical_on_every_rank(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    r = [np.load(tmp_path / f"rank{i}.npy", allow_pickle=True).item() for i in range(WORLD)]
    assert r[0]["init"] == r[1]["init"]
    assert r[0]["clips"] == r[1]["clips"]
    # The merged initialisation of conv1 is IFMR (symmetric) over both ranks' first two batches, in rank order.
    from ferroquant.calibrate import IFMRCalibrator

    cal = IFMRCalibrator("conv1", bits=8, symmetric=True)
    for rank in range(WORLD):
        for x in r[rank]["x"]:
            cal.observe(x)
    res = cal.qparams()
    lo, hi = r[0]["init"]["conv1"]
    assert (lo, hi) == pytest.approx((res.clip_min, res.clip_max), rel=1e-6)


def _ptq_worker(rank: int, out_dir: str, algo: str) -> None:
    with _group(rank, out_dir, "_" + algo):
        import ferroquant.torch as fqt
        from tests.torch.models import SmallCNN

        torch.manual_seed(0)
        model = SmallCNN(4, 8).eval()
        g = torch.Generator().manual_seed(200 + rank)  # each rank calibrates on its own shard
        batches = [torch.randn(8, 1, 8, 8, generator=g) * (1 + rank) for _ in range(2)]
        r = fqt.quantize_torch_model(model, batches, common_config={"activation": {"algorithm": algo}})
        act = {n: (lq.activation.scale, lq.activation.zero_point) for n, lq in r.table.layers.items()}
        np.save(os.path.join(out_dir, f"ptq_{algo}_{rank}.npy"), {"act": act, "x": [b.numpy() for b in batches]},
                allow_pickle=True)


@pytest.mark.parametrize("algo", ["ifmr", "hfmg"])
def test_torch_ptq_shards_over_ranks_give_one_result(tmp_path, algo):
    """Torch PTQ under torch.distributed: each rank observes its own shard, the calibrator states are merged over
    the ranks before the search, so every rank gets the same activation qparams, those of one process that saw
    every shard (in rank order)."""
    mp.spawn(_ptq_worker, args=(str(tmp_path), algo), nprocs=WORLD, join=True)
    r = [np.load(tmp_path / f"ptq_{algo}_{i}.npy", allow_pickle=True).item() for i in range(WORLD)]
    assert r[0]["act"] == r[1]["act"]
    import ferroquant.torch as fqt
    from tests.torch.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(4, 8).eval()
    every = [torch.from_numpy(x) for rank in range(WORLD) for x in r[rank]["x"]]
    one = fqt.quantize_torch_model(model, every, common_config={"activation": {"algorithm": algo}})
    want = {n: (lq.activation.scale, lq.activation.zero_point) for n, lq in one.table.layers.items()}
    if algo == "ifmr":  # the same samples, merged in rank order: the same search
        assert r[0]["act"] == want
    else:  # a histogram merged across ranks re-bins onto the wider range: close to one pass, not bit-equal
        for n, (s, z) in want.items():
            assert r[0]["act"][n][0] == pytest.approx(s, rel=0.02) and abs(r[0]["act"][n][1] - z) <= 2
