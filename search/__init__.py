"""Ray Tune + Train + Optuna + MLflow layer of the CtCAE platform (entry point: search/run.py)."""
