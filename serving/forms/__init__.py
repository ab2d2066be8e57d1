"""Forms of the serving pages, one module per page family (as ``serving.views``)."""
