"""Benchmarks behind `mt3ds bench NAME`: one module per stage, each returning a dict of figures and measuring the
floor it should be compared with in the same run. Figures go into BENCHMARKS.md."""
