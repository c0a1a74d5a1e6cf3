"""Test-session environment: offline, quiet, and nothing written outside temporary folders."""

import logging
import os
import tempfile

_SESSION_TMP = tempfile.mkdtemp(prefix="stablesr-tests-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_DIR"] = _SESSION_TMP
os.environ["WANDB_SILENT"] = "true"
os.environ["TORCH_HOME"] = os.path.join(_SESSION_TMP, "torch_home")
os.environ["HF_HOME"] = os.path.join(_SESSION_TMP, "hf_home")
os.environ["HYDRA_FULL_ERROR"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a busy machine slows spinning OpenMP threads ~5x
# Reproducible CPU mode (sr/reproducibility.py), in this process before the first tensor operation and in every
# command a test starts: the tests compare against committed numbers.
os.environ["STABLESR_REPRODUCIBLE"] = "1"

from sr.reproducibility import configure_cpu  # noqa: E402

configure_cpu(reproducible=True)

# Lightning gives its loggers a StreamHandler on the sys.stderr of its first import: imported here, that is the
# session's stream, not one test's capsys/capfd stream, closed after that test ("--- Logging error ---" later on).
import lightning  # noqa: E402, F401
import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    """Tests compose model presets with Hydra directly: their ``sampling`` blocks need the settings' schema."""
    from sr.sampling.settings import register_configs

    register_configs()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _logging_restored():
    """Every logger as before the test. An in-process Hydra run (``eval.main()`` in a test) configures logging with
    handlers on that test's captured stdout; left in place, a later test's log calls write to a closed file."""
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    saved = {logger: (list(logger.handlers), logger.level, logger.disabled, logger.propagate) for logger in loggers}
    yield
    for logger in [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]:
        handlers, level, disabled, propagate = saved.get(logger, ([], logging.NOTSET, False, True))
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.disabled, logger.propagate = disabled, propagate


@pytest.fixture(scope="session")
def tiny_pipe():
    """The `tiny` preset's pipeline (model.seed=11) with perturbed CFW weights marked trained, so `w` matters and the
    untrained-CFW warning does not fire; progress bars off. Tests that change its state restore it."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        pipeline = instantiate(compose(config_name="model/tiny", overrides=["model.seed=11"]).model)
    with torch.no_grad():
        for parameter in pipeline.cfw.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)) * 0.02)
    pipeline.register_to_config(cfw_trained=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
