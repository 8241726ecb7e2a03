"""The life of one application instance beyond a request: the graceful drain on shutdown."""
