"""Start `bge-export serve` as a user does: a subprocess on a free loopback port, read its address from its log."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LISTENING = re.compile(r"listening on (http://[\d.]+:\d+)")


class LiveServer:
    def __init__(self, bundles, *args: str, names=(), timeout: float = 180, stop_timeout: float = 60):
        exe = Path(sys.executable).with_name("bge-export")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "bge_export.cli"]
        cmd += ["serve", *map(str, bundles), "--port", "0"]
        for name in names:
            cmd += ["--name", name]
        cmd += list(args)
        self.log = tempfile.NamedTemporaryFile("w+", prefix="bge-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ})
        self.url, self.stop_timeout = None, stop_timeout
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.text()
            found = LISTENING.search(text)
            if found and "Application startup complete" in text:
                self.url = found.group(1)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{text}")
            time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError(f"server did not start in {timeout} s:\n{self.text()}")

    def __enter__(self) -> "LiveServer":
        return self

    def __exit__(self, *exc) -> None:
        """SIGTERM and wait: a clean exit (0) is part of every test that uses it as ``with LiveServer(...)``."""
        rc = self.stop(self.stop_timeout)
        if exc[0] is None:
            assert rc == 0, self.text()[-3000:]

    def text(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0
