"""Experiments: definitions, deterministic assignment, bandit allocation and result statistics."""
