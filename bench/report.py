"""The benchmark's table: every figure, what it is compared with, and whether its target holds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    figure: str
    value: str
    compared: str = ""
    target: str = ""
    holds: bool | None = None

    def cells(self) -> list[str]:
        """The row's cells."""
        verdict = "" if self.holds is None else ("yes" if self.holds else "**no**")
        return [self.figure, self.value, self.compared, self.target, verdict]


def rate(per_s: float) -> str:
    """A throughput, rounded for reading."""
    return f"{per_s:,.0f}/s"


def ratio_row(figure: str, value: float, floor_name: str, floor: float, target: float) -> Row:
    """A throughput checked as a share of a floor figure from the same run."""
    share = value / floor
    return Row(
        figure,
        rate(value),
        f"{share:.0%} of {floor_name} ({rate(floor)})",
        f">= {target:.0%}",
        share >= target,
    )


def render(rows: list[Row]) -> str:
    """The rows as a Markdown table."""
    lines = ["| figure | value | compared with (same run) | target | holds |", "| --- " * 5 + "|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)
