//! The commands beside `serve`, run as an operator runs them.

use std::time::Duration;

use sea_orm::{ConnectionTrait, Database, Statement};

use crate::helpers::*;

/// Runs `authgraph ARGS` against `database` with `env`; never waits longer than 20 s.
fn run(database: &TestDatabase, dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = authgraph_command(dir);
    cmd.env("DATABASE_URL", database.url())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("AUTHGRAPH_ADMIN_PASSWORD", PASSWORD)
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    output_within(&mut cmd, Duration::from_secs(20))
}

/// Whether any migration ran on the database (or, on SQLite, whether its file exists at all).
async fn touched(database: &TestDatabase) -> bool {
    if let Some(path) = database.sqlite_path() {
        return path.exists();
    }
    let db = Database::connect(database.url()).await.unwrap();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_name = 'seaql_migrations'",
        ))
        .await
        .unwrap()
        .unwrap();
    let n: i64 = row.try_get("", "n").unwrap();
    db.close().await.unwrap();
    n > 0
}

#[tokio::test]
async fn migrate_and_create_admin_refuse_what_serve_refuses() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let weak = "weak-secret-4f2a";
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("APP_ENV", "production")], "KEY_ENCRYPTION_SECRET is required when APP_ENV=production"),
        (&[("APP_ENV", "production"), ("JWT_ALGORITHM", "HS256")], "JWT_SECRET is required when APP_ENV=production"),
        (&[("KEY_ENCRYPTION_SECRET", weak)], "KEY_ENCRYPTION_SECRET must be at least 32 bytes"),
        (&[("JWT_SECRET", weak)], "JWT_SECRET must be at least 32 bytes"),
        (&[("APP_ENV", "production"), ("JWT_SECRET", JWT_SECRET), ("COOKIE_SECURE", "false")], "COOKIE_SECURE=false"),
    ];
    for (env, expected) in cases {
        let serve = run(&database, dir.path(), &["serve"], env);
        let serve_err = String::from_utf8_lossy(&serve.stderr).into_owned();
        assert!(!serve.status.success() && serve_err.contains(expected), "serve with {env:?}: {serve_err}");
        for args in [&["migrate"][..], &["create-admin", "--email", "root@example.com"]] {
            let out = run(&database, dir.path(), args, env);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} with {env:?} succeeded: {err}");
            assert_eq!(err, serve_err, "{args:?} with {env:?} says something else than serve");
            assert!(!err.contains(weak), "the secret was echoed: {err}");
        }
        assert!(!touched(&database).await, "the database was touched with {env:?}");
    }

    // A configuration that serves, migrates.
    let serving = [("APP_ENV", "production"), ("JWT_SECRET", JWT_SECRET), ("SMTP_URL", "smtp://127.0.0.1:25")];
    let ok = run(&database, dir.path(), &["migrate"], &serving);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(touched(&database).await);
}

#[test]
fn migrate_help_lists_the_whole_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = output_within(authgraph_command(dir.path()).args(["migrate", "--help"]), Duration::from_secs(20));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for name in ["DATABASE_URL", "JWT_SECRET", "APP_ENV", "COOKIE_SECURE", "LOG_FORMAT"] {
        assert!(help.contains(name), "{name} missing from `migrate --help`:\n{help}");
    }
    assert!(help.contains("as `serve` checks it"), "{help}");
}

/// `authgraph keys`: list, rotate (idempotent while a key waits), retire a
/// waiting key, refuse to retire the key that signs; and on HS256, a clear
/// refusal. The keys are sealed with `KEY_ENCRYPTION_SECRET`, which is never
/// printed.
#[tokio::test]
async fn keys_are_listed_rotated_and_retired_from_the_command_line() {
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let kek = "command-line-key-encryption-secret-0123456789";
    let env: &[(&str, &str)] = &[("KEY_ENCRYPTION_SECRET", kek)];
    let text = |out: &std::process::Output| {
        let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!o.contains(kek) && !e.contains(kek), "the secret was printed");
        (out.status.success(), o.into_owned(), e.into_owned())
    };

    // The key lines (the log goes to standard error: nothing else is here).
    let keys =
        |out: &str| -> Vec<String> { out.lines().filter(|l| l.contains("signs from")).map(str::to_owned).collect() };
    let kid = |out: &str| keys(out)[0].split_whitespace().next().unwrap().to_owned();
    // It works on what the servers made, and makes no database or secret of its own.
    if database.sqlite_path().is_some() {
        let (ok, _, err) = text(&run(&database, dir.path(), &["keys", "list"], env));
        assert!(!ok && err.contains("no database at"), "{err}");
        assert!(!touched(&database).await, "the command made a database");
    }
    let (ok, _, err) = text(&run(&database, dir.path(), &["migrate"], env));
    assert!(ok, "{err}");
    let (ok, _, err) = text(&run(&database, dir.path(), &["keys", "list"], &[]));
    assert!(!ok && err.contains("no generated secret"), "{err}");
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|f| !f.unwrap().path().to_string_lossy().ends_with("jwt-key")));
    let (ok, out, _) = text(&run(&database, dir.path(), &["keys", "list"], env));
    assert!(ok && out.contains("no signing keys yet"), "{out}");
    // On an empty database the first key signs at once.
    let (ok, out, err) = text(&run(&database, dir.path(), &["keys", "rotate"], env));
    assert!(ok, "{err}");
    let first = kid(&out);
    assert!(keys(&out)[0].contains("current"), "{out}");
    let (ok, out, err) = text(&run(&database, dir.path(), &["keys", "rotate"], env));
    assert!(ok && keys(&out)[0].contains("next"), "{out}{err}");
    let next = kid(&out);
    let (_, again, _) = text(&run(&database, dir.path(), &["keys", "rotate"], env));
    assert_eq!(kid(&again), next, "a second rotation made another key: {again}");

    let (ok, out, _) = text(&run(&database, dir.path(), &["keys", "list"], env));
    let listed = keys(&out);
    assert!(ok && listed.len() == 2 && out.contains(&first) && out.contains(&next), "{out}");
    assert_eq!(out.lines().count(), 2, "standard output holds more than the keys: {out}");
    let (ok, _, err) = text(&run(&database, dir.path(), &["keys", "retire", &first], env));
    assert!(!ok && err.contains("signs now") && err.contains("rotate first"), "{err}");
    let (ok, out, err) = text(&run(&database, dir.path(), &["keys", "retire", &next], env));
    assert!(ok && out.contains("retired") && out.contains("called off"), "{out}{err}");
    let (ok, _, err) = text(&run(&database, dir.path(), &["keys", "retire", "no-such-kid"], env));
    assert!(!ok && err.contains("no signing key no-such-kid"), "{err}");

    let (ok, _, err) = text(&run(&database, dir.path(), &["keys", "list"], &[("JWT_SECRET", JWT_SECRET)]));
    assert!(!ok && err.contains("HS256"), "{err}");
}
