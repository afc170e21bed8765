"""Chaos-test support: the history checker and, later, the fault-injection harness."""
