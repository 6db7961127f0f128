"""The recipes that build the shipped artifacts, with their data loaders.

Nothing at run time imports this package (``tests/test_layout.py`` checks it): the serving
modules (backends, memory, rewards, safety, generation, pipeline, service) hold inference
only. The training scripts (``scripts/train_*.py``), the evaluation suites' cross-validation
and the benchmarks call these recipes.

* :mod:`personalign.training.safety_data` — the safety boundary's training and evaluation sets.
* :mod:`personalign.training.boundary` — the boundary's embedding classifiers (fit, save).
* :mod:`personalign.training.finetune` — LoRA fine-tuning of the MiniLM classifiers.
* :mod:`personalign.training.reward_model` — the cross-encoder, embedded and LM-probe
  reward models.
* :mod:`personalign.training.extractor` — the memory extractor's sentence classifier.
"""
