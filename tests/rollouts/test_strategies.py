"""Each strategy's configuration checks and stage plans, and the automatic choice."""

import pytest

from rollouts.strategies import StrategyConfigError, TargetSummary, strategy_choose, strategy_for

FLEET = TargetSummary(device_count=1000, regions={"eu-west": 600, "us-east": 300, "ap-south": 100})


def _fields(exc) -> dict[str, str]:
    return {item["field"]: item["message"] for item in exc.value.details}


@pytest.mark.parametrize(("count", "two_versions", "expected"), [
    (1, False, "direct"), (9, False, "direct"), (10, False, "canary"), (100, False, "canary"),
    (101, False, "progressive"), (5000, False, "progressive"), (50, True, "ab_test"),
])
def test_it_chooses_a_strategy_by_fleet_size_and_says_why(count, two_versions, expected):
    strategy, reason = strategy_choose(device_count=count, has_version_b=two_versions)
    assert strategy == expected
    assert reason


def test_canary_defaults_to_ten_percent_and_a_thirty_minute_soak():
    canary = strategy_for("canary")
    config = canary.configure({}, target=FLEET)
    assert config == {"percent": 10.0, "soak": "PT30M", "gate": "automatic", "final_soak": "PT0S"}
    stages = canary.plan(config, target=FLEET)
    assert [(s.kind, s.percent, s.soak_seconds) for s in stages] == [("canary", 10.0, 1800), ("rest", 100.0, 0)]


def test_progressive_defaults_to_ten_twenty_five_fifty_hundred():
    progressive = strategy_for("progressive")
    config = progressive.configure({"soak": "PT1H", "gate": "manual"}, target=FLEET)
    stages = progressive.plan(config, target=FLEET)
    assert [s.percent for s in stages] == [10, 25, 50, 100]
    assert {s.soak_seconds for s in stages} == {3600}
    assert {s.gate for s in stages} == {"manual"}


def test_progressive_takes_a_soak_and_gate_per_stage():
    progressive = strategy_for("progressive")
    config = progressive.configure({"stages": [{"percent": 5, "soak": "PT5M", "gate": "manual"},
                                               {"percent": 100}]}, target=FLEET)
    stages = progressive.plan(config, target=FLEET)
    assert [(s.percent, s.soak_seconds, s.gate) for s in stages] == [(5, 300, "manual"), (100, 1800, "automatic")]


@pytest.mark.parametrize(("config", "field", "words"), [
    ({"percentages": [10, 5, 100]}, "strategy_config.stages[1].percent", "rise"),
    ({"percentages": [10, 50]}, "strategy_config.stages", "100"),
    ({"percentages": [0, 100]}, "strategy_config.stages[0].percent", "above 0"),
    ({"soak": "30 minutes"}, "strategy_config.soak", "ISO 8601"),
    ({"gate": "sometimes"}, "strategy_config.gate", "automatic"),
    ({"speed": 3}, "strategy_config.speed", "Unknown"),
])
def test_progressive_refuses_bad_configurations_saying_what_is_wrong(config, field, words):
    with pytest.raises(StrategyConfigError) as exc:
        strategy_for("progressive").configure(config, target=FLEET)
    assert words in _fields(exc)[field]


def test_canary_refuses_a_hundred_percent_and_bad_durations_all_at_once():
    with pytest.raises(StrategyConfigError) as exc:
        strategy_for("canary").configure({"percent": 100, "soak": "PT-5M"}, target=FLEET)
    assert set(_fields(exc)) == {"strategy_config.percent", "strategy_config.soak"}


def test_regional_goes_smallest_region_first_by_default_with_a_delay_between():
    regional = strategy_for("regional")
    config = regional.configure({"delay": "PT10M", "soak": "PT15M"}, target=FLEET)
    stages = regional.plan(config, target=FLEET)
    assert [s.region for s in stages] == ["ap-south", "us-east", "eu-west"]
    assert [s.delay_seconds for s in stages] == [0, 600, 600]


def test_regional_puts_unlisted_regions_in_a_last_stage():
    regional = strategy_for("regional")
    config = regional.configure({"regions": ["us-east", "eu-west"]}, target=FLEET)
    stages = regional.plan(config, target=FLEET)
    assert [(s.kind, s.region) for s in stages] == [("region", "us-east"), ("region", "eu-west"), ("rest", "")]


def test_regional_refuses_regions_outside_the_target_set():
    with pytest.raises(StrategyConfigError) as exc:
        strategy_for("regional").configure({"regions": ["eu-west", "mars"]}, target=FLEET)
    assert "mars" in _fields(exc)["strategy_config.regions"]


def test_ab_test_validates_split_window_metric_and_improvement():
    ab = strategy_for("ab_test")
    assert ab.configure({"split": 30, "window": "PT2H", "metric": "error_rate"}, target=FLEET) == {
        "split": 30.0, "window": "PT2H", "metric": "error_rate", "min_improvement": 5.0}
    with pytest.raises(StrategyConfigError) as exc:
        ab.configure({"split": 100, "metric": "vibes", "min_improvement": -1}, target=FLEET)
    assert set(_fields(exc)) == {"strategy_config.split", "strategy_config.metric",
                                 "strategy_config.min_improvement"}
