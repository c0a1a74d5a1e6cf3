"""CPU numerics pinning: the one place that decides which kernels, instruction sets and thread counts a CPU run
uses, so that the same command gives the same bits on another x86-64 machine with AVX2.

What differs between machines, and the pin (``benchmarks/reproducibility.py`` measures what each one changes):

- ``ATEN_CPU_CAPABILITY=avx2``: ATen ships its vectorised kernels once per instruction set and takes the best one
  the CPU has; AVX-512 kernels add in another order than AVX2 ones.
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN (most convolutions) generates its kernels for the best instruction set up to
  this cap.
- ``MKL_CBWR=COMPATIBLE``: MKL (matrix products, the rest of the convolutions) picks its code path per CPU unless
  conditional numerical reproducibility fixes one. ``MKL_CBWR=AVX2`` would not do: oneMKL honours branches other
  than ``AUTO`` and ``COMPATIBLE`` on Intel CPUs only and silently falls back to ``AUTO`` elsewhere (on an AMD EPYC
  ``MKL_VERBOSE`` reports ``CNR:AUTO`` for it); ``COMPATIBLE`` (SSE2) is the branch every x86-64 CPU runs.
- ``OMP_NUM_THREADS = MKL_NUM_THREADS =`` a fixed count (``$STABLESR_CPU_THREADS``, default 2), ``OMP_DYNAMIC``
  and ``MKL_DYNAMIC`` off: parallel loops and MKL split sums by thread, so the count decides the order of additions;
  dynamic adjustment would let the machine's load or core count choose it.
- ``torch.use_deterministic_algorithms(True)`` on machines without CUDA: the deterministic kernels of the few CPU
  operations that have two (``index_put``/``put_`` with accumulation, ``index_copy``, the gradient of indexing) and
  ``torch.empty`` filled with NaN instead of whatever the memory held. Where CUDA is available it is left to the
  configs (``trainer.deterministic``): the mode raises on CUDA operations without a deterministic kernel.

**The pins win** over values already in the environment (a warning names each one replaced): a recipe is only
reproducible if a stray ``OMP_NUM_THREADS`` in a shell profile cannot change it. ``STABLESR_CPU_THREADS=N`` chooses
another fixed thread count (its numbers then differ from the 2-thread ones); ``STABLESR_PIN_CPU=0`` opts out
entirely: the environment and torch are left as they are.

When the pins take effect (measured with torch 2.14.1, its MKL 2024.2 and oneDNN 3.12):

- ``ATEN_CPU_CAPABILITY`` is read at the first tensor operation. Importing diffusers' UNet or VAE modules (hence
  ``sr.models``, ``sr.pipelines``, ``sr.evaluation`` ...) already runs one, so entry points call
  :func:`pin_cpu_numerics` before those imports; ``import torch`` alone does not fix it.
- ``MKL_CBWR``, ``MKL_DYNAMIC`` and ``ONEDNN_MAX_CPU_ISA`` are read at the library's first call (``MKL_VERBOSE`` /
  ``ONEDNN_VERBOSE`` report the branch, ``Dyn:`` and the ISA when set in-process after ``import torch``).
- ``OMP_*`` are read when torch loads OpenMP (``import torch``) and ``MKL_NUM_THREADS`` is replaced by torch's own
  count then, so in a process that already imported torch the count is set with ``torch.set_num_threads``, which
  sets OpenMP's and MKL's. ``OMP_DYNAMIC`` cannot be changed after ``import torch``: drivers start their commands
  with :func:`subprocess_environment`, and ``python -m sr.reproducibility <command>`` runs any command under it.

On a CPU without AVX2 (or not x86-64) the pins cannot select the same kernels: :func:`pin_cpu_numerics` warns.
Measured on one machine only (AMD EPYC, AVX2, no AVX-512), not yet across machines. Not pinned by any variable:
oneDNN sizes its blocking from the CPU's caches (whether that changes the order of additions is unmeasured); turning
oneDNN off would route convolutions through MKL's reproducible branch, at 2.6x the upscale time on CPU.
"""

import os
import sys
import warnings
from collections.abc import Mapping

from sr.errors import ConfigError

