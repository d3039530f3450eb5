"""Evaluation: dataset checks, pose sampling, statistics, rendering."""
