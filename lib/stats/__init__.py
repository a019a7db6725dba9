"""Statistics shared by every phase: bootstrap intervals, closed-form intervals, permutation p-values.
"""
