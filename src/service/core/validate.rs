//! Input rules, checked before any hashing or database work. The same input gets
//! the same answer on every backend: characters a database could choke on (NUL,
//! control characters) are refused here, and so are invisible ones
//! ([`entity::keys::is_invisible`]: category Cf and the default-ignorable code
//! points, such as zero-width spaces, soft hyphens, variation selectors, Hangul
//! fillers and the bidirectional controls), which would let
//! `ad\u{200b}min@example.com` pass for `admin@example.com` on screen. What is
//! kept is in NFC, and what is compared is a key derived by [`entity::keys`].

use entity::keys::{is_invisible, is_pictographic};
use unicode_normalization::UnicodeNormalization;

use crate::{
    domain::Email,
    error::{AppError, Reason},
};

pub const EMAIL_MAX: usize = 254;
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;
pub const NAME_MAX: usize = 100;

/// Whether the invisible character at `i` of `chars` is one a name needs where
/// it stands: a zero-width joiner between pictographs (👩‍💻, ❤️‍🔥), a
/// zero-width non-joiner between letters (Persian and Indic scripts), an emoji
/// or text variation selector after a visible character, and the tag
/// characters of a subdivision flag (🏴 followed by tags). Anything else
/// invisible, a bidirectional control above all, is refused.
fn needed_in_name(chars: &[char], i: usize) -> bool {
    let prev = i.checked_sub(1).map(|j| chars[j]);
    let next = chars.get(i + 1).copied();
    let emoji_end = |c: char| is_pictographic(c) || c == '\u{FE0F}' || ('\u{1F3FB}'..='\u{1F3FF}').contains(&c);
    match chars[i] {
        '\u{200D}' => prev.is_some_and(emoji_end) && next.is_some_and(is_pictographic),
        '\u{200C}' => prev.is_some_and(char::is_alphabetic) && next.is_some_and(char::is_alphabetic),
        '\u{FE0E}' | '\u{FE0F}' => prev.is_some_and(|p| !is_invisible(p) && !p.is_whitespace()),
        '\u{E0020}'..='\u{E007F}' => prev.is_some_and(|p| p == '\u{1F3F4}' || ('\u{E0020}'..='\u{E007E}').contains(&p)),
        _ => false,
    }
}

/// A valid address: (as typed, trimmed and in NFC; its key by
/// [`entity::keys::email_key`], for uniqueness, lookups and rate-limit keys).
///
/// Errors: `INVALID_EMAIL` (field `email`) for an empty or over-long address
/// (254 characters, RFC 5321 §4.5.3.1.3), spaces, control or invisible
/// characters, a local part over 64 bytes or with characters that need quoting,
/// and a domain that IDNA UTS #46 (with the STD3 rules) refuses.
pub fn email(raw: &str) -> Result<Email, AppError> {
    let trimmed = raw.trim();
    let invalid = |msg: &str| AppError::invalid_input(Reason::InvalidEmail, "email", msg);
    if trimmed.is_empty() {
        return Err(invalid("Email is required"));
    }
    if trimmed.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid("Email must not contain spaces or control characters"));
    }
    if trimmed.chars().any(is_invisible) {
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
        && ascii
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= 63 && !label.starts_with('-') && !label.ends_with('-'));
    if !domain_ok || !local_ok {
        return Err(shape());
    }
    let key = entity::keys::email_key(&email).ok_or_else(|| invalid("Email is too long once its domain is encoded"))?;
    Ok(Email::from_parts(email, key))
}

/// Length only, counted in characters of the form that is hashed (NFKC, see
/// [`crate::auth::password::normalize`]); never truncated,
/// no composition rules (NIST SP 800-63B §5.1.1.2). Errors: `WEAK_PASSWORD`
/// (on `field`) below 8 or above 128 characters.
pub fn new_password(password: &str, field: &'static str) -> Result<(), AppError> {
    let n = password.nfkc().count();
    if n < PASSWORD_MIN {
        return Err(AppError::invalid_input(
            Reason::WeakPassword,
            field,
            format!("Password must be at least {PASSWORD_MIN} characters"),
        ));
    }
    if n > PASSWORD_MAX {
        return Err(AppError::invalid_input(
            Reason::WeakPassword,
            field,
            format!("Password must be at most {PASSWORD_MAX} characters"),
        ));
    }
    Ok(())
}

