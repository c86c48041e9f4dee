"""Deprecated: use :mod:`refquant.schemes.casts` (this path goes in refquant 0.3)."""

from refquant._deprecated import reexport

reexport(__name__)
