"""Job payload types shared by publishers and workers (neither imports the other)."""
