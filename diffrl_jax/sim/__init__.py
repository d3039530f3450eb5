"""Simulation protocols: the hold test (MJX and MuJoCo-C), grasp proposals."""