PIN_SWITCH = "STABLESR_PIN_CPU"
THREADS_VARIABLE = "STABLESR_CPU_THREADS"
DEFAULT_THREADS = 2
PINNED_CAPABILITY = "AVX2"  # what torch.backends.cpu.get_cpu_capability() reports once pinned


def pinned_values(threads: int = DEFAULT_THREADS) -> dict[str, str]:
    """The pinned environment variables (module docstring) for ``threads`` threads."""
    return {
        "ATEN_CPU_CAPABILITY": PINNED_CAPABILITY.lower(),
        "ONEDNN_MAX_CPU_ISA": PINNED_CAPABILITY,
        "MKL_CBWR": "COMPATIBLE",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OMP_DYNAMIC": "FALSE",
        "MKL_DYNAMIC": "FALSE",
        # not numerics: idle OpenMP threads sleep instead of spinning, so a busy machine (another job on the same
        # cores) slows a 2-thread run ~1.5x instead of ~5x
        "OMP_WAIT_POLICY": "PASSIVE",
    }


def pinning_enabled(environment: Mapping[str, str] = os.environ) -> bool:
    """False when ``environment`` opts out (``STABLESR_PIN_CPU=0``); unset or ``1``: pinned."""
    value = environment.get(PIN_SWITCH, "1")
    if value not in ("0", "1"):
        raise ConfigError(f"{PIN_SWITCH}={value!r}: expected 1 (pin CPU numerics, the default) or 0 (leave them)")
    return value == "1"


def cpu_threads(environment: Mapping[str, str] = os.environ) -> int:
    """The pinned thread count: ``STABLESR_CPU_THREADS`` if set, else 2."""
    value = environment.get(THREADS_VARIABLE, str(DEFAULT_THREADS))
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{THREADS_VARIABLE}={value!r}: expected a whole number of threads >= 1")
    return int(value)


def subprocess_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to start a command with: ``base`` (default ``os.environ``) with the pins over it, or ``base``
    unchanged when it opts out. Drivers pass it as ``subprocess.run(..., env=subprocess_environment())``."""
    environment = dict(os.environ if base is None else base)
    if pinning_enabled(environment):
        environment.update(pinned_values(cpu_threads(environment)))
    return environment


def pin_cpu_numerics() -> None:
    """Pin this process (module docstring); entry points call it first, before importing anything that builds
    models. A no-op under ``STABLESR_PIN_CPU=0``. Raises ``RuntimeError`` when a tensor operation already chose
    ATen's kernels for a wider instruction set than the pinned one."""
    if not pinning_enabled():
        return
    threads = cpu_threads()
    for key, value in pinned_values(threads).items():
        if os.environ.get(key, value) != value:
            warnings.warn(f"{key}={os.environ[key]} replaced by the pinned {value} (the recipe's CPU numerics; "
                          f"{THREADS_VARIABLE} sets the thread count, {PIN_SWITCH}=0 keeps your environment)",
                          stacklevel=2)
        os.environ[key] = value
    import torch  # here, after the environment is set: a first import loads OpenMP, which reads OMP_* then

    torch.set_num_threads(threads)
    if not torch.cuda.is_available():
        torch.use_deterministic_algorithms(True)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        raise RuntimeError(f"ATen's CPU kernels were chosen ({capability}) before pin_cpu_numerics() ran: call it "
                           "before the first tensor operation (before importing diffusers' models)")
    if capability != PINNED_CAPABILITY:
        warnings.warn(f"this CPU runs ATen's {capability} kernels, not {PINNED_CAPABILITY}: its numbers differ from "
                      f"those of {PINNED_CAPABILITY} machines", stacklevel=2)


def main(argv: list[str]) -> None:
    """``python -m sr.reproducibility <command> [args]``: run the command under :func:`subprocess_environment`
    (``make demo`` does; ``python -m sr.reproducibility env`` shows the environment)."""
    if not argv:
        sys.exit("usage: python -m sr.reproducibility <command> [args]")
    try:
        environment = subprocess_environment()
    except ConfigError as error:
        sys.exit(f"sr.reproducibility: error: {error}")
    os.execvpe(argv[0], argv, environment)


if __name__ == "__main__":
    main(sys.argv[1:])
