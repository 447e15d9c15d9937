//! Builds the application (database, keys, services, schema, routes), binds it
//! and serves it. Tests use [`spawn`] on port 0 and get the bound address back.

use std::{future::Future, io, net::SocketAddr, path::Path, sync::Arc};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use poem::{Server, listener::TcpAcceptor};
use thiserror::Error;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::{
    auth::{
        keys::Sealer, password::PasswordHasher, rate_limit::RateLimits, secrets::OneTimeSecrets, tokens::TokenKeys,
    },
    config::{Config, JWT_SECRET_MIN_BYTES, JwtKeySource, SigningAlgorithm},
    db,
    graphql::{self, Limits},
    http::{self, AppState, cookies::CookiePolicy, site::SitePolicy},
    secret::Secret,
    service::{
        Services, SessionPolicy,
        core::{
            signing_keys,
            store::{self, SessionRegistry},
        },
        jobs,
    },
};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("cannot open the database: {0}")]
    Database(String),
    #[error("cannot apply migrations: {0}")]
    Migration(String),
    #[error("signing key: {0}")]
    Key(String),
    #[error(
        "{path} is already served by another authgraph process; SQLite allows one instance per \
         database file (run several instances on PostgreSQL)"
    )]
    SqliteInUse { path: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Other(String),
}

/// Connects, migrates, loads the keys and the live sessions, and builds the schema.
pub async fn build(config: &Config) -> Result<Arc<AppState>, StartError> {
    let mut conn = db::connect(&config.database_url, config.database_timeout, config.database_max_connections)
        .await
        .map_err(|e| StartError::Database(e.to_string()))?;
    if config.metrics_addr.is_some() {
        crate::metrics::install().map_err(StartError::Other)?;
        conn.set_metric_callback(|info| crate::metrics::db_statement(info.elapsed, info.failed));
    }
    db::migrate(&conn).await.map_err(|e| StartError::Migration(e.to_string()))?;
    let readiness =
        db::Readiness::open(&config.database_url, &conn).await.map_err(|e| StartError::Database(e.to_string()))?;
    let secret = server_secret(&config.jwt_key)?;
    let hasher = PasswordHasher::new(&config.password).map_err(|e| StartError::Other(e.to_string()))?;
    let signing = key_store(config, &secret)?;
    let mailer = crate::mail::Mailer::new(&config.mail).map_err(StartError::Other)?;
    let tokens = match &signing {
        None => TokenKeys::new(&secret, &config.jwt_issuer, &config.jwt_audience, config.access_token_ttl),
        Some(keys) => {
            let set = signing_keys::ensure(&conn, keys, config.clock.now())
                .await
                .map_err(|e| StartError::Other(format!("signing keys: {}", e.detail())))?;
            TokenKeys::from_key_set(set, &config.jwt_issuer, &config.jwt_audience, config.access_token_ttl)
        }
    }
    .with_hasura_claims(config.jwt_hasura_claims);
    let services = Services {
        db: conn,
        hasher,
        tokens,
        signing,
        secrets: OneTimeSecrets::new(&secret),
        registry: Arc::new(SessionRegistry::for_access_tokens(config.session_cache_capacity, config.access_token_ttl)),
        limits: Arc::new(RateLimits::new(&config.rate_limits, config.clock.clone())),
        api_key_usage: Arc::default(),
        mail: Arc::new(mailer),
        events: Arc::new(crate::service::core::events::EventLog::new(config.security_event_retention)),
        second_factor: Arc::new(
            crate::service::core::factors::SecondFactors::new(
                &config.second_factor,
                config.key_encryption_secret.as_ref().unwrap_or(&secret),
            )
            .map_err(StartError::Other)?,
        ),
        watch_recheck: config.session_watch_recheck,
        policy: SessionPolicy {
            refresh_ttl: config.refresh_token_ttl,
            reuse_grace: config.refresh_reuse_grace,
            idle_timeout: config.session_idle_timeout,
        },
        clock: config.clock.clone(),
        hooks: Default::default(),
    };
    let feed_from = store::start(&services).await.map_err(|e| StartError::Database(e.to_string()))?;
    let cookies = CookiePolicy::new(config.refresh_cookie_name(), config.cookie_secure);
    let limits = Limits {
        depth: config.query_depth_limit,
        complexity: config.query_complexity_limit,
        aliases: config.query_alias_limit,
        introspection: config.introspection,
    };
    let documents = graphql::document_cache();
    Ok(Arc::new(AppState {
        schema: graphql::build_schema(limits, documents.clone(), services.clone()),
        documents,
        services,
        readiness,
        cookies,
        site: SitePolicy::new(config.cors_allowed_origins.clone()),
        trusted_proxies: config.trusted_proxies.clone(),
        max_body_bytes: config.max_body_bytes,
        max_batch_size: config.max_batch_size,
        graphiql: config.graphiql,
        feed_from,
        sockets: Arc::default(),
    }))
}

/// A server running in the background (tests, benchmarks).
pub struct RunningApp {
    pub addr: SocketAddr,
    /// Where `/metrics` is served (`METRICS_ADDR`, with its port if it was 0).
    pub metrics_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<io::Result<()>>,
}

