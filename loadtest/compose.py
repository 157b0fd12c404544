"""Distributed locust through docker-compose.yml's `loadtest` profile: a headless master
(`docker compose run` of the locust-master service, under its service name so the workers find
it) and N locust-worker containers, against servers running in the same compose project, which
they reach by service name. Each worker loads the golden samples from the export root mounted
at /models; the master merges the workers' exact histograms (loadtest/locustfile.py) and writes
the step's files into a folder mounted from the run folder."""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import IO

from deploybench.errors import DeploybenchError
from deploybench.loadtest.process import LocustRun
from deploybench.serving import manager
from deploybench.settings import REPO_ROOT

MASTER, WORKER = "locust-master", "locust-worker"
RESULTS, MODELS = "/results", "/models"  # where the containers see the step's files, models
LOCUSTFILE = "/opt/deploybench/loadtest/locustfile.py"  # docker/locust/Dockerfile installs it
MASTER_START_S = 60.0


class ComposeLocust:
    def __init__(self, run: LocustRun) -> None:
        self.run = run
        self.cwd = REPO_ROOT
        # the containers' locust user writes here: a folder of this step's own
        self.folder = run.prefix.parent / f"{run.prefix.name}.compose"

    def master_invocation(self) -> tuple[list[str], dict[str, str]]:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.folder.chmod(0o777)
        prefix = f"{RESULTS}/{self.run.prefix.name}"
        return manager.compose_invocation(
            str(self.run.export_root), "--profile", "loadtest", "run", "--rm", "-T",
            "--use-aliases", "--no-deps", "-v", f"{self.folder}:{RESULTS}", MASTER,
            "-f", LOCUSTFILE, "--master", "--expect-workers", str(self.run.workers),
            "--expect-workers-max-wait", f"{MASTER_START_S:g}",
            # the servers' addresses are the services' environment (docker-compose.yml)
            *self.run.arguments(prefix, MODELS, addresses=False), self.run.user_class)

    def start_workers(self, master: subprocess.Popen, log: IO[bytes]) -> None:
        """Once the master's container runs (its name resolves for the workers), the workers."""
        deadline = time.monotonic() + MASTER_START_S
        while not manager.compose_containers(MASTER):
            if master.poll() is not None or time.monotonic() > deadline:
                return  # the master's own log says why; its missing summary fails the step
            time.sleep(0.5)
        self._compose(log, "--profile", "loadtest", "up", "-d", "--no-deps", "--scale",
                      f"{WORKER}={self.run.workers}", WORKER)

    def finish(self, log: IO[bytes]) -> None:
        """Remove the master's and workers' containers; move the step's files to their place."""
        for service in (MASTER, WORKER):
            for container in manager.compose_containers(service, all_states=True):
                container.remove(force=True)
        for path in self.folder.iterdir():
            path.replace(self.run.prefix.parent / path.name)
        self.folder.rmdir()

    def _compose(self, log: IO[bytes], *args: str) -> None:
        command, env = manager.compose_invocation(str(self.run.export_root), *args)
        log.flush()
        result = subprocess.run(command, env=env, cwd=self.cwd, stdout=log,
                                stderr=subprocess.STDOUT)
        if result.returncode != 0:
            raise DeploybenchError(f"docker compose {' '.join(args[-4:])} failed "
                                   f"({result.returncode}); see {log.name}")
