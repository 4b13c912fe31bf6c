"""Tests of the science engine."""
