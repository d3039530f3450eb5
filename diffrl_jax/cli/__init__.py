"""The `diffrl` command line."""
