"""Reproductions of published experiments (paper tables)."""
