"""Interventions on attention heads: head hooks, exact sweeps (fast and naive), screening scores,
attribution patching, head-set effects and generation.
"""
