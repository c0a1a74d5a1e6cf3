"""The commands: what the entry points (``upscale.py``, ``eval.py``, ``train.py``) and ``python -m sr.commands.<x>``
run, built on the library (``sr.pipelines``, ``sr.models``, ``sr.sampling``, ``sr.ops``, ``sr.data``, ``sr.training``,
``sr.metrics``), which imports nothing from here (``tests/test_imports.py``).

- ``upscale_folder`` (``upscale.py``) and its memory guard ``memory``; ``app``, the web demo on the same path;
- ``evaluation`` (``eval.py``), its cache ``fingerprint``, and ``report`` (``python -m sr.commands.report``);
- ``train`` (``train.py``) with ``tracking`` (W&B run identity); ``cfw_generate`` (stage-2 data), ``preview``
  (degradation grids), ``testset`` (fixed LR/HR test sets);
- ``recipe`` (the released tiny model's training chain), ``convert`` (the released checkpoints to pipeline folders);
- ``config`` (the Hydra config tree and resolvers) and ``launch`` (SLURM job sizes and the ranks' shared run dir;
  ``hydra_plugins.stablesr_launcher`` is Hydra's hook into it).
"""
