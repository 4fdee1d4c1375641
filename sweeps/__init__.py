"""Sweeps: YAML specs of many runs (sweeps.spec), their plan and cost (sweeps.plan), and the local launcher
that trains them in worker processes (sweeps.launcher, sweeps.worker). `scaling sweep` is in sweeps.cli."""
