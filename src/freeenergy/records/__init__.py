"""The study's bookkeeping, in one room: what is on disk, and when a stored result can be trusted.

- ``io``: atomic writes and checked reads of every file the study writes (JSON records, text, figures,
  tensor files), and file hashing;
- ``kinds``: what a record of each step must hold to count as finished (finite or flagged numbers,
  content that agrees with its settings) and the verdict on a stored record;
- ``checkpoints``: the checkpoints of an experiment (``runs/<experiment>/<run_id>/epoch_XXX/``) and the
  records beside them;
- ``identity``: one identity per setting (the canonical form of a config, its digest, run ids);
- ``provenance``: before a step computes, which records are reused, recomputed or refused, and why.

Torch-free: the analysis and the plan read records without importing torch.
"""
