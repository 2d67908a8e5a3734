"""The learning loop (issue 6): fine-tune the student from a pathologist's corrections.

- :mod:`~engine.finetune.registry` — a project's model versions (atomic publish, activate, rollback,
  import / export of safetensors);
- :mod:`~engine.finetune.data` — patches from correction ROIs (partial labels), unlabelled tissue
  patches, held-out ROIs by region;
- :mod:`~engine.finetune.losses`, :mod:`~engine.finetune.objective` — partial-label supervision and
  CoCo distillation built on ``engine.distill``;
- :mod:`~engine.finetune.loop` — training steps (AMP, out-of-memory back-off) and held-out scores;
- :mod:`~engine.finetune.round` — one round, end to end; :mod:`~engine.finetune.job` — the round
  as a subprocess and its JSON events; :mod:`~engine.finetune.commands` — the CLI.

Nothing is imported here: the registry and the events need no torch.
"""
