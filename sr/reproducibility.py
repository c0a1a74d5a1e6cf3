"""CPU numerics and threads: the one place that decides how a CPU run computes. Two modes:

- **default** (fast): no numeric pin, the best kernels this CPU has. Threads = the cores this process may use
  (:func:`available_cores`: its CPU affinity and the cgroup v2 CPU quota, which torch's own default ignores), unless
  ``OMP_NUM_THREADS`` is set: then the user's count stays. Results may differ in the last bits between machines
  (measured: up to a few 8-bit levels of an upscale, ``benchmarks/reproducibility.py``).
- **reproducible** (``reproducible=true`` on every command, ``STABLESR_REPRODUCIBLE=1`` in the environment, or
  ``configure_cpu(reproducible=True)`` in Python): the same command gives the same bits on another x86-64 machine
  with AVX2. It pins what changes bits between machines (each pin measured alone by ``benchmarks/reproducibility.py``;
  the README lists its cost and effect):

  - ``ATEN_CPU_CAPABILITY=avx2``: ATen ships its vectorised kernels once per instruction set and takes the best the
    CPU has; AVX-512 kernels add in another order than AVX2 ones.
  - ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN (most convolutions) generates its kernels for the best instruction set up to
    this cap.
  - ``MKL_CBWR=COMPATIBLE``: MKL (matrix products, the other convolutions) picks its code path per CPU unless
    conditional numerical reproducibility fixes one. ``MKL_CBWR=AVX2`` would be cheaper but oneMKL honours branches
    other than ``AUTO`` and ``COMPATIBLE`` on Intel CPUs only and silently falls back to ``AUTO`` elsewhere (on an
    AMD EPYC ``MKL_VERBOSE`` reports ``CNR:AUTO`` for it); ``COMPATIBLE`` (SSE2) is the branch every x86-64 CPU runs.
  - ``OMP_NUM_THREADS = MKL_NUM_THREADS = 2``, ``OMP_DYNAMIC`` and ``MKL_DYNAMIC`` off: parallel loops and MKL split
    sums by thread, so the count decides the order of additions; dynamic adjustment would let the load choose it.
  - ``torch.use_deterministic_algorithms(True)`` on machines without CUDA: the deterministic kernels of the few CPU
    operations that have two. Where CUDA is available it is left to the configs (``trainer.deterministic``).

  The pins win over values already in the environment (a warning names each one replaced): a table is only
  reproducible if a stray ``OMP_NUM_THREADS`` cannot change it. Use it for committed tables, tests and anything
  compared bit for bit; not for upscaling a folder or training on a cluster (2 threads on any machine, and slower
  kernels).

When a mode takes effect (measured with torch 2.14.1, its MKL 2024.2 and oneDNN 3.12): ``ATEN_CPU_CAPABILITY`` is
read at the first tensor operation, and importing diffusers' UNet or VAE modules (hence ``sr.models``,
``sr.pipelines`` ...) already runs one, so entry points call ``configure_cpu(reproducible_requested(sys.argv[1:]))``
before those imports. ``MKL_CBWR``, ``MKL_DYNAMIC`` and ``ONEDNN_MAX_CPU_ISA`` are read at the library's first call;
``OMP_*`` when torch loads OpenMP (``import torch``), after which the count is set with ``torch.set_num_threads``.
The reproducible pins are written to ``os.environ``, so commands this process starts inherit the mode; drivers
start commands with ``subprocess_environment(reproducible=True)``.
"""

import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

from sr.errors import ConfigError

SWITCH_VARIABLE = "STABLESR_REPRODUCIBLE"
SWITCH_KEY = "reproducible"  # the command-line / config key (sr/conf/reproducibility.yaml)
REPRODUCIBLE_THREADS = 2
PINNED_CAPABILITY = "AVX2"  # what torch.backends.cpu.get_cpu_capability() reports once pinned
CGROUP_ROOT = Path("/sys/fs/cgroup")


def reproducible_pins() -> dict[str, str]:
    """The environment variables of the reproducible mode (module docstring)."""
    threads = str(REPRODUCIBLE_THREADS)
    return {
        "ATEN_CPU_CAPABILITY": PINNED_CAPABILITY.lower(),
        "ONEDNN_MAX_CPU_ISA": PINNED_CAPABILITY,
        "MKL_CBWR": "COMPATIBLE",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OMP_DYNAMIC": "FALSE",
        "MKL_DYNAMIC": "FALSE",
    }


def _switch_value(text: str, source: str, true: tuple[str, ...], false: tuple[str, ...]) -> bool:
    if text in true:
        return True
    if text in false:
        return False
    raise ConfigError(f"{source}={text!r}: expected {true[0]} (bit-reproducible CPU numerics) or {false[0]} (fast)")


