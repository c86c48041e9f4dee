"""One weight matrix at a time, arrays in, a result dataclass out: GPTQ (Frantar et al. 2023)
and the per-layer pieces of AWQ (Lin et al. 2024): scale search, folding, clipping.
"""
