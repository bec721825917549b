"""The command line: one module per command group, printing and exit codes."""
