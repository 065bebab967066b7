"""The shared words (nightlab.types): a metric value knows which way is better."""

from __future__ import annotations

import math

import pytest

from nightlab.types import Direction, MetricValue, Proposal, ProposalCost


@pytest.mark.parametrize(("direction", "best"), [(Direction.MINIMIZE, 0.9), (Direction.MAXIMIZE, 1.1)])
def test_max_is_the_best_whichever_way_the_metric_goes(direction: Direction, best: float) -> None:
    values = [direction.of(v) for v in (1.0, best, None, math.nan, 1.05)]
    assert max(values).number == best
    assert min(values).number is None  # no result is the worst, whatever the direction
    assert sorted(values)[-1] == direction.of(best)
    assert direction.of(best) > direction.of(1.0) and not direction.of(1.0) > direction.of(best)


def test_gains_and_scores_are_positive_when_better() -> None:
    low, high = MetricValue(1.0, Direction.MINIMIZE), MetricValue(1.2, Direction.MINIMIZE)
    assert low.gain_over(high) == pytest.approx(0.2) and high.gain_over(low) == pytest.approx(-0.2)
    assert MetricValue(None).gain_over(low) is None
    assert Direction.MINIMIZE.scores([1.0, 2.0]) == [-1.0, -2.0]
    assert Direction.MAXIMIZE.scores([1.0, 2.0]) == [1.0, 2.0]
    assert Direction.MAXIMIZE.improvement(0.6, 0.5) == pytest.approx(0.1)


def test_values_of_two_directions_do_not_compare() -> None:
    with pytest.raises(ValueError, match="cannot compare"):
        _ = MetricValue(1.0, Direction.MINIMIZE) < MetricValue(1.0, Direction.MAXIMIZE)
    assert MetricValue(1.0, Direction.MINIMIZE) != MetricValue(1.0, Direction.MAXIMIZE)


def test_a_proposal_keeps_its_typed_fields_in_the_ledger_record() -> None:
    proposal = Proposal(
        "d", [], refused="no answer", lessons={3: "lr too high"}, cost=ProposalCost(10, 2, 0.5)
    )
    record = proposal.to_dict()
    assert record["refused"] == "no answer" and record["lessons"] == {"3": "lr too high"}
    assert record["cost"]["tokens_in"] == 10 and record["cost"]["cost_usd"] == 0.5
