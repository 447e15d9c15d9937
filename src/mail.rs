//! Mail: what is sent (templates) and how (SMTP, or `.eml` files in
//! development). The rules of who gets which mail and when are in
//! the service layer (`service::recovery` for the links); the outbox that
//! makes delivery survive restarts and outages is `service::core::outbox`,
//! sent by `service::delivery`.

use std::{path::Path, path::PathBuf, time::Duration};

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
};
use minijinja::Environment;
use serde::Serialize;
use tokio::sync::Notify;

use crate::config::{MailConfig, MailDelivery};

/// What a mail is about. The name (`as_str`) is what the outbox stores and
/// what the templates are called (`<name>.txt`, `<name>.html`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A link that confirms the account's address.
    VerifyEmail,
    /// A link that sets a new password.
    ResetPassword,
    /// A link, to the new address, that confirms an address change.
    ConfirmEmailChange,
    /// To the old address: a change to another address was asked for.
    EmailChangeNotice,
    /// The password was changed or reset.
    PasswordChanged,
    /// An authenticator app was set up as a second factor.
    SecondFactorEnabled,
    /// The owner removed the authenticator.
    SecondFactorDisabled,
    /// An admin (or a service) removed every second factor of the account.
    SecondFactorsReset,
    /// A recovery code was used to sign in or re-authenticate.
    RecoveryCodeUsed,
    /// A new set of recovery codes replaced the old one.
    RecoveryCodesRegenerated,
    /// A passkey was added to the account.
    PasskeyAdded,
    /// A passkey was removed from the account.
    PasskeyRemoved,
}

/// The mails that carry a link with a one-time token; each has its app path
/// (`VERIFY_EMAIL_PATH`, `RESET_PASSWORD_PATH`, `CONFIRM_EMAIL_CHANGE_PATH`)
/// and its lifetime (`EMAIL_VERIFICATION_TTL`, `PASSWORD_RESET_TTL`,
/// `EMAIL_CHANGE_TTL`): [`Mailer::link`], [`Mailer::link_ttl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    VerifyEmail,
    ResetPassword,
    ConfirmEmailChange,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::VerifyEmail,
        Kind::ResetPassword,
        Kind::ConfirmEmailChange,
        Kind::EmailChangeNotice,
        Kind::PasswordChanged,
        Kind::SecondFactorEnabled,
        Kind::SecondFactorDisabled,
        Kind::SecondFactorsReset,
        Kind::RecoveryCodeUsed,
        Kind::RecoveryCodesRegenerated,
        Kind::PasskeyAdded,
        Kind::PasskeyRemoved,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::VerifyEmail => "verify_email",
            Kind::ResetPassword => "reset_password",
            Kind::ConfirmEmailChange => "confirm_email_change",
            Kind::EmailChangeNotice => "email_change_notice",
            Kind::PasswordChanged => "password_changed",
            Kind::SecondFactorEnabled => "second_factor_enabled",
            Kind::SecondFactorDisabled => "second_factor_disabled",
            Kind::SecondFactorsReset => "second_factors_reset",
            Kind::RecoveryCodeUsed => "recovery_code_used",
            Kind::RecoveryCodesRegenerated => "recovery_codes_regenerated",
            Kind::PasskeyAdded => "passkey_added",
            Kind::PasskeyRemoved => "passkey_removed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The link with a one-time token this kind of mail carries (the token's
    /// purpose is the kind's name), if any. Every kind is named here, so a new
    /// kind must say whether it carries one.
    pub const fn link(self) -> Option<LinkKind> {
        match self {
            Kind::VerifyEmail => Some(LinkKind::VerifyEmail),
            Kind::ResetPassword => Some(LinkKind::ResetPassword),
            Kind::ConfirmEmailChange => Some(LinkKind::ConfirmEmailChange),
            Kind::EmailChangeNotice
            | Kind::PasswordChanged
            | Kind::SecondFactorEnabled
            | Kind::SecondFactorDisabled
            | Kind::SecondFactorsReset
            | Kind::RecoveryCodeUsed
            | Kind::RecoveryCodesRegenerated
            | Kind::PasskeyAdded
            | Kind::PasskeyRemoved => None,
        }
    }

    /// Whether the mail carries a link ([`Kind::link`]).
    pub const fn has_link(self) -> bool {
        self.link().is_some()
    }

    fn builtin(self) -> (&'static str, &'static str) {
        match self {
            Kind::VerifyEmail => {
                (include_str!("../assets/mail/verify_email.txt"), include_str!("../assets/mail/verify_email.html"))
            }
            Kind::ResetPassword => {
                (include_str!("../assets/mail/reset_password.txt"), include_str!("../assets/mail/reset_password.html"))
            }
            Kind::ConfirmEmailChange => (
                include_str!("../assets/mail/confirm_email_change.txt"),
                include_str!("../assets/mail/confirm_email_change.html"),
            ),
            Kind::EmailChangeNotice => (
                include_str!("../assets/mail/email_change_notice.txt"),
                include_str!("../assets/mail/email_change_notice.html"),
            ),
            Kind::PasswordChanged => (
                include_str!("../assets/mail/password_changed.txt"),
                include_str!("../assets/mail/password_changed.html"),
            ),
            Kind::SecondFactorEnabled => (
                include_str!("../assets/mail/second_factor_enabled.txt"),
                include_str!("../assets/mail/second_factor_enabled.html"),
            ),
            Kind::SecondFactorDisabled => (
                include_str!("../assets/mail/second_factor_disabled.txt"),
                include_str!("../assets/mail/second_factor_disabled.html"),
            ),
            Kind::RecoveryCodeUsed => (
                include_str!("../assets/mail/recovery_code_used.txt"),
                include_str!("../assets/mail/recovery_code_used.html"),
            ),
            Kind::PasskeyAdded => {
                (include_str!("../assets/mail/passkey_added.txt"), include_str!("../assets/mail/passkey_added.html"))
            }
            Kind::SecondFactorsReset => (
                include_str!("../assets/mail/second_factors_reset.txt"),
                include_str!("../assets/mail/second_factors_reset.html"),
            ),
            Kind::RecoveryCodesRegenerated => (
                include_str!("../assets/mail/recovery_codes_regenerated.txt"),
                include_str!("../assets/mail/recovery_codes_regenerated.html"),
            ),
            Kind::PasskeyRemoved => (
                include_str!("../assets/mail/passkey_removed.txt"),
                include_str!("../assets/mail/passkey_removed.html"),
            ),
        }
    }
}

