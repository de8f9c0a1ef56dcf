"""Contrastive complex-valued autoencoders (CAE, CAE++, CtCAE) for unsupervised object discovery.

The library: model, contrastive loss, metrics, datasets and the training loop. It never imports
Ray, MLflow or Optuna; the search layer (``search/``) drives it through ``train.fit``'s callback.
"""
__version__ = "0.1.0"