impl RunningApp {
    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn stop(mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.await.map_err(io::Error::other)?
    }
}

/// Builds the app, binds `config.listen_addr` (port 0 picks one) and serves in
/// the background.
pub async fn spawn(config: &Config) -> Result<RunningApp, StartError> {
    let lock = lock_sqlite_file(config)?;
    let state = build(config).await?;
    let (tx, rx) = oneshot::channel::<()>();
    let Bound { addr, metrics_addr, handle } = bind_and_serve(config, state.clone(), lock, async {
        let _ = rx.await;
    })
    .await?;
    Ok(RunningApp { addr, metrics_addr, state, shutdown: Some(tx), handle })
}

/// Takes an exclusive lock (`flock`) on `<database file>.lock` for as long as
/// the server runs: one SQLite database has one serving instance, whose
/// in-memory state is the only one. A file of its own, not the database file:
/// closing a descriptor of the database file would drop every `fcntl` lock
/// SQLite holds on it in this process. `None` for PostgreSQL and in-memory
/// SQLite. Errors: `SqliteInUse` when another process holds it.
fn lock_sqlite_file(config: &Config) -> Result<Option<std::fs::File>, StartError> {
    let Some(path) = crate::config::sqlite_file(&config.database_url) else {
        return Ok(None);
    };
    if config.database_url.contains("mode=memory") {
        return Ok(None);
    }
    let shown = path.display().to_string();
    let lock_path = std::path::PathBuf::from(format!("{shown}.lock"));
    let cannot = |e: io::Error| StartError::Database(format!("cannot open {}: {e}", lock_path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(cannot)?;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(cannot)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::SqliteInUse { path: shown }),
        Err(std::fs::TryLockError::Error(e)) => Err(cannot(e)),
    }
}

/// The bound addresses of a server and the task that serves them.
struct Bound {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    handle: JoinHandle<io::Result<()>>,
}

/// Binds `addr` (port 0 picks one). Returns the acceptor and the bound address.
async fn bind(addr: SocketAddr) -> Result<(TcpAcceptor, SocketAddr), StartError> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
    let bound = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    let acceptor = TcpAcceptor::from_tokio(listener).map_err(|source| StartError::Bind { addr: bound, source })?;
    Ok((acceptor, bound))
}

