"""Plots and reports of a run."""
