"""Ray Tune + Train + Optuna + MLflow layer of the CtCAE platform (entry point: search/run.py).

How a study flows through it and where each contract lives: docs/architecture.md.
"""
