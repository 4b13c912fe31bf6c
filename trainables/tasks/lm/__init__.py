"""Language modelling on the `pydoc` corpus: the corpus, the task, and the family's own config checks."""
