"""Deprecated: use :mod:`refquant.pipeline.recipes` (this path goes in refquant 0.3)."""

from refquant._deprecated import reexport

reexport(__name__)
