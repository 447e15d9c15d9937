//! Input rules, checked before any hashing or database work. The same input gets
//! the same answer on every backend: characters a database could choke on (NUL,
//! control characters) are refused here, and so are invisible ones (Unicode
//! category Cf: zero-width spaces, soft hyphens, byte-order marks, the
//! bidirectional controls), which would let `ad\u{200b}min@example.com` pass for
//! `admin@example.com` on screen. What is kept is in NFC, and what is compared is
//! a key derived by [`entity::keys`].

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::error::AppError;

pub const EMAIL_MAX: usize = 254;
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;
pub const NAME_MAX: usize = 100;

/// Invisible formatting characters (Unicode general category Cf), which include
/// every bidirectional control (U+061C, U+200E/F, U+202A–E, U+2066–9).
fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// Format characters a name may hold: the zero-width joiner and non-joiner
/// (emoji sequences such as 👩‍💻, and scripts such as Persian need them) and the
/// tag characters of flag sequences (🏴 + tags). Never a bidirectional control.
fn name_may_hold(c: char) -> bool {
    matches!(c, '\u{200C}' | '\u{200D}' | '\u{E0020}'..='\u{E007F}')
}

/// A valid address: (as typed, trimmed and in NFC; its key by
/// [`entity::keys::email_key`], for uniqueness, lookups and rate-limit keys).
///
/// Errors: `INVALID_EMAIL` (field `email`) for an empty or over-long address
/// (254 characters, RFC 5321 §4.5.3.1.3), spaces, control or invisible
/// characters, a local part over 64 bytes or with characters that need quoting,
/// and a domain that IDNA UTS #46 (with the STD3 rules) refuses.
pub fn email(raw: &str) -> Result<(String, String), AppError> {
    let trimmed = raw.trim();
    let invalid = |msg: &str| AppError::invalid_input("INVALID_EMAIL", "email", msg);
    if trimmed.is_empty() {
        return Err(invalid("Email is required"));
    }
    if trimmed.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid("Email must not contain spaces or control characters"));
    }
    if trimmed.chars().any(is_format) {
        return Err(invalid("Email must not contain invisible or direction-changing characters"));
    }
    let email: String = trimmed.nfc().collect();
    if email.chars().count() > EMAIL_MAX {
        return Err(invalid("Email must be at most 254 characters"));
    }
    let shape = || invalid("Email must look like name@example.com");
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err(shape());
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.contains('@')
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && !local.contains(['"', '(', ')', ',', ':', ';', '<', '>', '[', ']', '\\']);
    // The domain is judged in its ASCII form, so `bu\u{308}cher.example` and
    // `bücher.example` get the same answer.
    let ascii = entity::keys::domain_ascii(domain).ok_or_else(shape)?;
    let domain_ok = ascii.len() <= 253
        && ascii.contains('.')
        && ascii.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && !label.starts_with('-') && !label.ends_with('-')
        });
    if !domain_ok || !local_ok {
        return Err(shape());
    }
    let key = entity::keys::email_key(&email).ok_or_else(shape)?;
    Ok((email, key))
}

/// Length only, counted in characters of the form that is hashed (NFKC, see
/// [`crate::auth::password::normalize`]); never truncated,
/// no composition rules (NIST SP 800-63B §5.1.1.2). Errors: `WEAK_PASSWORD`
/// (on `field`) below 8 or above 128 characters.
pub fn new_password(password: &str, field: &'static str) -> Result<(), AppError> {
    let n = password.nfkc().count();
    if n < PASSWORD_MIN {
        return Err(AppError::invalid_input(
            "WEAK_PASSWORD",
            field,
            format!("Password must be at least {PASSWORD_MIN} characters"),
        ));
    }
    if n > PASSWORD_MAX {
        return Err(AppError::invalid_input(
            "WEAK_PASSWORD",
            field,
            format!("Password must be at most {PASSWORD_MAX} characters"),
        ));
    }
    Ok(())
}

