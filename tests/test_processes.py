"""A chain driver that is sent a signal on its own (kill <pid>, a closed terminal) ends its running step first:
no orphaned train.py keeps writing into a run folder (sr/utils/processes.py)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The step: records its pid, then waits; a signal makes it write which one it got and exit as a killed train.py does.
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    folder = Path(sys.argv[1])
    def stop(signum, frame):
        (folder / "child_signal").write_text(signal.Signals(signum).name)
        sys.exit(128 + signum)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, stop)
    (folder / "child_pid").write_text(str(os.getpid()))
    time.sleep(120)
""")
# The driver: the recipe's chain runner with that one step.
DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sr.commands.recipe import Step, run_chain
    folder = Path(sys.argv[1])
    run_chain([Step("wait", folder / "run", [folder / "run" / "never"], [sys.executable, str(folder / "child.py"),
                                                                          str(folder)])], set(), "test")
""")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signalled_driver_ends_its_step_before_it_exits(tmp_path, signum):
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "driver.py").write_text(DRIVER)
    # its own session: no terminal delivers anything to the child, only the driver is signalled
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(tmp_path)], cwd=ROOT,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "child_pid").exists():
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
        time.sleep(0.05)
    child_pid = int((tmp_path / "child_pid").read_text())

    try:
        driver.send_signal(signum)
        _, stderr = driver.communicate(timeout=60)
    finally:
        if pid_alive(child_pid):  # the orphan this test is about: never left behind
            os.kill(child_pid, signal.SIGKILL)
    assert (tmp_path / "child_signal").read_text() == signal.Signals(signum).name
    assert not pid_alive(child_pid)
    assert driver.returncode == 1
    assert stderr.strip().endswith(f"[test] wait failed (exit code {128 + signum}); logs in {tmp_path / 'run'}")
