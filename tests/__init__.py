"""The test suite; its folders mirror the packages (trainables/, search/, benchmarks/), helpers/ is shared."""
