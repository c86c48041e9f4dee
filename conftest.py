"""pytest at the repository root: ``--doctest-modules refquant`` skips the deprecated flat-path
shims (importing one warns by design; tests/test_layout.py checks them)."""

from refquant._deprecated import MOVED

collect_ignore = [old.replace(".", "/") + ".py" for old in MOVED]
