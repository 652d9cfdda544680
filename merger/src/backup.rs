//! `tally-merger backup`: a consistent copy of the store, taken while the mergers run.
//!
//! - **SQLite** ([`sqlite`]): `VACUUM INTO` through sqlx. It reads inside one read
//!   transaction, so the copy is the database as of one commit; in WAL mode the merger keeps
//!   committing meanwhile (readers and the writer do not block each other). The copy is a
//!   plain, compact database file, flushed to disk before the command answers.
//! - **Postgres** ([`postgres`]): `pg_dump --format=custom`, which dumps from one snapshot
//!   while the mergers keep writing. Not reimplemented here: the command runs the `pg_dump`
//!   found on `PATH` or under `/usr/lib/postgresql/*/bin` (or `--pg-dump`), with the URL's
//!   password passed in `PGPASSWORD`, never on a command line `ps` shows.
//!
//! A backup never overwrites anything: the target is created exclusively before the copy
//! starts ([`BackupError::Exists`]), and removed again if the copy fails.
//!
//! Restoring is a file copy (SQLite) or `pg_restore` (Postgres) with the mergers stopped;
//! what the edge's anti-entropy sweep then repairs is in `docs/deployment.md`, "Backups and
//! restore".

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// The `backup` subcommand's arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The database to back up, as the merger is given it: `sqlite://PATH` or
    /// `postgres://USER@HOST:PORT/DB`.
    #[arg(
        long,
        env = "TALLY_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://./data/tally.db"
    )]
    pub database_url: String,

    /// The file to write. It must not exist: a backup never overwrites anything.
    #[arg(long)]
    pub to: PathBuf,

    /// For a Postgres URL: the `pg_dump` to run (by default the one on `PATH`, else the newest
    /// under `/usr/lib/postgresql/*/bin`). Use one at least as new as the server.
    #[arg(long, env = "TALLY_PG_DUMP")]
    pub pg_dump: Option<PathBuf>,
}

impl BackupArgs {
    /// Writes the backup the arguments describe.
    pub async fn run(&self) -> Result<Written, BackupError> {
        let url = self.database_url.as_str();
        if url.starts_with("sqlite:") {
            sqlite(url, &self.to).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres(url, &self.to, self.pg_dump.as_deref()).await
        } else {
            Err(BackupError::UnsupportedUrl)
        }
    }
}

