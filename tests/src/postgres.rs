//! A throwaway Postgres cluster for tests: [`PostgresCluster::start`] makes a fresh cluster in
//! a temporary directory, serves it on a free loopback port, and stopping or dropping it
//! stops the server and deletes everything.
//!
//! Why a harness of its own instead of the machine's cluster:
//!
//! - One cluster per test: tests share no databases, roles or settings, run in parallel, and
//!   leave nothing behind. Debian's system cluster (port 5432, if the package started one) is
//!   never used.
//! - `initdb` refuses to run as root, and the test machines run as root: then the directory is
//!   handed to the `postgres` user (which Debian's package creates) and `initdb` and `pg_ctl`
//!   run through `runuser -u postgres --`. As any other user they run directly.
//! - Debian keeps the server binaries off `PATH` (in `/usr/lib/postgresql/<version>/bin`;
//!   `/usr/bin` holds only client wrappers): the highest version there is used, else the
//!   directory on `PATH` that has `initdb`.
//!
//! Postgres comes from `scripts/bootstrap.sh` (Debian's `postgresql` package). Where it cannot
//! be installed, `TALLY_NO_POSTGRES=1` skips the Postgres tests ([`postgres_wanted`]); without
//! it, a missing Postgres fails the test with a message saying what to do.
//!
//! Clients connect over TCP to 127.0.0.1 only, as the superuser `tally`, with `trust`
//! authentication (no password): [`PostgresCluster::url`].

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

/// The superuser `initdb` creates; every URL connects as it.
pub const SUPERUSER: &str = "tally";

/// The operating-system user that runs the server when the tests run as root.
const OS_USER: &str = "postgres";

/// Environment variables that would point `psql` or `pg_ctl` somewhere else than the
/// arguments say; removed from every command the harness runs.
const PG_ENV: [&str; 9] = [
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSSLMODE",
];

/// What a test that needs Postgres says when there is none.
const MISSING: &str = "Postgres is not installed: no initdb under /usr/lib/postgresql/*/bin \
    or on PATH. Run scripts/bootstrap.sh (as root it installs Debian's postgresql package), \
    or set TALLY_NO_POSTGRES=1 to skip the Postgres tests";

/// How many ports [`PostgresCluster::start`] tries: a port from [`crate::free_port`] was free
/// a moment ago, and a test running alongside may take it before the server binds it.
const START_ATTEMPTS: u32 = 3;

/// False only when `TALLY_NO_POSTGRES=1`: then tests that need Postgres skip themselves.
pub fn postgres_wanted() -> bool {
    std::env::var_os("TALLY_NO_POSTGRES").is_none_or(|value| value != "1")
}

/// A Postgres cluster of its own for one test, on `127.0.0.1` and a free port, in a temporary
/// directory. [`PostgresCluster::stop`] or dropping it stops the server and removes the
/// directory.
#[derive(Debug)]
pub struct PostgresCluster {
    /// The directory of `initdb`, `pg_ctl` and (usually) `psql`.
    bin: PathBuf,
    /// True when the tests run as root: the server's commands run as [`OS_USER`].
    as_postgres: bool,
    /// The temporary directory: `data/` (the cluster), `server.log`, and the Unix socket.
    /// `None` once stopped.
    dir: Option<tempfile::TempDir>,
    /// The TCP port on 127.0.0.1.
    port: u16,
}

