"""Problems the training loop learns: the `Task` protocol, the task-family registry, one folder per family."""
