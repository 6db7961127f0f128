"""The recipes that build the shipped artifacts, with their data loaders.

Nothing at run time imports this package (``tests/test_layout.py`` checks it): the serving
modules (backends, memory, rewards, safety, generation, pipeline, service) hold inference
only. The training scripts (``scripts/train_*.py``), the evaluation suites' cross-validation
and the benchmarks call these recipes.

Each recipe is a frozen config dataclass (its hyper-parameters; the defaults are the shipped
artifact's) plus the function that trains with it; the artifact it writes records
:func:`personalign.training.recipe.recipe_meta` (module, function, config, library versions)
as ``recipe``, which ``tests/test_artifacts.py`` checks.

* :mod:`personalign.training.safety_data` — the safety boundary's training and evaluation sets.
* :mod:`personalign.training.boundary` — the boundary's training sets and classifiers
  (:class:`~personalign.training.boundary.BoundaryConfig`,
  :class:`~personalign.training.boundary.FinetuneConfig`).
* :mod:`personalign.training.finetune` — LoRA fine-tuning of the MiniLM classifiers
  (:class:`~personalign.training.finetune.ClassifierConfig`).
* :mod:`personalign.training.reward_model` — the cross-encoder, embedded and LM-probe
  reward models (``CrossEncoderConfig``, ``EmbeddedConfig``, ``ProbeConfig``).
* :mod:`personalign.training.extractor` — the memory extractor's sentence classifier
  (:class:`~personalign.training.extractor.ExtractorConfig`).
* :mod:`personalign.training.experts` — one DPO-trained LoRA expert per style pole
  (:class:`~personalign.training.experts.ExpertsConfig`), merged into per-user soups by
  :mod:`personalign.generation.soups`.
* :mod:`personalign.training.recipe` — what an artifact records about its recipe.
"""
