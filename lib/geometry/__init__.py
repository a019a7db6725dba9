"""Geometry of activations: emotion directions and subspaces, linear probes, CKA, Procrustes.
"""
