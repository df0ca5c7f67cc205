"""The demo says whether its fine-tuned model meets the issue-23 goals on the plain and outlined domains."""

from __future__ import annotations

from clipshield.cli.commands.demo import DEMO_METHODS, demo_eval, goal_lines
from clipshield.training.methods import list_methods


def test_goals_are_measured_and_judged():
    sets = demo_eval("miniworld")
    before = {sets[0]: (0.98, 0.14), sets[1]: (0.86, 0.0)}
    good = goal_lines(before, {sets[0]: (0.92, 0.45), sets[1]: (0.60, 0.0)}, sets)
    assert good[1:] == [
        "    met   robust gain +31.0 points (goal >= +25)",
        "    met   clean drop 6.0 points (goal <= 8)",
        "    met   outlined clean kept 70 % of the base's (goal >= 60 %)",
    ]
    bad = goal_lines(before, {sets[0]: (0.80, 0.30), sets[1]: (0.20, 0.0)}, sets)
    assert [line.split()[0] for line in bad[1:]] == ["MISSED"] * 3


def test_the_demo_fine_tunes_a_tga_zsr_based_method_in_every_world():
    assert set(DEMO_METHODS) == {"miniworld", "miniworld224"}
    assert set(DEMO_METHODS.values()) <= {"tga-zsr", "tga-anchor"} and set(DEMO_METHODS.values()) <= set(list_methods())
