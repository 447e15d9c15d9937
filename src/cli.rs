//! The command line: `serve` (the default), `migrate`, `print-schema`.

use clap::{Parser, Subcommand};

use crate::config::{DbArgs, ServeArgs};

#[derive(Parser, Debug)]
#[command(
    name = "authgraph",
    version,
    about = "GraphQL authentication server: accounts, JWT access tokens, rotating refresh tokens",
    long_about = "GraphQL authentication server: accounts, JWT access tokens, rotating refresh tokens.\n\n\
                  Without a subcommand it serves (like `authgraph serve`). Every option can also be \
                  set through the environment variable shown beside it, or a .env file.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply pending migrations, then serve HTTP (the default)
    Serve(ServeArgs),
    /// Apply pending migrations and exit
    Migrate(DbArgs),
    /// Print the GraphQL schema (SDL); identical to the committed schema.graphql
    PrintSchema,
}
