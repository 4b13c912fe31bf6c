"""RL policies on gymnasium environments: environments, the task, the actor-critic wrapper, config checks."""
