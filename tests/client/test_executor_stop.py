"""The site executor stops when told to, even while the SuperNode it talks to is gone (it used to retry forever)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from fedhaven.sim.loopback import command_env, free_port


def test_an_idle_executor_stops_on_sigterm_while_its_supernode_is_unreachable(tmp_path):
    (tmp_path / "site.toml").write_text('name = "a"\n[coordinator]\ninsecure = true\n[data]\nsource = "digits"\n')
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32))
    dead = free_port()  # nothing listens there: every call to "the SuperNode" fails and is retried
    proc = subprocess.Popen([sys.executable, "-m", "fedhaven.client.executor", "--config", str(tmp_path / "site.toml"),
                             "--runtime-api-address", f"127.0.0.1:{dead}", "--secret-file", str(secret)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=command_env())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "executor up" in line, line
        time.sleep(1.0)  # inside its retried calls to the missing SuperNode
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0  # before: still retrying 30 s later, until fl-client start killed it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
