//! Opening, checking and migrating the database file.

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rusqlite::{Connection, OpenFlags};

/// `PRAGMA application_id` of a DefenseClaw database ("DCLW").
pub const APPLICATION_ID: i64 = 0x4443_4C57;
/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 8;

const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE targets (
        kind        TEXT NOT NULL,
        name        TEXT NOT NULL,
        state       TEXT NOT NULL DEFAULT 'none',
        reason      TEXT NOT NULL DEFAULT '',
        decided_by  TEXT NOT NULL DEFAULT '',
        decided_at  TEXT NOT NULL DEFAULT '',
        created_at  TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    ) WITHOUT ROWID;

    CREATE TABLE findings (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        kind            TEXT NOT NULL,
        name            TEXT NOT NULL,
        scanner         TEXT NOT NULL,
        rule_id         TEXT NOT NULL,
        severity        INTEGER NOT NULL,
        title           TEXT NOT NULL,
        description     TEXT NOT NULL,
        location        TEXT NOT NULL,
        line            INTEGER NOT NULL,
        category        TEXT NOT NULL,
        snippet         TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        dismissed_by    TEXT,
        dismissed_at    TEXT,
        dismiss_reason  TEXT,
        FOREIGN KEY (kind, name) REFERENCES targets (kind, name)
    );
    CREATE INDEX findings_target ON findings (kind, name);

    CREATE TABLE audit (
        seq          INTEGER PRIMARY KEY,
        ts           TEXT NOT NULL,
        action       TEXT NOT NULL,
        target_kind  TEXT NOT NULL,
        target_name  TEXT NOT NULL,
        severity     TEXT NOT NULL,
        outcome      TEXT NOT NULL,
        reason       TEXT NOT NULL,
        details      TEXT NOT NULL,
        actor        TEXT NOT NULL,
        actor_id     TEXT NOT NULL,
        prev_hash    TEXT NOT NULL,
        hash         TEXT NOT NULL
    );
    CREATE INDEX audit_target ON audit (target_kind, target_name, seq);
    CREATE INDEX audit_actor ON audit (actor_id, seq);
    CREATE INDEX audit_ts ON audit (ts);
    "#,
    ),
    (
        2,
        r#"
    CREATE TABLE stepups (
        id              TEXT PRIMARY KEY,
        kind            TEXT NOT NULL,
        name            TEXT NOT NULL,
        action          TEXT NOT NULL,
        reason          TEXT NOT NULL,
        finding_id      INTEGER,
        requester       TEXT NOT NULL,
        approver_sub    TEXT NOT NULL,
        binding_message TEXT NOT NULL,
        auth_req_id     TEXT,
        created_at      TEXT NOT NULL,
        deadline        INTEGER NOT NULL,
        interval_secs   INTEGER NOT NULL,
        status          TEXT NOT NULL,
        outcome_reason  TEXT NOT NULL DEFAULT '',
        decided_at      TEXT,
        approver        TEXT
    );
    CREATE INDEX stepups_status ON stepups (status);
    "#,
    ),
    (
        3,
        r#"
    CREATE TABLE connection_grants (
        server          TEXT NOT NULL,
        connection      TEXT NOT NULL,
        declared_scopes TEXT NOT NULL,
        granted_scopes  TEXT NOT NULL DEFAULT '',
        approved_by     TEXT NOT NULL,
        approved_at     TEXT NOT NULL,
        last_used       TEXT,
        use_count       INTEGER NOT NULL DEFAULT 0,
        status          TEXT NOT NULL,
        status_reason   TEXT NOT NULL DEFAULT '',
        subject_sub     TEXT,
        subject_sealed  BLOB,
        PRIMARY KEY (server, connection)
    );
    CREATE TABLE linked_accounts (
        sub        TEXT NOT NULL,
        connection TEXT NOT NULL,
        account_id TEXT NOT NULL,
        linked_at  TEXT NOT NULL,
        PRIMARY KEY (sub, connection)
    );
    ALTER TABLE stepups ADD COLUMN payload TEXT NOT NULL DEFAULT '';
    "#,
    ),
    (
        4,
        r#"
    CREATE TABLE quarantine (
        name           TEXT PRIMARY KEY,
        original_path  TEXT NOT NULL,
        stored_path    TEXT NOT NULL,
        state          TEXT NOT NULL,
        reason         TEXT NOT NULL DEFAULT '',
        quarantined_by TEXT NOT NULL,
        quarantined_at TEXT NOT NULL
    );
    "#,
    ),
    (
        5,
        r#"
    CREATE TABLE openclaw_setup (
        id         INTEGER PRIMARY KEY CHECK (id = 1),
        spec       TEXT NOT NULL,
        originals  TEXT NOT NULL,
        active     INTEGER NOT NULL,
        updated_at TEXT NOT NULL
    );
    "#,
    ),
    (
        6,
        // Counters kept with the data: triggers update them in the transaction
        // that changes the rows, so `status` reads one row instead of counting.
        r#"
    CREATE TABLE counters (
        name  TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO counters (name, value)
        SELECT 'open_findings', count(*) FROM findings WHERE dismissed_at IS NULL;
    CREATE TRIGGER counters_finding_added AFTER INSERT ON findings
        WHEN NEW.dismissed_at IS NULL
    BEGIN
        UPDATE counters SET value = value + 1 WHERE name = 'open_findings';
    END;
    CREATE TRIGGER counters_finding_removed AFTER DELETE ON findings
        WHEN OLD.dismissed_at IS NULL
    BEGIN
        UPDATE counters SET value = value - 1 WHERE name = 'open_findings';
    END;
    CREATE TRIGGER counters_finding_dismissed AFTER UPDATE OF dismissed_at ON findings
        WHEN (OLD.dismissed_at IS NULL) <> (NEW.dismissed_at IS NULL)
    BEGIN
        UPDATE counters
           SET value = value + (CASE WHEN NEW.dismissed_at IS NULL THEN 1 ELSE -1 END)
         WHERE name = 'open_findings';
    END;
    "#,
    ),
    (
        7,
        r#"
    CREATE TABLE export_cursors (
        name       TEXT PRIMARY KEY,
        seq        INTEGER NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE export_host (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        host_id TEXT NOT NULL
    );
    INSERT INTO export_host (id, host_id) VALUES (1, lower(hex(randomblob(16))));
    "#,
    ),
    (
        8,
        r#"
    ALTER TABLE connection_grants ADD COLUMN status_changed_at TEXT;
    "#,
    ),
];

/// Why the database cannot be used. The file is never modified in these cases.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file is not ours or is damaged.
    #[error("refusing to use {path}: {reason}; the file was left untouched")]
    Refused {
        /// Database path.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// SQLite failed.
    #[error("cannot open {path}: {source}")]
    Sqlite {
        /// Database path.
        path: String,
        /// The error.
        #[source]
        source: rusqlite::Error,
    },
}

fn refused(path: &Path, reason: impl Into<String>) -> OpenError {
    OpenError::Refused {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Opens (creating if absent) the writer connection: checks the file is ours,
/// intact and private, then migrates it.
pub fn open_writer(path: &Path) -> Result<Connection, OpenError> {
    let fresh = prepare_file(path)?;
    let sql = |source| OpenError::Sqlite {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    // A foreign or damaged file fails here, before anything is written.
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| refused(path, format!("not a readable SQLite database ({e})")))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| refused(path, format!("not a readable SQLite database ({e})")))?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| refused(path, format!("not a readable SQLite database ({e})")))?;
    if !(fresh || (app_id == 0 && version == 0 && tables == 0)) {
        if app_id != APPLICATION_ID {
            return Err(refused(
                path,
                "it is not a DefenseClaw database (foreign application id)",
            ));
        }
        if version > SCHEMA_VERSION {
            return Err(refused(
                path,
                format!(
                    "its schema version {version} is newer than this build supports ({SCHEMA_VERSION})"
                ),
            ));
        }
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(|e| refused(path, format!("integrity check failed: {e}")))?;
        if check != "ok" {
            return Err(refused(path, format!("integrity check failed: {check}")));
        }
    }
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )
    .map_err(sql)?;
    migrate(&conn, version).map_err(sql)?;
    Ok(conn)
}

