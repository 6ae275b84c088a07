"""The command line: thin click commands over :mod:`drkit.ops`.  Only this package prints."""
