"""Lightning callbacks, one module per callback (their configs: conf/callbacks/)."""
