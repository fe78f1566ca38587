"""A PostgreSQL server and an MLflow tracking server on 127.0.0.1, as a lab runs them, for the tests and benches.

    python -m tests.servers start DIR   # prints the line to export, and the URLs
    python -m tests.servers stop DIR

PostgreSQL: Debian's `postgresql` package (its initdb and pg_ctl), a new cluster in
DIR/postgres on a free port, password authentication over TCP (scram-sha-256) for the
role `vfrac`, and a database `mlflow`. MLflow: `mlflow server` with that database as its
backend store and DIR/artifacts as `--artifacts-destination` (it serves the artifacts),
on another free port. Where this runs as root, PostgreSQL runs as the `postgres` user
(it refuses root). What was started is written to DIR/servers.json, so tests can
restart PostgreSQL or stop and start the MLflow server (`Servers.load(DIR)`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

STATE = "servers.json"
READY, FAILED = "ready", "failed"  # written when `start` has finished, or why it could not
ROLE = "vfrac"
ENV = "VFRAC_TEST_SERVERS"  # the folder of the running servers, read by tests/conftest.py


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's binaries (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).resolve().parent
    raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")


def wait_until(ready, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not start within {timeout:.0f} s")


@dataclass
class Servers:
    folder: str
    password: str
    postgres_port: int
    mlflow_port: int
    mlflow_pid: int = 0

    # -- addresses ------------------------------------------------------------------
    def postgres_url(self, database: str, password: str | None = None) -> str:
        return f"postgresql://{ROLE}:{password or self.password}@127.0.0.1:{self.postgres_port}/{database}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def data(self) -> Path:
        return Path(self.folder) / "postgres"

    # -- PostgreSQL -----------------------------------------------------------------
    def _as_owner(self, command: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run a PostgreSQL program as the cluster's owner (`postgres` where this runs as root)."""
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)

    def _pg_ctl(self, *args: str) -> None:
        self._as_owner([str(postgres_bin() / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60",
                        "-l", str(Path(self.folder) / "postgres.log"), *args])

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement as the superuser over the cluster's own socket."""
        return self._as_owner([str(postgres_bin() / "psql"), "-h", str(Path(self.folder) / "socket"), "-p",
                               str(self.postgres_port), "-U", "postgres", "-d", database, "-Atqc", statement]).stdout

    def start_postgres(self) -> None:
        self._pg_ctl("-o", f"-p {self.postgres_port} -c listen_addresses=127.0.0.1 "
                           f"-c unix_socket_directories={Path(self.folder) / 'socket'}", "start")

    def stop_postgres(self) -> None:
        self._pg_ctl("-m", "fast", "stop")

    def restart_postgres(self) -> None:
        """A fast restart: every open connection is cut, as a server's restart or failover does."""
        self.stop_postgres()
        self.start_postgres()

    def dump(self, database: str) -> str:
        """The database's every table and row, as pg_dump writes them."""
        return self._as_owner([str(postgres_bin() / "pg_dump"), "-h", str(Path(self.folder) / "socket"), "-p",
                               str(self.postgres_port), "-U", "postgres", database]).stdout

    def new_database(self, name: str) -> str:
        """An empty database owned by the role; returns its URL (with the password)."""
        self.sql(f'create database "{name}" owner {ROLE}')
        return self.postgres_url(name)

    # -- MLflow ---------------------------------------------------------------------
    def mlflow_command(self) -> list[str]:
        return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.postgres_url("mlflow"),
                "--artifacts-destination", str(Path(self.folder) / "artifacts"), "--host", "127.0.0.1",
                "--port", str(self.mlflow_port), "--workers", "2"]

    def start_mlflow(self) -> None:
        log = open(Path(self.folder) / "mlflow.log", "a")  # noqa: SIM115 - the server keeps it open
        process = subprocess.Popen(self.mlflow_command(), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=self.folder)
        self.mlflow_pid = process.pid
        self.save()
        wait_until(lambda: urllib.request.urlopen(f"{self.mlflow_url}/health", timeout=2).status == 200,
                   f"mlflow server (log: {Path(self.folder) / 'mlflow.log'})", timeout=120)

    def stop_mlflow(self) -> None:
        """Stop the server and every worker it started (its process group)."""
        if self.mlflow_pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.mlflow_pid, signal.SIGTERM)
                wait_until(lambda: not _alive(self.mlflow_pid), "the mlflow server's stop", timeout=30)
            self.mlflow_pid = 0
            self.save()

    # -- the pair -------------------------------------------------------------------
    def save(self) -> None:
        (Path(self.folder) / STATE).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> Servers:
        return cls(**json.loads((Path(folder) / STATE).read_text()))

    @classmethod
    def when_ready(cls, folder: str | Path, timeout: float = 300) -> Servers:
        """The servers of `python -m tests.servers start DIR` once it has finished (.ci/run starts it in the
        background while the tests start)."""
        folder = Path(folder)
        deadline = time.monotonic() + timeout
        while not (folder / READY).exists():
            if (folder / FAILED).exists() or time.monotonic() > deadline:
                log = folder.with_name(folder.name + ".log")
                raise RuntimeError(f"the test servers in {folder} did not start: "
                                   + ((folder / FAILED).read_text() if (folder / FAILED).exists() else "timed out")
                                   + (f"\n{log.read_text()}" if log.exists() else ""))
            time.sleep(0.5)
        return cls.load(folder)

    def stop(self) -> None:
        self.stop_mlflow()
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop_postgres()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ProcessLookupError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child: reaped now
            return False
    return True


def start(folder: str | Path) -> Servers:
    folder = Path(folder).resolve()
    (folder / "socket").mkdir(parents=True, exist_ok=True)
    servers = Servers(str(folder), secrets.token_urlsafe(18), free_port(), free_port())
    if os.geteuid() == 0:  # the cluster's owner must reach its folder
        for path in (folder, folder / "socket"):
            shutil.chown(path, "postgres", "postgres")
        folder.chmod(0o755)
    password_file = folder / "superuser-password"
    password_file.write_text(secrets.token_urlsafe(18) + "\n")
    if os.geteuid() == 0:
        shutil.chown(password_file, "postgres", "postgres")
    servers._as_owner([str(postgres_bin() / "initdb"), "-D", str(servers.data), "-U", "postgres", "-E", "UTF8",
                       "--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file}"])
    servers.start_postgres()
    servers.save()  # from here `stop` can stop it, whatever fails next
    servers.sql(f"create role {ROLE} login password '{servers.password}'")
    servers.new_database("mlflow")
    servers.save()
    servers.start_mlflow()
    return servers


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("start", "stop"):
        print("usage: python -m tests.servers start|stop DIR", file=sys.stderr)
        return 2
    action, folder = args
    if action == "start":
        try:
            servers = start(folder)
        except BaseException as error:
            (Path(folder) / FAILED).write_text(f"{type(error).__name__}: {error}\n")
            raise
        (Path(folder) / READY).touch()
        print(f"export {ENV}={servers.folder}\n# PostgreSQL: {servers.postgres_url('DATABASE', '***')} "
              f"(password in {Path(servers.folder) / STATE})\n"
              f"# MLflow: {servers.mlflow_url}")
    else:
        Servers.load(folder).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
