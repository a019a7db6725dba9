"""Geometry of activations, one topic per module: ``rows`` (labelled finite rows), ``linalg`` (shared array
helpers), ``directions`` (emotion directions), ``subspaces`` (emotion subspaces, principal angles, stability),
``folds`` (leakage-safe CV folds), ``probes`` (linear probes), ``grams`` (centred Gram matrices), ``cka``
(CKA, permutation tests, layer matching), ``procrustes`` (orthogonal Procrustes).
"""
