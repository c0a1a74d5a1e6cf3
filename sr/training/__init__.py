"""LightningModules of the training stages: ``Stage1Module`` (time-aware encoder + SFT, ``stage1.py``), ``CFWModule``
(stage 2, ``stage2.py``), ``PriorModule`` (the tiny prior, ``prior.py``), the shared autoencoder + GAN loss
(``losses.py``), callbacks and loggers. The command that fits them is ``sr.commands.train``."""
