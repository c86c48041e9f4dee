"""refquant as the oracle in other projects' test suites.

Three tools, public and stable (see the README's "Testing API" section):

* Hypothesis strategies (:mod:`refquant.testing.strategies`): :func:`quant_specs` (every bit
  width, symmetry, granularity and a group size that divides the row), :func:`stress_tensors`
  and :func:`specs_and_tensors`, drawing the plain generators of
  :mod:`refquant.testing.tensors`: :func:`stress_tensor` (heavy tails, outlier channels,
  constant rows, subnormals, values piled at the clip edges) and :func:`tie_tensor` (tensors
  whose values sit *exactly* on rounding ties under min-max calibration; strategy
  :func:`tie_tensors`).
* Assertions (:mod:`refquant.testing.assertions`): :func:`assert_quantized_close` compares
  another implementation's codes or dequantized values with refquant's and tolerates only a
  stated number of off-by-one codes at verified rounding ties; :func:`assert_ggml_equal`
  compares GGUF block bytes and reports the worst block.
* Golden vectors (:mod:`refquant.testing.golden`): :func:`reference_case` /
  :func:`reference_cases` load the versioned ``.npz`` files in ``refquant/testing/golden/``
  (inputs, spec, codes, scales, zero points, dequantized values), computed by an independent
  scalar oracle (``scripts/make_golden.py``; see ``refquant/testing/golden/PROVENANCE.md``).

Hypothesis is imported only when a strategy is built, so the assertions and golden vectors
work without it. The names below are the stable API; the submodules are where they live.
"""

from refquant.testing.assertions import assert_ggml_equal, assert_quantized_close
from refquant.testing.golden import (GOLDEN_VERSION, ReferenceCase, load_case_file,
                                     reference_case, reference_cases)
from refquant.testing.strategies import quant_specs, specs_and_tensors, stress_tensors, tie_tensors
from refquant.testing.tensors import STRESS_KINDS, stress_tensor, tie_tensor

__all__ = ["STRESS_KINDS", "GOLDEN_VERSION", "stress_tensor", "tie_tensor", "quant_specs",
           "stress_tensors", "tie_tensors", "specs_and_tensors", "assert_quantized_close",
           "assert_ggml_equal", "ReferenceCase", "reference_case", "reference_cases",
           "load_case_file"]