/// A display name, trimmed and in NFC. Errors: `INVALID_NAME` (field `name`) when
/// empty, over 100 characters, or holding control characters or format
/// characters other than the joiners of [`name_may_hold`].
pub fn name(raw: &str) -> Result<String, AppError> {
    let name: String = raw.trim().nfc().collect();
    let invalid = |msg: &str| AppError::invalid_input("INVALID_NAME", "name", msg);
    if name.is_empty() {
        return Err(invalid("Name must not be empty"));
    }
    if name.chars().count() > NAME_MAX {
        return Err(invalid("Name must be at most 100 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("Name must not contain control characters"));
    }
    if name.chars().any(|c| is_format(c) && !name_may_hold(c)) {
        return Err(invalid("Name must not contain invisible or direction-changing characters"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(r: Result<impl Sized, AppError>) -> &'static str {
        match r {
            Err(e) => e.reason().unwrap_or("none"),
            Ok(_) => "ok",
        }
    }

    #[test]
    fn emails() {
        assert_eq!(email("  Alice@X.com ").unwrap(), ("Alice@X.com".into(), "alice@x.com".into()));
        assert_eq!(email("jose\u{301}@example.com").unwrap(), ("jos\u{e9}@example.com".into(), "jos\u{e9}@example.com".into()));
        assert_eq!(email("u@bu\u{308}cher.example").unwrap().1, "u@xn--bcher-kva.example");
        for invisible in ["ad\u{200b}min@example.com", "ad\u{2060}min@example.com", "ad\u{ad}min@example.com",
                          "ad\u{200d}min@example.com", "\u{feff}admin@example.com", "\u{202e}admin@example.com",
                          "admin@exa\u{200b}mple.com"] {
            assert_eq!(reason(email(invisible)), "INVALID_EMAIL", "{invisible:?}");
        }
        assert!(email("jo.doe+tag@sub.example.co.uk").is_ok());
        assert!(email("üser@bücher.example").is_ok());
        for bad in ["", "plain", "@x.com", "a@", "a@b", "a b@x.com", "a@x..com", "a\0@x.com",
                    "a@-x.com", ".a@x.com", "a..b@x.com", "a\u{7}@x.com", "a@x.com\u{0}"] {
            assert_eq!(reason(email(bad)), "INVALID_EMAIL", "{bad:?}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert_eq!(reason(email(&long)), "INVALID_EMAIL");
    }

    #[test]
    fn passwords_count_characters_and_are_never_truncated() {
        assert_eq!(reason(new_password("1234567", "password")), "WEAK_PASSWORD");
        assert_eq!(reason(new_password("12345678", "password")), "ok");
        assert_eq!(reason(new_password(&"é".repeat(128), "password")), "ok");
        assert_eq!(reason(new_password(&"x".repeat(129), "password")), "WEAK_PASSWORD");
        // Counted after NFKC: 128 composed accents typed decomposed are still 128.
        assert_eq!(reason(new_password(&"e\u{301}".repeat(128), "password")), "ok");
        // No composition rules: a passphrase of lowercase words is fine.
        assert_eq!(reason(new_password("correct horse battery staple", "password")), "ok");
    }

    #[test]
    fn names() {
        assert_eq!(name("  Ada ").unwrap(), "Ada");
        assert_eq!(reason(name("   ")), "INVALID_NAME");
        assert_eq!(reason(name("a\u{0}b")), "INVALID_NAME");
        assert_eq!(reason(name(&"n".repeat(101))), "INVALID_NAME");
        assert_eq!(name("E\u{301}lodie").unwrap(), "\u{c9}lodie");
        // Emoji sequences keep their joiners; bidi overrides and zero-width spaces go.
        assert_eq!(reason(name("Ada \u{1f469}\u{200d}\u{1f4bb}")), "ok");
        for bad in ["Ada\u{202e}", "\u{2066}Ada", "A\u{200b}da", "Ada\u{200f}", "\u{feff}Ada"] {
            assert_eq!(reason(name(bad)), "INVALID_NAME", "{bad:?}");
        }
    }
}
