"""Package data of ``personalign eval``: the scripted cases the suites ship with (read with
:mod:`importlib.resources`, so an installed wheel needs no source tree)."""
