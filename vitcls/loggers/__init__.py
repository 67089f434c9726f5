"""Lightning loggers with vitcls specifics, one module per logger (their configs: conf/logger/)."""
