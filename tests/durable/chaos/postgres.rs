//! A PostgreSQL server of one scenario's own, so that the scenario can restart it for real (the
//! shared server on 5432 must never be restarted: other tests run against it). `initdb` in a
//! temporary directory (run as the `postgres` OS user when the tests run as root, as in CI),
//! a free port, `fsync` on and small `shared_buffers`; stopped and removed on drop, also when
//! the scenario panics.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

/// Where Debian's `postgresql` package puts each major version's server binaries.
const INSTALLED: &str = "/usr/lib/postgresql";

pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    /// `postgres://` URL of its `postgres` database (trust authentication, loopback only).
    pub url: String,
}

/// The newest installed major version's `bin` directory holding `initdb` and `pg_ctl`.
fn server_binaries() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(INSTALLED)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            let complete = ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| bin.join(b).is_file());
            complete.then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Whether this process runs as root: PostgreSQL refuses root, so its tools then run as the
/// `postgres` OS user.
fn root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program` with `args`, as the `postgres` OS user when this process is root, its output
/// dropped: the server it may start inherits no pipe of ours (it logs to its file), or waiting
/// for the command would hang.
fn as_postgres(program: &Path, args: &[&str]) -> std::process::Command {
    let mut command = if root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    };
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Runs `program` with `args` (`as_postgres`); panics with the server's log when it fails.
async fn run(program: &Path, args: &[&str], log: &Path) {
    let status = Command::from(as_postgres(program, args))
        .status()
        .await
        .unwrap_or_else(|e| panic!("{} does not run: {e}", program.display()));
    assert!(
        status.success(),
        "{} {args:?}: {status}; server log: {}",
        program.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

impl PrivatePostgres {
    /// Creates and starts a cluster, or `None` (saying why on stderr) when no PostgreSQL server
    /// binaries are installed (`./scripts/services.sh` installs them with PostgreSQL).
    pub async fn start() -> Option<PrivatePostgres> {
        let Some(bin) = server_binaries() else {
            eprintln!(
                "SKIPPED: no PostgreSQL server binaries under {INSTALLED}/*/bin (initdb, pg_ctl): \
                 run ./scripts/services.sh to install the postgresql package"
            );
            return None;
        };
        let data = std::env::temp_dir().join(format!(
            "ticketing-chaos-pg-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir(&data).expect("the cluster's directory");
        let mut server = PrivatePostgres {
            bin,
            data,
            url: String::new(),
        };
        if root() {
            let owned = std::process::Command::new("chown")
                .arg("postgres:")
                .arg(&server.data)
                .status()
                .expect("chown runs");
            assert!(owned.success(), "the cluster's directory given to postgres");
        }
        let data = server.data.to_str().expect("a UTF-8 temporary path");
        // No sync of initdb's own files (a process restart, not a power cut, is the fault
        // here); the server itself runs with fsync on.
        let init = [
            "-D",
            data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ];
        run(&server.bin.join("initdb"), &init, &server.log()).await;
        let port = super::super::client::free_port();
        let options = format!(
            "-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=on \
             -c shared_buffers=16MB -c max_connections=100"
        );
        server.pg_ctl(&["-o", &options, "start"]).await;
        server.url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
        Some(server)
    }

    /// `pg_ctl restart -m immediate`: every server process exits at once without a
    /// checkpoint (as in a crash), and the server starts again with WAL recovery on the same
    /// port and options (`postmaster.opts`). Returns once it accepts connections.
    pub async fn crash_restart(&self) {
        self.pg_ctl(&["-m", "immediate", "restart"]).await;
    }

    fn log(&self) -> PathBuf {
        self.data.join("server.log")
    }

    /// `pg_ctl -D <data> -l <log> -w -t 60 <args>`.
    async fn pg_ctl(&self, args: &[&str]) {
        let (data, log) = (self.data.to_str(), self.log());
        let data = data.expect("a UTF-8 temporary path");
        let logged = log.to_str().expect("a UTF-8 temporary path");
        let all: Vec<&str> = ["-D", data, "-l", logged, "-w", "-t", "60"]
            .into_iter()
            .chain(args.iter().copied())
            .collect();
        run(&self.bin.join("pg_ctl"), &all, &log).await;
    }
}

impl Drop for PrivatePostgres {
    /// Stops the server (immediately: its data is thrown away) and removes its directory.
    fn drop(&mut self) {
        if let Some(data) = self.data.to_str() {
            let stop = ["-D", data, "-m", "immediate", "-w", "stop"];
            let _ = as_postgres(&self.bin.join("pg_ctl"), &stop).status();
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
