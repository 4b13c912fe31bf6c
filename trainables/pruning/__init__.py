"""Turning scores into masks: masks, scorers, IMP level arithmetic, controls, Early-Bird, ticket transfer."""
