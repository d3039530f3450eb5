"""Grasp data: rotation conventions, the canonical grasp array, file I/O."""
