"""Phase 07: small models trained from scratch on synthetic 8x8 grid tasks (primitives, compositions, models,
sparse autoencoder, losses, analysis): the shared-subspace experiment (issue 16)."""
