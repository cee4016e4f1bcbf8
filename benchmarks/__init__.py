"""Performance checks, run by `make bench`; never timed tests."""
