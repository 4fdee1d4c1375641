"""Scaling-law analysis: read runs back, fit the laws, compare with published laws, answer questions.

Importing this package never imports JAX: every module here works with numpy and scipy, so analysis
runs beside a training process (or on a machine without accelerators) without initialising a backend.
"""
