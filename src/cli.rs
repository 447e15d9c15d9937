//! The command line: `serve` (the default), `migrate`, `print-schema`.

use clap::{Args, Parser, Subcommand};

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
    /// Create an admin account, or promote an existing one. The password of a new
    /// account comes from AUTHGRAPH_ADMIN_PASSWORD or, when unset, standard input
    /// (never from a flag, which would land in shell history and `ps`)
    CreateAdmin(CreateAdminArgs),
}

#[derive(Args, Debug)]
pub struct CreateAdminArgs {
    /// The admin's email address
    #[arg(long)]
    pub email: String,

    /// Display name (default: the part of the email before the @)
    #[arg(long)]
    pub name: Option<String>,

    #[command(flatten)]
    pub serve: ServeArgs,
}
