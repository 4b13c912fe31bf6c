"""A sweep described: the sweep file, its search space, the objectives registry, where its records go."""
