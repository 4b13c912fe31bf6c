"""The one training loop over a level's members, with a pluggable stepper (one by one, or batched)."""