impl PostgresCluster {
    /// Makes a new cluster and starts its server; answers once it accepts connections.
    ///
    /// Panics when Postgres is not installed (the message says to run `scripts/bootstrap.sh`
    /// or set `TALLY_NO_POSTGRES=1`), or when `TALLY_NO_POSTGRES=1` is set: a test that may be
    /// skipped calls [`postgres_wanted`] first, or [`PostgresCluster::start_unless_skipped`].
    pub async fn start() -> PostgresCluster {
        assert!(
            postgres_wanted(),
            "TALLY_NO_POSTGRES=1 is set, yet a test starts a Postgres cluster: check \
             postgres_wanted() first, or use PostgresCluster::start_unless_skipped"
        );
        let bin = find_bin_dir().unwrap_or_else(|| panic!("{MISSING}"));
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("tally-pg-")
            .tempdir()
            .expect("a temporary directory for the Postgres cluster can be made");
        if as_postgres {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap_or_else(|e| {
                panic!(
                    "the cluster directory {} can be given to the postgres user: {e}",
                    dir.path().display()
                )
            });
        }
        let mut cluster = PostgresCluster {
            bin,
            as_postgres,
            dir: Some(dir),
            port: 0,
        };
        cluster.initdb().await;
        for attempt in 1..=START_ATTEMPTS {
            cluster.port = crate::free_port();
            match cluster.start_server().await {
                Ok(()) => return cluster,
                // Someone took the port between free_port() and the server's bind.
                Err(log) if attempt < START_ATTEMPTS && log.contains("could not bind") => {}
                Err(log) => panic!(
                    "the Postgres server did not start on 127.0.0.1:{}; the end of its log:\n{log}",
                    cluster.port
                ),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// [`PostgresCluster::start`], or `None` with a note on stderr when `TALLY_NO_POSTGRES=1`
    /// (`test` names the test in the note). A test that needs Postgres begins with
    /// `let Some(pg) = PostgresCluster::start_unless_skipped("name").await else { return };`.
    pub async fn start_unless_skipped(test: &str) -> Option<PostgresCluster> {
        if !postgres_wanted() {
            eprintln!("skipping {test}: TALLY_NO_POSTGRES=1");
            return None;
        }
        Some(PostgresCluster::start().await)
    }

    /// The TCP port the server listens on (on 127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://tally@127.0.0.1:PORT/postgres`: the cluster's default database.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// `postgres://tally@127.0.0.1:PORT/NAME` (the database need not exist).
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates the database `name` (1 to 63 ASCII letters, digits and underscores, so it needs
    /// no escaping in SQL or in a URL) and answers its URL. Panics if it exists already.
    pub async fn create_database(&self, name: &str) -> String {
        assert!(
            (1..=63).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "database name {name:?}: use 1 to 63 ASCII letters, digits and underscores"
        );
        // Quoted, so the name keeps its case, as in the URL.
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .await;
        self.database_url(name)
    }

    /// Runs `sql` with `psql` in `database` (a name, or a `postgres://` URL) and answers what
    /// it prints, unaligned and without headers (`SELECT 1` answers `"1"`; rows are lines,
    /// columns separated by `|`). Panics, with psql's message, when the SQL fails.
    pub async fn psql(&self, database: &str, sql: &str) -> String {
        let port = self.port.to_string();
        let mut command = std::process::Command::new(self.client_program("psql"));
        for name in PG_ENV {
            command.env_remove(name);
        }
        command
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                SUPERUSER,
                "-d",
                database,
            ])
            .args(["-c", sql])
            .env("PGCONNECT_TIMEOUT", "10");
        let output = run(command, Duration::from_secs(60), "psql").await;
        assert!(
            output.status.success(),
            "psql -d {database} -c {sql:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
        String::from_utf8(output.stdout)
            .expect("psql prints UTF-8 (the cluster's encoding)")
            .trim_end()
            .to_owned()
    }

    /// Stops the server and removes the cluster's directory. Panics if the server could not be
    /// stopped cleanly (it is killed and the directory removed first); dropping the cluster
    /// does the same without panicking.
    pub fn stop(mut self) {
        if let Err(problem) = self.shutdown() {
            panic!("{problem}");
        }
    }

    /// The temporary directory (present until stopped).
    fn root(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("the cluster is not stopped yet")
            .path()
    }

    /// The cluster's data directory.
    fn data_dir(&self) -> PathBuf {
        self.root().join("data")
    }

    /// The server's log (`pg_ctl -l`).
    fn log_path(&self) -> PathBuf {
        self.root().join("server.log")
    }

    /// `psql` from the server's directory, else the one on `PATH`.
    /// A client program of the cluster's own version (`psql`, `pg_restore`): the one beside
    /// its `initdb`, else the one on `PATH`.
    pub fn client_program(&self, name: &str) -> PathBuf {
        let program = self.bin.join(name);
        if program.is_file() {
            program
        } else {
            PathBuf::from(name)
        }
    }

    /// Runs `pg_restore ARGS... BACKUP` (the cluster's version), which must succeed: panics
    /// with its message otherwise.
    pub async fn pg_restore(&self, args: &[&str], backup: &Path) {
        let mut command = std::process::Command::new(self.client_program("pg_restore"));
        for name in PG_ENV {
            command.env_remove(name);
        }
        command.args(args).arg(backup);
        let output = run(command, Duration::from_secs(120), "pg_restore").await;
        assert!(
            output.status.success(),
            "pg_restore {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }

    /// A command running the server tool `tool` (`initdb`, `pg_ctl`): as [`OS_USER`] when the
    /// tests run as root, in the cluster's directory, with no input.
    fn server_command(&self, tool: &str) -> std::process::Command {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", OS_USER, "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        };
        for name in PG_ENV {
            command.env_remove(name);
        }
        command.current_dir(self.root()).stdin(Stdio::null());
        command
    }

    /// `initdb`: a new cluster in `data/`, superuser `tally`, no passwords.
    async fn initdb(&self) {
        let mut command = self.server_command("initdb");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-A", "trust", "-U", SUPERUSER])
            // The C locale exists everywhere and sorts the same everywhere.
            .args(["-E", "UTF8", "--locale=C"])
            // --no-sync: initdb does not fsync the new cluster's files, which saves seconds
            // per test. Only the bootstrap is unsynced (a power cut now loses a cluster we
            // throw away anyway); the server itself runs with fsync=on.
            .arg("--no-sync");
        let output = run(command, Duration::from_secs(120), "initdb").await;
        assert!(
            output.status.success(),
            "initdb -D {} failed ({}){}:\n{}{}",
            self.data_dir().display(),
            output.status,
            if self.as_postgres {
                " as the postgres user (as root, the directory's parents must be searchable \
                 by postgres; check TMPDIR)"
            } else {
                ""
            },
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }

    /// `pg_ctl start` on [`PostgresCluster::port`], waiting until the server accepts
    /// connections; on failure, the end of the server's log and pg_ctl's own words.
    async fn start_server(&self) -> Result<(), String> {
        let log = self.log_path();
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
        // pg_ctl hands -o to a shell: the socket directory is quoted (a temp path, no quotes).
        let options = format!(
            "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c fsync=on",
            self.port,
            self.root().display()
        );
        let mut command = self.server_command("pg_ctl");
        command
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-o", &options, "-w", "-t", "30", "start"]);
        // The server's output goes to the log (-l), so pg_ctl's pipes close when it exits.
        let output = run(command, Duration::from_secs(60), "pg_ctl start").await;
        if output.status.success() {
            return Ok(());
        }
        let mut problem = crate::log_tail(&log, log_start, 40);
        problem.push_str(&format!(
            "\npg_ctl start ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout).trim_end(),
            String::from_utf8_lossy(&output.stderr).trim_end()
        ));
        // A server that started but was not ready in time would run on: stop it (what went
        // wrong is in the log already).
        let _ = self.stop_server();
        Err(problem)
    }

    /// `pg_ctl stop -m immediate` if a server runs (the data is thrown away, so it need not
    /// shut down cleanly), and SIGKILL to the postmaster if that fails. Errors describe what
    /// went wrong; never panics.
    fn stop_server(&self) -> Result<(), String> {
        let pid_file = self.data_dir().join("postmaster.pid");
        if !pid_file.exists() {
            return Ok(());
        }
        let mut command = self.server_command("pg_ctl");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "-t", "30", "stop"]);
        let problem = match command.output() {
            Ok(output) if output.status.success() => return Ok(()),
            Ok(output) => format!(
                "pg_ctl stop ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim_end(),
                String::from_utf8_lossy(&output.stderr).trim_end()
            ),
            Err(e) => format!("pg_ctl stop could not run: {e}"),
        };
        // The first line of postmaster.pid is the postmaster's pid.
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok());
        if let Some(pid) = pid {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        Err(format!(
            "the Postgres server on port {} did not stop cleanly (postmaster {pid:?} killed): \
             {problem}\nthe end of its log:\n{}",
            self.port,
            crate::log_tail(&self.log_path(), 0, 40)
        ))
    }

    /// Stops the server and removes the directory, once; later calls do nothing.
    fn shutdown(&mut self) -> Result<(), String> {
        if self.dir.is_none() {
            return Ok(());
        }
        let stopped = self.stop_server();
        // Removing the directory (TempDir's drop) ignores errors: it is a temp dir.
        self.dir = None;
        stopped
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        if let Err(problem) = self.shutdown() {
            eprintln!("{problem}");
        }
    }
}

/// Runs `command` to its end, its output captured, within `limit` (killed beyond it).
async fn run(command: std::process::Command, limit: Duration, what: &str) -> Output {
    let mut command = tokio::process::Command::from(command);
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("{what} could not run: {e}"))
}

/// The directory holding `initdb` and `pg_ctl`: the highest version under
/// `/usr/lib/postgresql` (Debian), else the first directory on `PATH` that has both.
fn find_bin_dir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            // "15", "16", or "9.6" in old releases; anything else is not a version directory.
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| has_tools(dir))
}

