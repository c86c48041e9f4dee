"""Slow end-to-end check of examples/qat_llama_mlp.py on the bundled SmolLM2-135M: 3-bit
QAT of one block's MLP against RTN and GPTQ on held-out activations (evaluation articles).

Only comparisons that were measured when the test was written are asserted (see the example
and the report): QAT lowers the held-out output error well below its RTN-MSE starting point,
GPTQ beats RTN min-max, and fine-tuning GPTQ's result with QAT improves on GPTQ.
"""

import importlib.util
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_example():
    path = ROOT / "examples" / "qat_llama_mlp.py"
    spec = importlib.util.spec_from_file_location("refquant_example_qat_llama_mlp", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_qat_on_a_smollm2_mlp_against_rtn_and_gptq():
    from refquant.models import resources

    try:
        resources.bundled_model_path()
        resources.text_path()
    except resources.MissingDataPackage as e:
        pytest.skip(f"bundled model/text not installed: {e}")
    ex = load_example()
    r = ex.run(layer=10, n_cal=2048, n_eval=2048, steps=100)
    ev = {k: v["eval"] for k, v in r.items()}
    assert ev["QAT (from RTN MSE)"] < 0.8 * ev["RTN MSE"], ev
    assert ev["GPTQ"] < ev["RTN min-max"], ev
    assert ev["GPTQ + QAT"] < ev["GPTQ"], ev
    assert ev["float"] == 0.0
