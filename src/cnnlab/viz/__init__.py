"""Figures as pure functions of saved data: each reads arrays or a run's files and writes a PNG."""
