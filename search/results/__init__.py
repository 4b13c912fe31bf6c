"""Tickets read back out of MLflow: best tickets and Pareto fronts, export, transfer, comparison, plots."""
