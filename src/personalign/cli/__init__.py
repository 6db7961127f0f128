"""The ``personalign`` command line: one small module per command group."""