/// Whether this process runs as root (whose `initdb` refuses to run). `/proc/self` belongs to
/// the process's effective user; without `/proc`, `id -u` says.
fn running_as_root() -> bool {
    match std::fs::metadata("/proc/self") {
        Ok(meta) => meta.uid() == 0,
        Err(_) => std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0"),
    }
}

/// The uid and gid of the `postgres` user, who runs the server when the tests run as root.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let output = std::process::Command::new("id")
            .args([flag, OS_USER])
            .output()
            .expect("`id` runs (coreutils)");
        assert!(
            output.status.success(),
            "running as root, and initdb refuses root, but there is no `{OS_USER}` user to run \
             it as ({}). Run scripts/bootstrap.sh (Debian's postgresql package creates that \
             user), run the tests as another user, or set TALLY_NO_POSTGRES=1",
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("`id {flag} {OS_USER}` prints a number: {e}"))
    };
    (id("-u"), id("-g"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Whether something accepts TCP connections on 127.0.0.1:`port`.
    fn listening(port: u16) -> bool {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        )
        .is_ok()
    }

    #[tokio::test]
    async fn a_cluster_serves_two_fresh_databases_and_stops() {
        let begin = Instant::now();
        let Some(cluster) =
            PostgresCluster::start_unless_skipped("a_cluster_serves_two_fresh_databases").await
        else {
            return;
        };
        eprintln!("cluster started in {:?}", begin.elapsed());
        let port = cluster.port();
        assert_eq!(
            cluster.url(),
            format!("postgres://tally@127.0.0.1:{port}/postgres")
        );

        let first = cluster.create_database("tally_first").await;
        let second = cluster.create_database("Tally_Second").await;
        assert_eq!(
            first,
            format!("postgres://tally@127.0.0.1:{port}/tally_first")
        );
        assert_eq!(cluster.psql(&first, "SELECT 1").await, "1");
        assert_eq!(
            cluster.psql(&second, "SELECT current_database()").await,
            "Tally_Second"
        );
        // The two databases are separate: a table in one is not in the other.
        cluster
            .psql(&first, "CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
            .await;
        assert_eq!(cluster.psql(&first, "SELECT x FROM t").await, "7");
        assert_eq!(
            cluster
                .psql(
                    &second,
                    "SELECT count(*) FROM pg_tables WHERE tablename = 't'"
                )
                .await,
            "0"
        );
        // Loopback only, durable commits, superuser tally.
        assert_eq!(
            cluster.psql(&first, "SHOW listen_addresses").await,
            "127.0.0.1"
        );
        assert_eq!(cluster.psql(&first, "SHOW fsync").await, "on");
        assert_eq!(
            cluster
                .psql(
                    &first,
                    "SELECT current_user, usesuper FROM pg_user WHERE usename = current_user"
                )
                .await,
            "tally|t"
        );

        let dir = cluster.root().to_path_buf();
        let begin = Instant::now();
        cluster.stop();
        eprintln!("cluster stopped in {:?}", begin.elapsed());
        assert!(!dir.exists(), "{} is removed", dir.display());
        assert!(!listening(port), "nothing listens on {port} after stop");
    }

    #[tokio::test]
    async fn dropping_a_cluster_stops_it_and_removes_its_directory() {
        let Some(cluster) = PostgresCluster::start_unless_skipped("dropping_a_cluster").await
        else {
            return;
        };
        let port = cluster.port();
        let dir = cluster.root().to_path_buf();
        assert!(listening(port), "the server listens on {port}");
        assert!(
            cluster.create_database("dup").await.ends_with("/dup"),
            "the URL names the database"
        );
        drop(cluster);
        assert!(!dir.exists(), "{} is removed", dir.display());
        assert!(!listening(port), "nothing listens on {port} after drop");
    }

    #[test]
    fn only_tally_no_postgres_1_skips() {
        // Reads the environment only: the tests here never set it (tests run in parallel).
        let value = std::env::var("TALLY_NO_POSTGRES").ok();
        assert_eq!(postgres_wanted(), value.as_deref() != Some("1"));
    }
}
