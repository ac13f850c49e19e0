"""Claims in an ablation file: the verdict of a paired difference, and rows paired by seed."""

from types import SimpleNamespace

import pytest

from arvision.ablate.claims import claim_rows, verdict
from arvision.ablate.spec import ClaimTable
from arvision.ablate.stats import Estimate


@pytest.mark.parametrize(("difference", "expected"), [
    (Estimate(1.0, 0.5, 1.5, 2), "held"),
    (Estimate(-1.0, -1.5, -0.5, 2), "reversed"),
    (Estimate(0.2, -0.1, 0.5, 2), "not separated"),
    (Estimate(0.0, 0.0, 0.4, 2), "not separated"),  # an interval touching 0 has not cleared it
    (Estimate(0.3, None, None, 1), "one seed: higher"),
    (Estimate(-0.3, None, None, 1), "one seed: not higher"),
    (None, "not measured"),
])
def test_verdicts(difference, expected):
    assert verdict(difference) == expected


def row(label, seed, top1, status="finished"):
    return {"label": label, "seed": seed, "linear_top1": top1, "status": status}


def test_claims_pair_seeds_and_skip_what_did_not_finish():
    claim = ClaimTable(text="a beats b", better="a", worse="b", source="paper")
    plan = SimpleNamespace(ablation=SimpleNamespace(config=SimpleNamespace(claims=(claim,))))
    rows = [row("a", 0, 80.0), row("a", 1, 70.0), row("a", 2, 99.0),
            row("b", 0, 79.0), row("b", 1, 68.0), row("b", 2, 0.0, status="failed")]
    [result] = claim_rows(plan, rows)
    # seed 0: +1, seed 1: +2; seed 2 has no finished partner: a mean of unpaired scores would
    # give (80 + 70 + 99) / 3 - (79 + 68) / 2, far from +1.5
    assert result["difference"]["mean"] == pytest.approx(1.5)
    assert (result["difference"]["low"], result["difference"]["high"]) == (1.0, 2.0)
    assert result["verdict"] == "held" and result["metric"] == "linear_top1"
    assert (result["better"], result["worse"], result["source"]) == ("a", "b", "paper")
    [swapped] = claim_rows(SimpleNamespace(ablation=SimpleNamespace(config=SimpleNamespace(
        claims=(ClaimTable(text="b beats a", better="b", worse="a"),)))), rows)
    assert swapped["verdict"] == "reversed"
