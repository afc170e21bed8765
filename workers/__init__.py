"""Deployable consumers: ``python -m workers.<name>``."""