/// The built-in template of a file name (`verify_email.txt`, `layout.html`, …).
fn builtin_template(name: &str) -> Option<&'static str> {
    if name == "layout.html" {
        return Some(include_str!("../assets/mail/layout.html"));
    }
    let (stem, ext) = name.rsplit_once('.')?;
    let (text, html) = Kind::parse(stem)?.builtin();
    match ext {
        "txt" => Some(text),
        "html" => Some(html),
        _ => None,
    }
}

/// Logs which built-in templates the files in `dir` replace, and warns of
/// files that replace none (a misspelt name). Errors: `dir` cannot be read.
fn report_overrides(dir: &Path) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("MAIL_TEMPLATES_DIR {}: {e}", dir.display()))?;
    let (mut used, mut unknown) = (Vec::new(), Vec::new());
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if builtin_template(&name).is_some() { used.push(name) } else { unknown.push(name) }
    }
    used.sort();
    unknown.sort();
    tracing::info!(dir = %dir.display(), replaced = ?used, "mail templates from MAIL_TEMPLATES_DIR");
    if !unknown.is_empty() {
        tracing::warn!(
            dir = %dir.display(), files = ?unknown,
            "these files replace no built-in mail template and are not used unless a template includes them \
             (the names are <kind>.txt, <kind>.html and layout.html)"
        );
    }
    Ok(())
}

/// What a template sees.
#[derive(Debug, Clone, Serialize)]
pub struct MailContext {
    /// The account's name: text the account's holder chose, whoever that is.
    /// The built-in templates leave it out, since a confirmation goes to an
    /// address not yet proven to be the holder's (a stranger's, if the
    /// holder is an attacker) and must carry no text of theirs.
    pub name: String,
    /// The address the mail goes to, as typed.
    pub recipient: String,
    /// For an address change: the new address.
    pub new_email: Option<String>,
    /// The link, for the kinds that have one.
    pub link: Option<String>,
    /// How long the link works, in words ("1 hour", "24 hours").
    pub expires_in: Option<String>,
    /// `APP_URL`.
    pub app_url: String,
}

