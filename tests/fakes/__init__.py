"""Test doubles for the tests, the demos and the benchmarks; not part of the devicetrust package."""
