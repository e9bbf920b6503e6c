//! A damaged SQLite file (one page overwritten) is refused at start with an error that names the
//! file and points at the recovery steps; `check_database` lists the damage.

use estate_collector::store::sqlite::{SqliteStore, check_database};

/// A database at the current schema with one page overwritten by garbage, as a failing disk
/// would leave it.
fn corrupt_database(path: &std::path::Path) {
    drop(SqliteStore::open(path).unwrap());
    // Enough rows for several pages, then everything in the main file.
    {
        let connection = rusqlite::Connection::open(path).unwrap();
        connection
            .execute(
                "INSERT INTO hosts (id, hostname, first_seen_ms, last_seen_ms, last_sequence) \
                 VALUES ('h', 'h', 0, 0, 0)",
                [],
            )
            .unwrap();
        for index in 0..2000 {
            connection
                .execute(
                    "INSERT INTO inventory_changes (host_id, at_ms, field, kind, old, new) \
                     VALUES ('h', ?1, 'softwares', 'added', '', ?2)",
                    rusqlite::params![index, format!("package-{index:0>60}")],
                )
                .unwrap();
        }
        connection
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
    assert!(check_database(path).unwrap().is_empty(), "sound before");

    // Overwrite the third page of the file with garbage, as a failing disk would.
    let mut bytes = std::fs::read(path).unwrap();
    let page = 4096;
    assert!(bytes.len() > 4 * page, "{} bytes", bytes.len());
    for byte in &mut bytes[2 * page..3 * page] {
        *byte = 0x5a;
    }
    std::fs::write(path, &bytes).unwrap();
}

#[test]
fn a_corrupt_page_is_refused_with_the_file_and_the_recovery_steps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("estate.db");
    corrupt_database(&path);

    let error = SqliteStore::open(&path).unwrap_err().to_string();
    let shown = path.display().to_string();
    assert!(error.contains(&format!("`{shown}`")), "{error}");
    assert!(
        error.contains("corrupt") || error.contains("damaged"),
        "{error}"
    );
    assert!(
        error.contains("Recovering from a corrupt spool or database"),
        "{error}"
    );
    println!("{error}");
    assert!(!check_database(&path).unwrap().is_empty());
}

/// The collector checks the file while it loads its state (`open_checking_in_background`):
/// the check's verdict still stops the start before anything is served or written.
#[tokio::test]
async fn the_collector_does_not_start_on_a_corrupt_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("estate.db");
    corrupt_database(&path);
    let config = estate_collector::config::CollectorConfig {
        database: path.clone(),
        ..Default::default()
    };
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = estate_collector::run(config, grpc, http, std::future::pending())
        .await
        .unwrap_err();
    let error = format!("{error:#}");
    assert!(
        error.contains(&format!("database `{}` is corrupt", path.display())),
        "{error}"
    );
    assert!(
        error.contains("Recovering from a corrupt spool or database"),
        "{error}"
    );
}
