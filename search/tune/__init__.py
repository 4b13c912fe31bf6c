"""Running a sweep on Ray Tune: tuner, Optuna searcher and samplers, runner, recovery and reconciliation."""