async fn bind_and_serve(
    config: &Config,
    state: Arc<AppState>,
    lock: Option<std::fs::File>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Bound, StartError> {
    let (acceptor, addr) = bind(config.listen_addr).await?;
    // The metrics listener, apart from the public one.
    let metrics = match config.metrics_addr {
        Some(at) => {
            let handle = crate::metrics::install().map_err(StartError::Other)?;
            let (acceptor, bound) = bind(at).await?;
            let routes = http::metrics::routes(state.clone(), handle);
            tracing::info!(addr = %bound, "metrics served on http://{bound}/metrics");
            Some((bound, tokio::spawn(async move { Server::new_with_acceptor(acceptor).run(routes).await })))
        }
        None => None,
    };
    let metrics_addr = metrics.as_ref().map(|(bound, _)| *bound);
    let feed = state.feed_from.map(|from| (config.database_url.as_str(), from));
    let jobs = jobs::Jobs::start(&state.services, config.cleanup_interval, feed, config.key_refresh_interval);
    let app = http::routes(state);
    let handle = tokio::spawn(async move {
        let result = Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(app, shutdown, Some(std::time::Duration::from_secs(30)))
            .await;
        if let Some((_, server)) = metrics {
            server.abort();
        }
        // Stopped once no request is left; what only memory holds is written.
        jobs.stop().await;
        // Held until the server has stopped.
        drop(lock);
        result
    });
    Ok(Bound { addr, metrics_addr, handle })
}

/// `authgraph serve`: runs until SIGTERM or Ctrl-C, then drains in-flight requests.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let lock = lock_sqlite_file(&config)?;
    let state = build(&config).await?;
    let Bound { addr, handle, .. } = bind_and_serve(&config, state, lock, shutdown_signal()).await?;
    tracing::info!(%addr, graphiql = config.graphiql, "authgraph listening on http://{addr}/graphql");
    handle.await.map_err(|e| StartError::Other(e.to_string()))?.map_err(|e| StartError::Other(e.to_string()))?;
    tracing::info!("shut down cleanly");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

/// The stored key pairs of an ES256 or EdDSA install and how keys come and go
/// under `config`; `None` on HS256. `secret` is the server secret, which seals
/// the keys when `KEY_ENCRYPTION_SECRET` is not set (development only).
fn key_store(config: &Config, secret: &Secret) -> Result<Option<Arc<signing_keys::SigningKeys>>, StartError> {
    Ok(match config.jwt_algorithm {
        SigningAlgorithm::Hs256 => None,
        alg => Some(Arc::new(signing_keys::SigningKeys {
            sealer: Sealer::new(config.key_encryption_secret.as_ref().unwrap_or(secret)),
            policy: signing_keys::KeyPolicy {
                alg,
                lead: duration(config.jwt_key_lead_time)?,
                // A retired key stays published while a token it signed may live.
                linger: duration(config.access_token_ttl)? + chrono::Duration::minutes(5),
                rotate_every: config.jwt_key_rotation_interval.map(duration).transpose()?,
            },
        })),
    })
}

/// `authgraph keys …`: the key store of `config` on its database (migrated
/// first). Errors: HS256 (no key pairs), or the database.
///
/// It works on what the servers made, and makes nothing of its own: it
/// refuses a SQLite file that does not exist, and, without
/// `KEY_ENCRYPTION_SECRET` or `JWT_SECRET`, a generated secret file that does
/// not exist (run it with the servers' environment, from their folder).
pub async fn keys_command(
    config: &Config,
) -> Result<(sea_orm::DatabaseConnection, Arc<signing_keys::SigningKeys>), StartError> {
    if let Some(file) = crate::config::sqlite_file(&config.database_url)
        && !file.exists()
    {
        return Err(StartError::Other(format!(
            "no database at {}: run the command with the servers' DATABASE_URL, from their folder",
            file.display()
        )));
    }
    if let JwtKeySource::GeneratedFile(path) = &config.jwt_key
        && !path.exists()
    {
        return Err(StartError::Other(format!(
            "neither KEY_ENCRYPTION_SECRET nor JWT_SECRET is set, and there is no generated secret at {}: \
             run the command with the servers' environment, from their folder",
            path.display()
        )));
    }
    let secret = server_secret(&config.jwt_key)?;
    let Some(keys) = key_store(config, &secret)? else {
        return Err(StartError::Other(
            "JWT_ALGORITHM is HS256 (JWT_SECRET is set): there are no key pairs to manage; \
             set JWT_ALGORITHM=ES256 or EdDSA"
                .into(),
        ));
    };
    let conn = db::connect(&config.database_url, config.database_timeout, 1)
        .await
        .map_err(|e| StartError::Database(e.to_string()))?;
    db::migrate(&conn).await.map_err(|e| StartError::Migration(e.to_string()))?;
    Ok((conn, keys))
}

fn duration(d: std::time::Duration) -> Result<chrono::Duration, StartError> {
    chrono::Duration::from_std(d).map_err(|e| StartError::Other(format!("duration out of range: {e}")))
}

/// The secret refresh tokens and stored-key fingerprints are keyed with (and
/// HS256 tokens signed with): `JWT_SECRET`, else `KEY_ENCRYPTION_SECRET`, else,
/// outside production, a generated one kept beside the database, so that
/// tokens survive restarts.
fn server_secret(source: &JwtKeySource) -> Result<Secret, StartError> {
    match source {
        JwtKeySource::Configured(secret) => Ok(secret.clone()),
        JwtKeySource::GeneratedFile(path) => {
            let key = load_or_create_key_file(path)?;
            tracing::warn!(
                path = %path.display(),
                "neither KEY_ENCRYPTION_SECRET nor JWT_SECRET is set: using a generated server secret kept \
                 in this file (it keys refresh tokens and seals signing keys). In production set \
                 KEY_ENCRYPTION_SECRET (ES256, EdDSA) or JWT_SECRET (HS256)."
            );
            Ok(key)
        }
    }
}

fn load_or_create_key_file(path: &Path) -> Result<Secret, StartError> {
    let read = |path: &Path| -> Result<Secret, StartError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StartError::Key(format!("cannot read {}: {e}", path.display())))?;
        let bytes = B64.decode(text.trim()).map_err(|_| {
            StartError::Key(format!(
                "{} is not a key written by authgraph; remove it or set JWT_SECRET",
                path.display()
            ))
        })?;
        if bytes.len() < JWT_SECRET_MIN_BYTES {
            return Err(StartError::Key(format!(
                "{} holds too short a key; remove it or set JWT_SECRET",
                path.display()
            )));
        }
        Ok(Secret::new(bytes))
    };
    if path.exists() {
        return read(path);
    }
    let mut bytes = vec![0u8; 64];
    getrandom::fill(&mut bytes).map_err(|e| StartError::Key(format!("getrandom: {e}")))?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| StartError::Key(format!("cannot create {}: {e}", dir.display())))?;
    // Write a temporary file completely, then link it into place: a crash never
    // leaves a half-written key, and two processes starting at once agree on one.
    let tmp = dir.join(format!(".authgraph-key-{}", uuid::Uuid::new_v4().simple()));
    write_private(&tmp, B64.encode(&bytes).as_bytes())
        .map_err(|e| StartError::Key(format!("cannot write {}: {e}", tmp.display())))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Secret::new(bytes)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(StartError::Key(format!("cannot create {}: {e}", path.display()))),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite.jwt-key");
        let a = load_or_create_key_file(&path).unwrap();
        let b = load_or_create_key_file(&path).unwrap();
        assert_eq!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(&path, "garbage!").unwrap();
        assert!(load_or_create_key_file(&path).is_err());
    }
}