/// Why a backup was not written. Messages never include the database URL (it may hold a
/// password).
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The target exists; it is left untouched.
    #[error(
        "{} exists already: a backup never overwrites a file; choose a new name or move the old one away",
        .0.display()
    )]
    Exists(PathBuf),
    /// The target could not be created (its directory is missing or not writable).
    #[error("cannot create {}: {source}", path.display())]
    Create {
        /// The target.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database URL is neither `sqlite:` nor `postgres://`.
    #[error("unsupported database URL: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl,
    /// The SQLite URL names no existing database file.
    #[error("no SQLite database at {}", .0.display())]
    NoDatabase(PathBuf),
    /// SQLite takes the target path as text.
    #[error("the backup path {} is not valid UTF-8", .0.display())]
    NotUtf8(PathBuf),
    /// Opening the database or copying it failed.
    #[error("SQLite backup failed: {0}")]
    Sqlite(#[from] sqlx::Error),
    /// No `pg_dump` to run.
    #[error(
        "pg_dump not found on PATH or under /usr/lib/postgresql/*/bin: install the PostgreSQL \
         client tools (Debian: postgresql-client) or pass --pg-dump; by hand, the backup is \
         `pg_dump --format=custom --file PATH URL`"
    )]
    PgDumpMissing,
    /// `pg_dump` could not be started.
    #[error("cannot run {}: {source}", program.display())]
    PgDumpSpawn {
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `pg_dump` ran and failed.
    #[error("pg_dump failed ({status}): {stderr}")]
    PgDumpFailed {
        /// Its exit status.
        status: ExitStatus,
        /// What it said.
        stderr: String,
    },
    /// The copy could not be flushed to disk.
    #[error("cannot flush {} to disk: {source}", path.display())]
    Flush {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A backup written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

impl fmt::Display for Written {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let how = match self.backend {
            "sqlite" => "SQLite database (VACUUM INTO)",
            _ => "Postgres custom-format dump (pg_dump; restore with pg_restore)",
        };
        write!(
            f,
            "backup written to {}: {how}, {} bytes",
            self.path.display(),
            self.bytes
        )
    }
}

/// Copies the SQLite database at `url` (`sqlite://PATH`) into a new file `to`, online: the
/// merger may be running and committing; the copy holds every commit that ended before the
/// copy's read transaction began, and none that began after it.
pub async fn sqlite(url: &str, to: &Path) -> Result<Written, BackupError> {
    let file = sqlite_file(url).ok_or(BackupError::UnsupportedUrl)?;
    if !file.is_file() {
        return Err(BackupError::NoDatabase(file));
    }
    let target = to.to_str().ok_or_else(|| BackupError::NotUtf8(to.into()))?;
    let claim = Claim::new(to)?;
    // No `journal_mode` (the file keeps its WAL mode) and no migrations: this connection only
    // reads. The busy timeout covers a moment of the merger's checkpoint lock.
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(30))
        .disable_statement_logging();
    let mut conn = options.connect().await?;
    // `VACUUM INTO` writes into a file that is absent or empty: the claim made it empty.
    sqlx::query("VACUUM INTO ?1")
        .bind(target)
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    // SQLite does not sync the file `VACUUM INTO` writes.
    let bytes = flush(to)?;
    Ok(claim.keep("sqlite", bytes))
}

/// Dumps the Postgres database at `url` into a new file `to` with `pg_dump --format=custom`
/// (one consistent snapshot; the mergers keep running). `pg_dump` is `program`, else the one
/// [`find_pg_tool`] finds.
pub async fn postgres(
    url: &str,
    to: &Path,
    program: Option<&Path>,
) -> Result<Written, BackupError> {
    let program = match program {
        Some(p) => p.to_path_buf(),
        None => find_pg_tool("pg_dump").ok_or(BackupError::PgDumpMissing)?,
    };
    let claim = Claim::new(to)?;
    let (url, password) = split_password(url);
    let mut command = Command::new(&program);
    command
        .args(["--format=custom", "--file"])
        .arg(to)
        .arg(format!("--dbname={url}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("running pg_dump does not panic");
    let output = match output {
        Ok(output) => output,
        Err(source) if source.kind() == ErrorKind::NotFound => {
            return Err(BackupError::PgDumpMissing);
        }
        Err(source) => return Err(BackupError::PgDumpSpawn { program, source }),
    };
    if !output.status.success() {
        return Err(BackupError::PgDumpFailed {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr)
                .trim_end()
                .to_owned(),
        });
    }
    let bytes = flush(to)?;
    Ok(claim.keep("postgres", bytes))
}

/// A PostgreSQL client program (`pg_dump`, `pg_restore`): the one on `PATH`, else the one of
/// the newest version under `/usr/lib/postgresql/*/bin` (where Debian keeps them).
pub fn find_pg_tool(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let version = entry
                    .file_name()
                    .to_str()?
                    .split('.')
                    .map(str::parse)
                    .collect::<Result<Vec<u32>, _>>()
                    .ok()?;
                let tool = entry.path().join("bin").join(name);
                tool.is_file().then_some((version, tool))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, tool)| tool)
    })
}

/// The file of a `sqlite:` URL (its query, if any, dropped).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let file = path.split('?').next().unwrap_or_default();
    (!file.is_empty()).then(|| PathBuf::from(file))
}