/// Opens a read-only connection to an already prepared database.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 5000;")?;
    Ok(conn)
}

fn migrate(conn: &Connection, from: i64) -> rusqlite::Result<()> {
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > from) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!(
            "PRAGMA user_version = {version}; PRAGMA application_id = {APPLICATION_ID};"
        ))?;
        tx.commit()?;
    }
    Ok(())
}

/// Creates the file 0600 if absent (returns true), or checks an existing one is
/// a private regular file that starts like SQLite.
fn prepare_file(path: &Path) -> Result<bool, OpenError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_file() {
                return Err(refused(path, "it is not a regular file"));
            }
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(refused(
                    path,
                    format!(
                        "its mode is {mode:o}; it must be 0600 (run `chmod 600 {}`)",
                        path.display()
                    ),
                ));
            }
            if Some(meta.uid()) != defenseclaw_common::paths::current_uid() {
                return Err(refused(
                    path,
                    format!(
                        "it is owned by uid {}, not by the daemon's user",
                        meta.uid()
                    ),
                ));
            }
            if meta.len() > 0 {
                let mut header = [0u8; 16];
                let mut file =
                    std::fs::File::open(path).map_err(|e| refused(path, e.to_string()))?;
                let read = file
                    .read(&mut header)
                    .map_err(|e| refused(path, e.to_string()))?;
                if read < 16 || &header != b"SQLite format 3\0" {
                    return Err(refused(
                        path,
                        "it is not a SQLite database (foreign or corrupted file)",
                    ));
                }
            }
            Ok(meta.len() == 0)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| refused(path, format!("cannot create it: {e}")))?;
            Ok(true)
        }
        Err(e) => Err(refused(path, format!("cannot inspect it: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_findings(conn: &Connection) -> (i64, i64) {
        let kept: i64 = conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'open_findings'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let counted: i64 = conn
            .query_row(
                "SELECT count(*) FROM findings WHERE dismissed_at IS NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (kept, counted)
    }

    fn add_finding(conn: &Connection, name: &str, dismissed: bool) {
        conn.execute(
            "INSERT OR IGNORE INTO targets (kind, name, created_at) VALUES ('skill', ?1, 't')",
            [name],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO findings (kind, name, scanner, rule_id, severity, title, description,
                                   location, line, category, snippet, created_at, dismissed_at)
             VALUES ('skill', ?1, 's', 'r', 3, 't', 'd', 'l', 1, 'c', '', 't', ?2)",
            rusqlite::params![name, dismissed.then_some("t")],
        )
        .unwrap();
    }

    /// A version-4 database (main's last before the counters) with findings
    /// migrates to counters that match its rows, and the counters then follow
    /// inserts, dismissals and deletes.
    #[test]
    fn migration_6_seeds_the_counters_and_triggers_keep_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let fresh = prepare_file(&path).unwrap();
            assert!(fresh);
            let conn = Connection::open(&path).unwrap();
            for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= 4) {
                conn.execute_batch(sql).unwrap();
                conn.execute_batch(&format!(
                    "PRAGMA user_version = {version}; PRAGMA application_id = {APPLICATION_ID};"
                ))
                .unwrap();
            }
            add_finding(&conn, "a", false);
            add_finding(&conn, "a", false);
            add_finding(&conn, "b", true);
        }
        let conn = open_writer(&path).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(
            open_findings(&conn),
            (2, 2),
            "seeded from the existing rows"
        );

        add_finding(&conn, "c", false);
        assert_eq!(open_findings(&conn), (3, 3));
        conn.execute(
            "UPDATE findings SET dismissed_at = 'now' WHERE name = 'a' AND id = (SELECT min(id) FROM findings WHERE name = 'a')",
            [],
        )
        .unwrap();
        assert_eq!(open_findings(&conn), (2, 2));
        // Re-dismissing a dismissed finding changes nothing.
        conn.execute(
            "UPDATE findings SET dismissed_at = 'again' WHERE name = 'b'",
            [],
        )
        .unwrap();
        assert_eq!(open_findings(&conn), (2, 2));
        conn.execute("DELETE FROM findings WHERE name = 'b'", [])
            .unwrap();
        assert_eq!(
            open_findings(&conn),
            (2, 2),
            "a dismissed row leaves no mark"
        );
        conn.execute("DELETE FROM findings WHERE name = 'a'", [])
            .unwrap();
        assert_eq!(open_findings(&conn), (1, 1));
        // A rolled-back change leaves the counter as it was.
        conn.execute_batch("BEGIN").unwrap();
        add_finding(&conn, "d", false);
        conn.execute_batch("ROLLBACK").unwrap();
        assert_eq!(open_findings(&conn), (1, 1));
    }
}
