"""Deprecated: use :mod:`refquant.integer.w8a8` (this path goes in refquant 0.3)."""

from refquant._deprecated import reexport

reexport(__name__)