/// `postgres://user:secret@host/db` as `postgres://user@host/db` and the password
/// (percent-decoded), so the password can travel in `PGPASSWORD` instead of argv.
fn split_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (url.to_owned(), None);
    };
    let Some((user, password)) = userinfo.split_once(':') else {
        return (url.to_owned(), None);
    };
    (
        format!("{scheme}://{user}@{host}{tail}"),
        Some(percent_decode(password)),
    )
}

/// `%XX` escapes decoded; anything malformed is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or_default() * 16 + hex(l).unwrap_or_default();
                out.push(u8::try_from(value).expect("two hex digits fit in a byte"));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Syncs `path` and its directory to disk; answers its size.
fn flush(path: &Path) -> Result<u64, BackupError> {
    let failed = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BackupError::Flush { path, source }
    };
    let file = File::open(path).map_err(failed(path))?;
    file.sync_all().map_err(failed(path))?;
    let bytes = file.metadata().map_err(failed(path))?.len();
    // The directory entry too, so the new file's name survives a power cut.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(failed(dir))?;
    }
    Ok(bytes)
}

/// The target file, created exclusively (so nothing that existed is ever touched) and
/// removed on drop unless the backup completed.
struct Claim {
    path: Option<PathBuf>,
}

impl Claim {
    fn new(path: &Path) -> Result<Claim, BackupError> {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        // A backup holds every counter and replica: readable by its owner only.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(_) => Ok(Claim {
                path: Some(path.to_path_buf()),
            }),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                Err(BackupError::Exists(path.to_path_buf()))
            }
            Err(source) => Err(BackupError::Create {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    fn keep(mut self, backend: &'static str, bytes: u64) -> Written {
        let path = self.path.take().expect("a claim is kept once");
        Written {
            backend,
            path,
            bytes,
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_url_and_is_decoded() {
        assert_eq!(
            split_password("postgres://tally:p%40ss:w@db.internal:5432/tally?sslmode=require"),
            (
                "postgres://tally@db.internal:5432/tally?sslmode=require".to_owned(),
                Some("p@ss:w".to_owned())
            )
        );
        for url in [
            "postgres://tally@127.0.0.1:5432/postgres",
            "postgresql://127.0.0.1/db",
            "postgres:///db?host=/run/postgresql",
        ] {
            assert_eq!(split_password(url), (url.to_owned(), None));
        }
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn a_sqlite_url_names_its_file() {
        assert_eq!(
            sqlite_file("sqlite://./data/tally.db"),
            Some(PathBuf::from("./data/tally.db"))
        );
        assert_eq!(
            sqlite_file("sqlite:///var/lib/tally/tally.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/tally/tally.db"))
        );
        assert_eq!(sqlite_file("sqlite:"), None);
        assert_eq!(sqlite_file("postgres://x"), None);
    }

    #[tokio::test]
    async fn a_backup_refuses_an_existing_target_and_leaves_it_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("tally.db");
        let url = format!("sqlite://{}", db.display());
        crate::store::open(&url, crate::Durability::Full)
            .await
            .unwrap()
            .close()
            .await;
        let target = dir.path().join("backup.db");
        std::fs::write(&target, b"precious").unwrap();
        let err = sqlite(&url, &target).await.unwrap_err();
        assert!(matches!(err, BackupError::Exists(_)), "{err}");
        assert!(err.to_string().contains("exists already"), "{err}");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        // An empty file is someone's too.
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            sqlite(&url, &empty).await,
            Err(BackupError::Exists(_))
        ));
    }

    #[tokio::test]
    async fn a_failed_backup_leaves_no_file_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("backup.db");
        let missing = format!("sqlite://{}", dir.path().join("none.db").display());
        assert!(matches!(
            sqlite(&missing, &target).await,
            Err(BackupError::NoDatabase(_))
        ));
        let err = postgres(
            "postgres://u:secret@127.0.0.1:1/db",
            &target,
            Some(Path::new("/nonexistent/pg_dump")),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, BackupError::PgDumpMissing), "{err}");
        assert!(err.to_string().contains("pg_dump --format=custom"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(!target.exists(), "the claimed file is removed");
    }
}
