"""refquant as the oracle in other projects' test suites.

Three tools, public and stable (see the README's "Testing API" section):

* Hypothesis strategies: :func:`quant_specs` (every bit width, symmetry, granularity and a
  group size that divides the row), :func:`stress_tensors` (heavy tails, outlier channels,
  constant rows, subnormals, values piled at the clip edges) and :func:`tie_tensors` (tensors
  whose values sit *exactly* on rounding ties under min-max calibration).
* Assertions: :func:`assert_quantized_close` compares another implementation's codes or
  dequantized values with refquant's and tolerates only a stated number of off-by-one codes at
  verified rounding ties; :func:`assert_ggml_equal` compares GGUF block bytes and reports the
  worst block.
* Golden vectors: :func:`reference_case` / :func:`reference_cases` load the versioned ``.npz``
  files in ``refquant/testing/golden/`` (inputs, spec, codes, scales, zero points, dequantized values),
  computed by an independent scalar oracle (``scripts/make_golden.py``; see
  ``refquant/testing/golden/PROVENANCE.md``).

Hypothesis is imported only when a strategy is built, so the assertions and golden vectors
work without it.
"""

from refquant.testing.core import *  # noqa: F401,F403
from refquant.testing.core import __all__  # noqa: F401