/// A mail, rendered.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The mail templates: the built-in ones (`assets/mail/`), each replaced by a
/// file of the same name in `MAIL_TEMPLATES_DIR` when there is one. Plain
/// text is `<kind>.txt` with the blocks `subject` and `text`; HTML is
/// `<kind>.html` (auto-escaped; the built-ins extend `layout.html`).
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Loads the templates and renders each once with sample values, so that a
    /// broken override stops the start instead of the first mail.
    /// Errors: a template that does not parse or render, named.
    ///
    /// A variable a template names that the context lacks (a typo) is an
    /// error, not an empty string. Files in `dir` that replace no built-in are
    /// reported in the log, as are the ones that do.
    pub fn load(dir: Option<&Path>) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_formatter(html_formatter);
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        if let Some(dir) = dir {
            report_overrides(dir)?;
        }
        let overrides = dir.map(minijinja::path_loader);
        env.set_loader(move |name| {
            if let Some(load) = &overrides
                && let Some(text) = load(name)?
            {
                return Ok(Some(text));
            }
            Ok(builtin_template(name).map(str::to_owned))
        });
        let templates = Self { env };
        for kind in Kind::ALL {
            let sample = MailContext {
                name: "Ada".into(),
                recipient: "ada@example.com".into(),
                new_email: Some("ada@example.org".into()),
                link: Some("https://app.example.com/path?token=sample".into()),
                expires_in: Some("1 hour".into()),
                app_url: "https://app.example.com".into(),
            };
            templates.render(kind, &sample)?;
        }
        Ok(templates)
    }

    /// Renders the subject, plain text and HTML of `kind`.
    /// Errors: the template's error, named (no values of the context).
    pub fn render(&self, kind: Kind, ctx: &MailContext) -> Result<Rendered, String> {
        let named = |file: &str, e: minijinja::Error| format!("mail template {file}: {e}");
        let txt = format!("{}.txt", kind.as_str());
        let html = format!("{}.html", kind.as_str());
        let text_template = self.env.get_template(&txt).map_err(|e| named(&txt, e))?;
        let mut captured = text_template.render_captured(ctx).map_err(|e| named(&txt, e))?;
        let (subject, text) = captured
            .with_state_mut(|state| {
                Ok::<_, minijinja::Error>((state.render_block("subject")?, state.render_block("text")?))
            })
            .map_err(|e| named(&txt, e))?;
        let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
        if subject.is_empty() {
            return Err(format!("mail template {txt}: the `subject` block is empty"));
        }
        let html = self.env.get_template(&html).and_then(|t| t.render(ctx)).map_err(|e| named(&html, e))?;
        Ok(Rendered { subject, text: text.trim().to_owned() + "\n", html })
    }
}

/// minijinja's formatter, except that HTML is escaped without `/`: the five
/// characters that can end an attribute or start markup (`& < > " '`) are
/// escaped, and a link stays readable as a URL to the mail clients, scanners
/// and link-rewriting proxies that look for one (minijinja also escapes `/`).
fn html_formatter(
    out: &mut minijinja::Output<'_>,
    state: &minijinja::State<'_, '_>,
    value: &minijinja::Value,
) -> Result<(), minijinja::Error> {
    if state.auto_escape() != minijinja::AutoEscape::Html || value.is_safe() || value.is_undefined() || value.is_none()
    {
        return minijinja::escape_formatter(out, state, value);
    }
    let text = value.to_string();
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    out.write_str(&escaped).map_err(|_| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, "writing a template"))
}

/// Why a send failed.
#[derive(Debug)]
pub enum SendError {
    /// Worth retrying: the server is unreachable, timed out, or answered 4xx.
    Transient(String),
    /// Not worth retrying: the server refused this mail (5xx), or the mail
    /// cannot be made (an address SMTP cannot carry).
    Permanent(String),
}

/// Where mail goes.
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files(PathBuf),
}

/// How long one SMTP conversation may take, connection included.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Makes and sends mail for the outbox: the templates, the transport, the
/// sender, and the links' shape.
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
    templates: Templates,
    /// Wakes the outbox's sender when a mail was queued on this instance.
    pub queued: Notify,
    pub config: MailConfig,
}