/// A display name, trimmed and in NFC. Errors: `INVALID_NAME` (field `name`) when
/// empty, over 100 characters, or holding control characters or invisible
/// characters other than those emoji and scripts need where they stand
/// ([`needed_in_name`]).
pub fn name(raw: &str) -> Result<String, AppError> {
    let name: String = raw.trim().nfc().collect();
    let invalid = |msg: &str| AppError::invalid_input(Reason::InvalidName, "name", msg);
    if name.is_empty() {
        return Err(invalid("Name must not be empty"));
    }
    if name.chars().count() > NAME_MAX {
        return Err(invalid("Name must be at most 100 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("Name must not contain control characters"));
    }
    let chars: Vec<char> = name.chars().collect();
    if (0..chars.len()).any(|i| is_invisible(chars[i]) && !needed_in_name(&chars, i)) {
        return Err(invalid("Name must not contain invisible or direction-changing characters"));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(r: Result<impl Sized, AppError>) -> &'static str {
        match r {
            Err(e) => e.reason().map_or("none", Reason::as_str),
            Ok(_) => "ok",
        }
    }

    #[test]
    fn emails() {
        let forms = |raw: &str| email(raw).map(|e| (e.display().to_owned(), e.key().to_owned())).unwrap();
        assert_eq!(forms("  Alice@X.com "), ("Alice@X.com".into(), "alice@x.com".into()));
        assert_eq!(forms("jose\u{301}@example.com"), ("jos\u{e9}@example.com".into(), "jos\u{e9}@example.com".into()));
        assert_eq!(forms("u@bu\u{308}cher.example").1, "u@xn--bcher-kva.example");
        for invisible in [
            "ad\u{200b}min@example.com",
            "ad\u{2060}min@example.com",
            "ad\u{ad}min@example.com",
            "ad\u{200d}min@example.com",
            "\u{feff}admin@example.com",
            "\u{202e}admin@example.com",
            "admin@exa\u{200b}mple.com",
            "ad\u{34f}min@example.com",
            "ad\u{fe0f}min@example.com",
            "\u{3164}admin@example.com",
            "ad\u{180b}min@example.com",
        ] {
            assert_eq!(reason(email(invisible)), "INVALID_EMAIL", "{invisible:?}");
        }
        assert!(email("jo.doe+tag@sub.example.co.uk").is_ok());
        assert!(email("üser@bücher.example").is_ok());
        for bad in [
            "",
            "plain",
            "@x.com",
            "a@",
            "a@b",
            "a b@x.com",
            "a@x..com",
            "a\0@x.com",
            "a@-x.com",
            ".a@x.com",
            "a..b@x.com",
            "a\u{7}@x.com",
            "a@x.com\u{0}",
        ] {
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
        assert_eq!(reason(name("\u{2764}\u{fe0f}\u{200d}\u{1f525} fan")), "ok");
        assert_eq!(reason(name("\u{1f3f4}\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f} Ada")), "ok");
        assert_eq!(reason(name("\u{645}\u{6cc}\u{200c}\u{62e}\u{648}\u{627}\u{647}\u{645}")), "ok");
        for bad in [
            "Ada\u{202e}",
            "\u{2066}Ada",
            "A\u{200b}da",
            "Ada\u{200f}",
            "\u{feff}Ada",
            "A\u{200d}da",
            "Ada\u{e0041}",
            "Ada\u{34f}",
            "\u{3164}",
            "Ada \u{3164}",
            "A\u{200c} da",
            "\u{fe0f}Ada",
        ] {
            assert_eq!(reason(name(bad)), "INVALID_NAME", "{bad:?}");
        }
    }
}
