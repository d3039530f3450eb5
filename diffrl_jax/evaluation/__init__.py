"""Evaluation: grasp geometry, dataset checks."""
