"""Forms of the training pages, one module per page family (as ``training.views``)."""