def reproducible_requested(argv: Sequence[str] = (), environment: Mapping[str, str] = os.environ) -> bool:
    """The mode a command asks for: its ``reproducible=true|false`` argument (Hydra syntax, ``+``/``++`` prefixes
    allowed) if given, else ``STABLESR_REPRODUCIBLE=1|0``, else False. A sweep over both modes is refused: the mode
    is fixed per process."""
    requested = None
    for argument in argv:
        match = re.fullmatch(rf"\+{{0,2}}{SWITCH_KEY}=(.*)", argument)
        if match and match.group(1) != "null":  # null: the environment decides, as in the config
            requested = _switch_value(match.group(1), SWITCH_KEY, ("true", "True"), ("false", "False"))
    if requested is not None:
        return requested
    return _switch_value(environment.get(SWITCH_VARIABLE, "0"), SWITCH_VARIABLE, ("1",), ("0", ""))


def _cgroup_quota_cores(cgroup_root: Path, proc_cgroup: Path) -> float:
    """The tightest cgroup v2 ``cpu.max`` quota (``quota period``: quota / period cores) on the path from this
    process's cgroup up to the root; ``inf`` when none is set or cgroup v2 is not mounted."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return math.inf
    unified = [line[3:] for line in lines if line.startswith("0::")]
    if not unified:
        return math.inf
    cores, folder = math.inf, cgroup_root / unified[0].lstrip("/")
    while True:
        try:
            quota, period = (folder / "cpu.max").read_text().split()
            if quota != "max":
                cores = min(cores, int(quota) / int(period))
        except (OSError, ValueError):
            pass
        if folder == cgroup_root or cgroup_root not in folder.parents:
            return cores
        folder = folder.parent


def available_cores(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int:
    """The cores this process may use: ``min(len(sched_getaffinity), ceil(cgroup v2 quota))``, at least 1."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota_cores(cgroup_root, proc_cgroup)
    return max(1, min(affinity, math.ceil(quota) if quota != math.inf else affinity))


def default_threads(environment: Mapping[str, str] = os.environ) -> int | None:
    """The default mode's thread count: None (leave it) when ``OMP_NUM_THREADS`` is set, else the available cores."""
    return None if environment.get("OMP_NUM_THREADS") else available_cores()


def configure_cpu(reproducible: bool) -> None:
    """Set this process's CPU mode (module docstring). Entry points call it first, before importing anything that
    builds models; in Python call it before the first tensor operation, e.g.
    ``configure_cpu(reproducible=True)`` before ``import sr.pipelines``. Raises ``RuntimeError`` when reproducible
    mode is asked after a tensor operation already chose ATen's kernels for a wider instruction set."""
    if not reproducible:
        os.environ[SWITCH_VARIABLE] = "0"  # commands this process starts run in the same mode
        threads = default_threads()
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        return
    for key, value in reproducible_pins().items():
        if os.environ.get(key, value) != value:
            warnings.warn(f"{key}={os.environ[key]} replaced by {value} (reproducible mode; without "
                          f"{SWITCH_KEY}=true / {SWITCH_VARIABLE}=1 your environment stays)", stacklevel=2)
        os.environ[key] = value
    os.environ[SWITCH_VARIABLE] = "1"
    import torch  # here, after the environment is set: a first import loads OpenMP, which reads OMP_* then

    torch.set_num_threads(REPRODUCIBLE_THREADS)
    if not torch.cuda.is_available():
        torch.use_deterministic_algorithms(True)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        raise RuntimeError(f"ATen's CPU kernels were chosen ({capability}) before configure_cpu(reproducible=True) "
                           "ran: call it before the first tensor operation (before importing diffusers' models)")
    if capability != PINNED_CAPABILITY:
        warnings.warn(f"this CPU runs ATen's {capability} kernels, not {PINNED_CAPABILITY}: its numbers differ from "
                      f"those of {PINNED_CAPABILITY} machines", stacklevel=2)


def reproducible_active() -> bool:
    """Whether this process computes in reproducible mode: every pin in its environment, torch on the pinned thread
    count and not on AVX-512 kernels (what ``scores.json`` records as ``reproducible``)."""
    import torch

    return (all(os.environ.get(key) == value for key, value in reproducible_pins().items())
            and torch.get_num_threads() == REPRODUCIBLE_THREADS
            and not torch.backends.cpu.get_cpu_capability().startswith("AVX512"))


def check_mode(requested: bool | None) -> bool:
    """This process's mode (:func:`reproducible_active`); a ConfigError when a config's ``reproducible`` asks for
    the other one (the Python API composing ``reproducible=true`` without calling :func:`configure_cpu`)."""
    active = reproducible_active()
    if requested is not None and bool(requested) != active:
        raise ConfigError(f"{SWITCH_KEY}={str(bool(requested)).lower()} but this process runs in "
                          f"{'reproducible' if active else 'default'} mode: call sr.reproducibility.configure_cpu("
                          f"reproducible={bool(requested)}) before the first tensor operation")
    return active


def subprocess_environment(reproducible: bool, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to start a command in ``reproducible`` mode with: ``base`` (default ``os.environ``) with the
    switch, and for reproducible mode the pins over it (so that commands which are not entry points get them too).
    Drivers pass it as ``subprocess.run(..., env=subprocess_environment(reproducible=True))``."""
    environment = dict(os.environ if base is None else base)
    environment[SWITCH_VARIABLE] = "1" if reproducible else "0"
    if reproducible:
        environment.update(reproducible_pins())
    return environment
