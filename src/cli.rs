//! The command line: `serve` (the default), `migrate`, `print-schema`,
//! `create-admin`, `keys list | rotate | retire KID`.

use std::ffi::OsString;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, error::ErrorKind, parser::ValueSource};

use crate::{config::ServeArgs, telemetry::LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "authgraph",
    version,
    about = "GraphQL authentication server: accounts, JWT access tokens, rotating refresh tokens",
    long_about = "GraphQL authentication server: accounts, JWT access tokens, rotating refresh tokens.\n\n\
                  Without a subcommand it serves (like `authgraph serve`). Every option can also be \
                  set through the environment variable shown beside it, or a .env file."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Log format: `text` (coloured only when standard output is a terminal) or
    /// `json` (one JSON object per line). Accepted by every command
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub serve: ServeArgs,
}

impl Cli {
    /// Parses the process's arguments and environment, or prints clap's message
    /// and exits.
    pub fn parse_args() -> Self {
        Self::try_parse_args_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the program name first) and the environment. Options of
    /// `serve` given before a subcommand are refused rather than ignored;
    /// global options (`--log-format`) go before or after it.
    pub fn try_parse_args_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut cmd = Self::command();
        let matches = cmd.try_get_matches_from_mut(args)?;
        if let Some((name, _)) = matches.subcommand() {
            let misplaced = cmd.get_arguments().find(|arg| {
                !arg.is_global_set() && matches.value_source(arg.get_id().as_str()) == Some(ValueSource::CommandLine)
            });
            if let Some(arg) = misplaced {
                let flag = arg.get_long().map(|l| format!("--{l}")).unwrap_or_else(|| arg.get_id().to_string());
                return Err(cmd.error(
                    ErrorKind::ArgumentConflict,
                    format!(
                        "'{flag}' cannot come before the subcommand '{name}'; a subcommand's options follow its name"
                    ),
                ));
            }
        }
        Self::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Apply pending migrations, then serve HTTP (the default)
    Serve(ServeArgs),
    /// Apply pending migrations and exit (after checking the whole configuration)
    ///
    /// The whole configuration is read and checked first, as `serve` checks it:
    /// one that `serve` would refuse is refused here, with the same message,
    /// before the database is touched.
    Migrate(ServeArgs),
    /// Print the GraphQL schema (SDL); identical to the committed schema.graphql
    PrintSchema,
    /// Create an admin account, or promote an existing one. The password of a new
    /// account comes from AUTHGRAPH_ADMIN_PASSWORD or, when unset, standard input
    /// (never from a flag, which would land in shell history and `ps`)
    CreateAdmin(CreateAdminArgs),
    /// Manage the signing keys of an ES256 or EdDSA install (kept in the database)
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// List the keys, newest first: kid, alg, state, when each signs from and
    /// until when a retired one stays published
    List(ServeArgs),
    /// Start a rotation: a new key is published now and signs after
    /// JWT_KEY_LEAD_TIME, when the current one retires. Running instances load
    /// it within 30 s. While a new key is waiting already, shows that one
    Rotate(ServeArgs),
    /// Retire a key that does not sign now: a waiting key (a rotation called
    /// off) leaves the JWK Set at once. The key that signs is refused: rotate
    /// first, and it retires when its successor starts to sign
    Retire(RetireArgs),
}

#[derive(Args, Debug)]
pub struct RetireArgs {
    /// The key's id (`kid`), as `authgraph keys list` shows it
    pub kid: String,

    #[command(flatten)]
    pub serve: ServeArgs,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::try_parse_args_from(std::iter::once("authgraph").chain(args.iter().copied())).map_err(|e| e.to_string())
    }

    #[test]
    fn log_format_goes_before_or_after_any_subcommand() {
        assert_eq!(parse(&[]).unwrap().log_format, LogFormat::Text);
        assert_eq!(parse(&["--log-format", "json"]).unwrap().log_format, LogFormat::Json);
        for sub in ["serve", "migrate", "print-schema"] {
            assert_eq!(parse(&["--log-format", "json", sub]).unwrap().log_format, LogFormat::Json, "{sub}");
            assert_eq!(parse(&[sub, "--log-format", "json"]).unwrap().log_format, LogFormat::Json, "{sub}");
        }
        let e = parse(&["--log-format", "xml"]).unwrap_err();
        assert!(e.contains("LOG_FORMAT") && e.contains("text") && e.contains("json"), "{e}");
    }

    #[test]
    fn serve_options_before_a_subcommand_are_refused_not_ignored() {
        let e = parse(&["--listen-addr", "127.0.0.1:9", "print-schema"]).unwrap_err();
        assert!(e.contains("--listen-addr") && e.contains("print-schema"), "{e}");
        let cli = parse(&["--listen-addr", "127.0.0.1:9"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen_addr.port(), 9);
    }
}
