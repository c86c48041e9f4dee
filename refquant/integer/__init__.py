"""Integer-only execution after Jacob et al. (CVPR 2018): fixed-point requantization, integer
linears and MLPs, and the W8A8 linear.
"""
