"""The planner's top plans fold near-duplicates (same GPUs, batch and cost) into the first."""

from __future__ import annotations

import pandas as pd

from moesim.plan.planner import PLAN_KEYS, _near, collapse_near_duplicates, plan


def _row(**kw):
    base = {k: 0 for k in PLAN_KEYS}
    base.update(hardware="h200", mode="aggregated", topology="ep", tp=1, ep=2, pp=1, dp=8,
                offload_fraction=0.0, batch=512, gpus=8, replicas=1, gpus_per_replica=8,
                ttft_s=0.2, tpot_s=0.030, usd_per_million_output_tokens=0.50, bound="compute")  # fmt: skip
    base.update(kw)
    return base


def test_folds_same_cost_layouts_and_keeps_different_ones():
    ranked = pd.DataFrame(
        [
            _row(ep=2, tpot_s=0.030),
            _row(ep=4, tpot_s=0.032, usd_per_million_output_tokens=0.502),  # alike: folded
            _row(ep=8, gpus=16, dp=16),  # more GPUs: a different plan
            _row(ep=8, tpot_s=0.060),  # twice the TPOT: a different plan
            _row(ep=8, usd_per_million_output_tokens=0.60),  # 20% dearer: different
        ]
    )
    best = collapse_near_duplicates(ranked, top=5)
    assert [b["ep"] for b in best] == [2, 8, 8, 8]
    assert best[0]["similar_layouts"] == ["tp1ep4dp8"]
    assert all(b["similar_layouts"] == [] for b in best[1:])
    assert len(collapse_near_duplicates(ranked, top=2)) == 2


def test_no_two_plans_of_a_real_question_are_alike():
    result = plan(
        "deepseek-v3",
        ["h800", "h200"],
        ttft_slo=2,
        tpot_slo=0.05,
        rate=50,
        input_len=2000,
        output_len=500,
        max_gpus=256,
        modes=("aggregated", "disaggregated"),
    )
    rows = [pd.Series(b) for b in result.best]
    for i, a in enumerate(rows):
        for b in rows[i + 1 :]:
            assert not _near(a, b, 0.25)
    assert any(b["similar_layouts"] for b in result.best)  # the EP variants were folded
