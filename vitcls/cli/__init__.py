"""Console scripts, one module each: `vitcls-<name>` is `python -m vitcls.cli.<name>` (`main(argv)`)."""
