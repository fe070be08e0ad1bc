"""Checkpoint selectors, each against the free energy on the same checkpoints (issue 21): a study stage
between ``metrics/`` and ``analysis/``.

```
... → downstream/ → metrics/ → selectors/ → analysis/
```

- label-free rivals that read only the pretraining images (a forward pass): RankMe and α-ReQ (``spectral``);
- the classical Bayesian alternative, the Laplace approximation of the log marginal likelihood of the
  pretraining data around the checkpoint (``laplace``, with ``laplace-torch``), and BIC (``catalog.bic``);
- label-using ceilings that read the labelled downstream data a practitioner would hold (the fine-tuning
  train split): LogME, LEEP, NCE and k-nearest-neighbour accuracy (``transferability``);
- static rankers that read no model, only a run's lr, batch size and momentum (``static``).

``step`` writes one ``selector_<kind>.json`` per checkpoint and selector; ``catalog`` (torch-free) says what
each record holds, what it reads and which direction predicts better transfer. docs/selectors.md has the
definitions, sources, signs and costs.
"""