impl Mailer {
    /// Checks `MAIL_FROM`, loads the templates and opens the transport (a
    /// pooled SMTP client, or the mail folder, created if missing). Must run
    /// inside the runtime. Errors name the variable.
    pub fn new(config: &MailConfig) -> Result<Self, String> {
        let from: Mailbox =
            config.from.parse().map_err(|e| format!("MAIL_FROM `{}` is not a mailbox: {e}", config.from))?;
        let templates = Templates::load(config.templates_dir.as_deref())?;
        let transport = match &config.delivery {
            MailDelivery::Smtp(url) => {
                let url = std::str::from_utf8(url.expose()).map_err(|_| "SMTP_URL is not UTF-8".to_owned())?;
                // lettre's own message can quote the URL, password included: not shown.
                let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|_| {
                    "SMTP_URL is not an SMTP URL lettre accepts (smtps://user:pass@host:465, \
                     smtp://user:pass@host:587?tls=required, smtp://127.0.0.1:2525)"
                        .to_owned()
                })?;
                Transport::Smtp(builder.timeout(Some(SEND_TIMEOUT)).build())
            }
            MailDelivery::Files(dir) => {
                create_private_dir(dir).map_err(|e| format!("MAIL_DIR: cannot create {}: {e}", dir.display()))?;
                Transport::Files(dir.clone())
            }
        };
        Ok(Self { transport, from, templates, queued: Notify::new(), config: config.clone() })
    }

    /// Logs where mail goes, and, for SMTP, whether the server answers (a
    /// warning when it does not: mail then waits in the outbox). Never the
    /// URL's credentials.
    pub async fn report(&self) {
        match &self.transport {
            Transport::Files(dir) => tracing::info!(
                dir = %dir.display(),
                "SMTP_URL is unset: mail (password resets, verification links) is written as .eml files to this folder"
            ),
            Transport::Smtp(smtp) => {
                let host = match &self.config.delivery {
                    MailDelivery::Smtp(url) => crate::config::smtp_host(&String::from_utf8_lossy(url.expose())),
                    MailDelivery::Files(_) => String::new(),
                };
                match tokio::time::timeout(SEND_TIMEOUT, smtp.test_connection()).await {
                    Ok(Ok(true)) => tracing::info!(%host, "mail is sent through this SMTP server; it answers"),
                    Ok(Ok(false)) => {
                        tracing::warn!(%host, "the SMTP server did not accept a connection test; mail waits in the outbox until it does")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%host, error = %smtp_error(&e), "the SMTP server cannot be reached; mail waits in the outbox until it can")
                    }
                    Err(_) => {
                        tracing::warn!(%host, "the SMTP server did not answer within 30s; mail waits in the outbox until it does")
                    }
                }
            }
        }
    }

    /// The app's link for `kind` carrying `token`: `APP_URL` + the kind's path
    /// + `?token=…` (the token is base64url: nothing to escape).
    pub fn link(&self, kind: LinkKind, token: &str) -> String {
        let path = match kind {
            LinkKind::VerifyEmail => &self.config.verify_email_path,
            LinkKind::ResetPassword => &self.config.reset_password_path,
            LinkKind::ConfirmEmailChange => &self.config.confirm_email_change_path,
        };
        format!("{}{}?token={token}", self.config.app_url, path)
    }

    /// How long a link of `kind` works.
    pub fn link_ttl(&self, kind: LinkKind) -> Duration {
        match kind {
            LinkKind::VerifyEmail => self.config.email_verification_ttl,
            LinkKind::ResetPassword => self.config.password_reset_ttl,
            LinkKind::ConfirmEmailChange => self.config.email_change_ttl,
        }
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// Sends one mail to `to` (the address as typed; its key's domain, already
    /// IDNA ASCII, is what SMTP is given). `id` becomes the Message-ID's left
    /// part. Returns the file written, when mail goes to files.
    /// Errors: [`SendError`], whose text never holds the message.
    pub async fn send(&self, id: &str, to: &str, to_key: &str, mail: Rendered) -> Result<Option<PathBuf>, SendError> {
        let to = address(to, to_key)?;
        let domain = self.from.email.domain().to_owned();
        let message = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(mail.subject)
            .message_id(Some(format!("<{id}@{domain}>")))
            .multipart(MultiPart::alternative_plain_html(mail.text, mail.html))
            .map_err(|e| SendError::Permanent(format!("cannot build the message: {e}")))?;
        match &self.transport {
            Transport::Smtp(smtp) => match tokio::time::timeout(SEND_TIMEOUT, smtp.send(message)).await {
                Err(_) => Err(SendError::Transient(format!("no answer within {}s", SEND_TIMEOUT.as_secs()))),
                Ok(Ok(_)) => Ok(None),
                Ok(Err(e)) if refuses_the_recipient(&e) => Err(SendError::Permanent(smtp_error(&e))),
                // 4xx, other 5xx (credentials, a quota, policy: the server's
                // state, not this mail's), a refused or broken connection,
                // TLS, a time-out: retried.
                Ok(Err(e)) => Err(SendError::Transient(smtp_error(&e))),
            },
            Transport::Files(dir) => write_mail_file(dir, &message.formatted())
                .await
                .map(Some)
                .map_err(|e| SendError::Transient(format!("writing mail: {e}"))),
        }
    }
}

