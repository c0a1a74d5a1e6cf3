"""Per-run result files and sweep reports, one job per module.

Run layout (written by eval.py through :func:`sr.commands.report.runs.write_run_scores`)::

    <run_dir>/scores.json                   see sr.commands.report.runs.SCORES_KEYS
    <run_dir>/images/<name>.png             the SR outputs, one per scored image
    <run_dir>/baselines/<baseline>/<name>.png   the no-diffusion baselines' images (bicubic, lr_latent)

``scores.json`` holds ``settings`` (method, w, tile.overlap, num_inference_steps, model, lr_dir, hr_dir, ...), ``per_image``
``{name: {metric: value}}``, ``aggregate`` ``{metric: {"mean", "std", "n"} | "n/a (...)"}``, ``seconds_per_image``,
``status`` ("ok" | "failed"), ``error``, ``conventions`` (``MetricSuite.conventions()``), ``config`` (the resolved
Hydra config), ``git_revision``, ``git_modified``, ``command``, ``fingerprints`` and ``baselines`` (each baseline's
settings, per-image and aggregate scores and fingerprint). A run dir without ``scores.json`` (or whose images were
re-sampled after scoring) is an unfinished run: reports list it and ``python -m sr.commands.report`` exits 1.

A report shows each distinct baseline once beside the runs, carries no machine-specific paths or timings (unless
asked), and is byte-identical when rebuilt from the same runs.

Modules:

- :mod:`sr.commands.report.runs`: write one run's ``scores.json``; read and collect every run below a sweep folder.
- :mod:`sr.commands.report.table`: the sweep table (``table.md`` for people, ``table.csv`` for machines).
- :mod:`sr.commands.report.portable`: paths, commands and messages as a report shows them (no absolute paths).
- :mod:`sr.commands.report.plots`: each metric against ``w`` / ``tile.overlap`` as PNG, bicubic as a reference line.
- :mod:`sr.commands.report.strips`: LR | SR(w=...) | bicubic | HR comparison strips as PNG.
- :mod:`sr.commands.report.html`: ``index.html``, the report as one offline page: sortable table, comparison sliders,
plots.
- :mod:`sr.commands.report.build`: writes all of the above into a report folder.
- :mod:`sr.commands.report.wandb_log`: logs a built report to W&B.
- :mod:`sr.commands.report.cli`: the ``python -m sr.commands.report`` command line.
"""
