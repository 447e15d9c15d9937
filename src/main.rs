use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use authgraph::{
    app,
    cli::{Cli, Command},
    config::{Config, check_database_url},
    db, graphql,
};

fn main() -> ExitCode {
    // A missing .env is normal; a malformed one is worth saying.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: cannot read .env: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
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
        Some(Command::Migrate(args)) => {
            check_database_url(&args.database_url).map_err(|e| e.to_string())?;
            let conn = db::connect(&args.database_url, args.database_timeout, 1)
                .await
                .map_err(|e| format!("cannot open the database: {e}"))?;
            db::migrate(&conn).await.map_err(|e| format!("cannot apply migrations: {e}"))?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Some(Command::Serve(args)) => serve(args).await,
        None => serve(cli.serve).await,
    }
}

async fn serve(args: authgraph::config::ServeArgs) -> Result<(), String> {
    let config = Config::from_args(args).map_err(|e| e.to_string())?;
    app::serve(config).await.map_err(|e| e.to_string())
}
