use std::process::ExitCode;

use authgraph::{
    app,
    cli::{Cli, Command, KeysCommand},
    config::Config,
    db, graphql, telemetry,
};

fn main() -> ExitCode {
    // A missing .env is normal; a malformed one is worth saying.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: cannot read .env: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse_args();
    let log_to = match cli.command {
        Some(Command::Keys(_) | Command::CreateAdmin(_) | Command::PrintSchema) => telemetry::LogTo::Stderr,
        Some(Command::Serve(_) | Command::Migrate(_)) | None => telemetry::LogTo::Stdout,
    };
    telemetry::init(cli.log_format, log_to);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Some(Command::PrintSchema) => {
            print!("{}", graphql::sdl());
            Ok(())
        }
        Some(Command::Migrate(args)) => migrate(args).await,
        Some(Command::CreateAdmin(args)) => create_admin(args).await,
        Some(Command::Keys(command)) => keys(command).await,
        Some(Command::Serve(args)) => serve(args).await,
        None => serve(cli.serve).await,
    }
}

/// `authgraph migrate`: the configuration is validated as `serve` validates it,
/// so a deploy that migrates first fails there, not after the migration.
async fn migrate(args: authgraph::config::ServeArgs) -> Result<(), String> {
    let config = Config::from_args(args).map_err(|e| e.to_string())?;
    let conn = db::connect(&config.database_url, config.database_timeout, 1)
        .await
        .map_err(|e| format!("cannot open the database: {e}"))?;
    db::migrate(&conn).await.map_err(|e| format!("cannot apply migrations: {e}"))?;
    tracing::info!("migrations applied");
    Ok(())
}

async fn serve(args: authgraph::config::ServeArgs) -> Result<(), String> {
    let config = Config::from_args(args).map_err(|e| e.to_string())?;
    app::serve(config).await.map_err(|e| e.to_string())
}

/// The new admin's password: `AUTHGRAPH_ADMIN_PASSWORD`, or one line of stdin.
fn admin_password() -> Result<String, authgraph::error::AppError> {
    if let Ok(p) = std::env::var("AUTHGRAPH_ADMIN_PASSWORD") {
        return Ok(p);
    }
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        eprint!("Password for the new admin: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| authgraph::error::AppError::internal(format!("reading the password: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn create_admin(args: authgraph::cli::CreateAdminArgs) -> Result<(), String> {
    let config = Config::from_args(args.serve).map_err(|e| e.to_string())?;
    let state = app::build(&config).await.map_err(|e| e.to_string())?;
    let (user, created) = authgraph::service::admin::create_or_promote_admin(
        &state.services,
        &args.email,
        args.name.as_deref(),
        admin_password,
    )
    .await
    .map_err(|e| e.to_string())?;
    if created {
        println!("created admin {} ({})", user.email.display(), user.id);
    } else {
        println!(
            "promoted {} ({}) to admin; running instances on PostgreSQL see it at once, a server on SQLite at the user's next login",
            user.email.display(),
            user.id
        );
    }
    Ok(())
}

/// `authgraph keys list | rotate | retire KID`.
async fn keys(command: KeysCommand) -> Result<(), String> {
    use authgraph::service::core::signing_keys;
    let args = match &command {
        KeysCommand::List(args) | KeysCommand::Rotate(args) => args.clone(),
        KeysCommand::Retire(retire) => retire.serve.clone(),
    };
    let config = Config::from_args(args).map_err(|e| e.to_string())?;
    let (db, keys) = app::keys_command(&config).await.map_err(|e| e.to_string())?;
    let now = config.clock.now();
    let show = |k: &entity::signing_key::Model| {
        let when = |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let life = match (k.retired_at, k.published_until) {
            // Retired before its time came: it signed nothing.
            (Some(_), Some(until)) if until <= k.signs_from => format!("called off {}", when(until)),
            (_, Some(until)) => format!("signs from {}  published until {}", when(k.signs_from), when(until)),
            (_, None) => format!("signs from {}  published while it signs", when(k.signs_from)),
        };
        format!("{}  {:<5}  {:<7}  {life}", k.kid, k.alg, k.state)
    };
    match command {
        KeysCommand::List(_) => {
            let rows = signing_keys::list(&db, &keys, now).await.map_err(|e| e.detail())?;
            if rows.is_empty() {
                println!("no signing keys yet: the first server to start makes one");
            }
            for row in rows {
                println!("{}", show(&row));
            }
        }
        KeysCommand::Rotate(_) => {
            let row = signing_keys::rotate(&db, &keys, now).await.map_err(|e| e.detail())?;
            println!("{}", show(&row));
            println!(
                "running instances publish it within 30 s and sign with it from {}",
                row.signs_from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
        }
        KeysCommand::Retire(retire) => {
            let row = signing_keys::retire(&db, &keys, &retire.kid, now).await.map_err(|e| match e {
                signing_keys::RetireError::App(e) => e.detail(),
                other => other.to_string(),
            })?;
            println!("{}", show(&row));
        }
    }
    Ok(())
}
