//! The gauges `/metrics` reads when it is scraped: what the database and this
//! instance hold now.

use sea_orm::{ColumnTrait, DbBackend, EntityTrait, PaginatorTrait, QueryFilter};

use entity::{mail_outbox, session};

use crate::service::Services;
use crate::{error::AppResult, metrics::Gauges};

/// Live sessions and pending mail (two counts on indexed columns), the
/// session cache's size and the pool's connections. Errors: the database.
pub async fn read(svc: &Services) -> AppResult<Gauges> {
    let now = svc.clock.now();
    let sessions_live = session::Entity::find()
        .filter(session::Column::RevokedAt.is_null())
        .filter(session::Column::ExpiresAt.gt(now))
        .count(&svc.db)
        .await?;
    let outbox_pending =
        mail_outbox::Entity::find().filter(mail_outbox::Column::NextAttemptAt.is_not_null()).count(&svc.db).await?;
    let (size, idle) = match svc.db.get_database_backend() {
        DbBackend::Postgres => {
            let pool = svc.db.get_postgres_connection_pool();
            (pool.size(), pool.num_idle())
        }
        _ => {
            let pool = svc.db.get_sqlite_connection_pool();
            (pool.size(), pool.num_idle())
        }
    };
    let idle = u32::try_from(idle).unwrap_or(u32::MAX);
    Ok(Gauges {
        sessions_live,
        session_cache_entries: svc.registry.sessions_cached(),
        session_watchers: svc.registry.watchers(),
        pool_in_use: size.saturating_sub(idle),
        pool_idle: idle,
        outbox_pending,
    })
}
