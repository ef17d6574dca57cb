"""The ONNX conformance corpus in the onnx wheel (about 2,000 models): zero crashes, zero "ill-formed graph"
refusals, zero written models onnxruntime cannot load, and every model left alone gives the original's
outputs bit for bit. Runs all of it (about a minute on 2 cores); the counts are printed."""

from __future__ import annotations

from tests.foreign.conformance import run_all, summary


def test_conformance_corpus():
    outcomes = run_all()
    s = summary(outcomes)
    kinds = s["kinds"]
    print(f"\nconformance corpus: {s['total']} models, {s['tried']} with a float input: "
          + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    for reason, count in s["reasons"]:
        print(f"  refused x{count}: {reason}")
    bad = [o for o in outcomes if o.kind in ("crash", "written model does not load", "left alone but outputs differ")]
    assert not bad, bad[:10]
    assert not [o for o in outcomes if "ill-formed" in o.reason]
    assert kinds.get("quantized", 0) >= 30 and s["tried"] > 1400