/// Writes one mail as `<random UUID>.eml` in `dir`, whole or not at all: the
/// bytes go to a hidden `.<UUID>.eml.part` first, created readable by the
/// server's user only (mode 0600 on Unix: the mail holds a live link), then
/// the file is renamed. A reader of the folder (a developer's mail viewer, a
/// test) never sees half a mail or a readable one. Returns the file's path.
async fn write_mail_file(dir: &Path, bytes: &[u8]) -> std::io::Result<PathBuf> {
    use tokio::io::AsyncWriteExt;
    let name = uuid::Uuid::new_v4();
    let part = dir.join(format!(".{name}.eml.part"));
    let file = dir.join(format!("{name}.eml"));
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut out = options.open(&part).await?;
    let written = async {
        out.write_all(bytes).await?;
        out.sync_all().await
    }
    .await;
    drop(out);
    match written {
        Ok(()) => tokio::fs::rename(&part, &file).await.map(|()| file),
        Err(e) => {
            let _ = tokio::fs::remove_file(&part).await;
            Err(e)
        }
    }
}

/// Whether the server refused this mail's recipient for good: the 5xx
/// replies RFC 5321 (section 4.2.3) gives for a mailbox (550 unavailable,
/// 551 not local, 553 name not allowed) and a malformed parameter (501, 555),
/// which retrying cannot change. Every other 5xx (535 authentication, 554
/// and 552 quotas and policies, 530) says something about the server or the
/// account with it, which an operator fixes; those mails are retried.
fn refuses_the_recipient(e: &lettre::transport::smtp::Error) -> bool {
    e.is_permanent() && e.status().is_some_and(|code| matches!(u16::from(code), 501 | 550 | 551 | 553 | 555))
}

/// Creates the mail folder, readable by the server's user only (mode 0700)
/// when it makes it; a folder that exists keeps the mode its owner gave it.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// An SMTP error for the log: lettre's text, and the server's code when it
/// answered (its text names no credential: the URL is never in it).
fn smtp_error(e: &lettre::transport::smtp::Error) -> String {
    match e.status() {
        Some(code) => format!("SMTP {code}: {e}"),
        None => format!("SMTP: {e}"),
    }
}

/// The SMTP address of `display` (as typed): its local part, and the domain of
/// its key, which is IDNA ASCII. Errors: `Permanent` for an address SMTP
/// cannot carry.
fn address(display: &str, key: &str) -> Result<lettre::Address, SendError> {
    let local = display.rsplit_once('@').map(|(l, _)| l);
    let domain = key.rsplit_once('@').map(|(_, d)| d);
    let (Some(local), Some(domain)) = (local, domain) else {
        return Err(SendError::Permanent("the recipient is not an address".into()));
    };
    lettre::Address::new(local, domain).map_err(|e| SendError::Permanent(format!("the recipient: {e}")))
}

