"""Steering the residual stream: hooks that edit block outputs during forward passes and generation."""
