"""Contrastive complex-valued autoencoders (CAE, CAE++, CtCAE) for unsupervised object discovery.

The library: model, contrastive loss, metrics, datasets and the training loop. It never imports
Ray, MLflow or Optuna; the search layer (``search/``) drives it through ``train.fit``'s callback.
The layers and contracts: docs/architecture.md; the exact model, loss and metrics: docs/model.md.
"""
__version__ = "0.1.0"
