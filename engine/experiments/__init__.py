"""Experiments: definitions, deterministic assignment, bandit allocation, result statistics,
tracking and their HTTP routes (``routes``) and CLI (``cli``).

Wiring in three calls: ``registry = load_experiments(settings_experiments)`` at startup;
``assign_user(registry, user_id)`` per request (an Assignment with the variant's pipeline
overrides, or None); ``analyze(arm_counts, weights, primary_metric, ...)`` for the results route.
"""

from .assignment import (
    Assignment,
    Experiment,
    ExperimentError,
    Experiments,
    Layer,
    Metric,
    Overrides,
    Status,
    Variant,
    assign,
    assign_one,
    assign_user,
    bucket_ranges,
    choose_variation,
    gb_hash,
    load_experiments,
    parse_experiment,
)
from .bandit import Allocation, choose_arm, thompson_weights, update_bandit
from .stats import (
    ArmCounts,
    InvalidCounts,
    analyze,
    json_safe,
    sample_size,
)

__all__ = [
    "Allocation",
    "ArmCounts",
    "Assignment",
    "Experiment",
    "ExperimentError",
    "Experiments",
    "InvalidCounts",
    "Layer",
    "Metric",
    "Overrides",
    "Status",
    "Variant",
    "analyze",
    "assign",
    "assign_one",
    "assign_user",
    "bucket_ranges",
    "choose_arm",
    "choose_variation",
    "gb_hash",
    "json_safe",
    "load_experiments",
    "parse_experiment",
    "sample_size",
    "thompson_weights",
    "update_bandit",
]
