"""Tests of the service: sweep files, Ray Tune sweeps, MLflow tracking, queries, faults."""