/// A duration in words for a mail ("1 hour", "24 hours", "30 minutes").
pub fn in_words(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = if secs.is_multiple_of(86_400) && secs >= 2 * 86_400 {
        (secs / 86_400, "day")
    } else if secs.is_multiple_of(3600) {
        (secs / 3600, "hour")
    } else {
        (secs.div_ceil(60), "minute")
    };
    if n == 1 { format!("1 {unit}") } else { format!("{n} {unit}s") }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mail file appears whole, under its final name only, private from
    /// its first byte; no part file is left behind.
    #[tokio::test]
    async fn a_mail_file_is_written_whole_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"To: a@example.com\r\nSubject: x\r\n\r\nbody\r\n".repeat(1000);
        let file = write_mail_file(dir.path(), &bytes).await.unwrap();
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, [file.file_name().unwrap().to_str().unwrap()], "only the finished .eml");
        assert!(names[0].ends_with(".eml") && !names[0].starts_with('.'), "{names:?}");
        assert_eq!(std::fs::read(&file).unwrap(), bytes);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    fn ctx() -> MailContext {
        MailContext {
            name: "<b>Mallory</b> \"q\" 'a' & co".into(),
            recipient: "m@example.com".into(),
            new_email: Some("n@example.com".into()),
            link: Some("https://app.example.com/reset-password?token=abc".into()),
            expires_in: Some("1 hour".into()),
            app_url: "https://app.example.com".into(),
        }
    }

    #[test]
    fn builtins_render_with_the_link_and_escape_html() {
        let t = Templates::load(None).unwrap();
        for kind in Kind::ALL {
            let r = t.render(kind, &ctx()).unwrap();
            assert!(!r.subject.is_empty() && !r.subject.contains('\n'), "{kind:?}");
            assert_eq!(r.text.contains("token=abc"), kind.has_link(), "{kind:?}: {}", r.text);
            assert_eq!(r.html.contains("token=abc"), kind.has_link(), "{kind:?}");
            assert!(!r.html.contains("Mallory") && !r.text.contains("Mallory"), "{kind:?}: no user-chosen text");
            if kind.has_link() {
                let href = r#"href="https://app.example.com/reset-password?token=abc""#;
                assert!(r.html.contains(href), "{kind:?}: the link is a plain URL: {}", r.html);
            }
        }
    }

    #[test]
    fn a_folder_overrides_by_name_and_a_broken_override_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("reset_password.txt"),
            "{% block subject %}Reset at Acme{% endblock %}{% block text %}Go: {{ link }}{% endblock %}",
        )
        .unwrap();
        let t = Templates::load(Some(dir.path())).unwrap();
        let r = t.render(Kind::ResetPassword, &ctx()).unwrap();
        assert_eq!(r.subject, "Reset at Acme");
        assert_eq!(r.text, "Go: https://app.example.com/reset-password?token=abc\n");
        assert!(r.html.contains("Choose a new password"), "the built-in HTML stays");
        std::fs::write(dir.path().join("verify_email.html"), "{% if %}").unwrap();
        let e = Templates::load(Some(dir.path())).err().unwrap();
        assert!(e.contains("verify_email.html"), "{e}");
    }

    /// What a template prints in HTML is escaped (quotes too, for attributes);
    /// a link stays a plain URL.
    #[test]
    fn html_is_escaped_but_links_stay_urls() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("reset_password.html"),
            r#"<p title="{{ name }}">{{ name }}</p><a href="{{ link }}">go</a>"#,
        )
        .unwrap();
        let r = Templates::load(Some(dir.path())).unwrap().render(Kind::ResetPassword, &ctx()).unwrap();
        let name = "&lt;b&gt;Mallory&lt;/b&gt; &quot;q&quot; &#39;a&#39; &amp; co";
        assert_eq!(
            r.html,
            format!(r#"<p title="{name}">{name}</p><a href="https://app.example.com/reset-password?token=abc">go</a>"#)
        );
    }

    #[test]
    fn a_misspelt_variable_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("password_changed.txt"),
            "{% block subject %}Hi {{ nmae }}{% endblock %}{% block text %}x{% endblock %}",
        )
        .unwrap();
        let e = Templates::load(Some(dir.path())).err().unwrap();
        assert!(e.contains("password_changed.txt") && e.contains("undefined"), "{e}");
    }

    #[test]
    fn durations_in_words() {
        assert_eq!(in_words(Duration::from_secs(3600)), "1 hour");
        assert_eq!(in_words(Duration::from_secs(86_400)), "24 hours");
        assert_eq!(in_words(Duration::from_secs(3 * 86_400)), "3 days");
        assert_eq!(in_words(Duration::from_secs(90)), "2 minutes");
    }

    #[test]
    fn addresses_go_out_with_an_ascii_domain() {
        let a = address("Zoë@Bücher.example", "zoë@xn--bcher-kva.example").unwrap();
        assert_eq!(a.domain(), "xn--bcher-kva.example");
        assert_eq!(a.user(), "Zoë");
        assert!(matches!(address("nobody", "nobody"), Err(SendError::Permanent(_))));
    }
}
