//! Input rules, checked before any hashing or database work. The same input gets
//! the same answer on every backend: characters a database could choke on (NUL,
//! control characters) are refused here.

use crate::error::AppError;

pub const EMAIL_MAX: usize = 254;
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;
pub const NAME_MAX: usize = 100;

/// A valid address: (as typed but trimmed, lower-cased for uniqueness).
pub fn email(raw: &str) -> Result<(String, String), AppError> {
    let email = raw.trim();
    let invalid = |msg: &str| AppError::invalid_input("INVALID_EMAIL", "email", msg);
    if email.is_empty() {
        return Err(invalid("Email is required"));
    }
    if email.chars().count() > EMAIL_MAX {
        return Err(invalid("Email must be at most 254 characters"));
    }
    if email.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid("Email must not contain spaces or control characters"));
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return Err(invalid("Email must look like name@example.com"));
    };
    let domain_ok = domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.contains('@')
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && !local.contains(['"', '(', ')', ',', ':', ';', '<', '>', '[', ']', '\\']);
    if !domain_ok || !local_ok {
        return Err(invalid("Email must look like name@example.com"));
    }
    Ok((email.to_owned(), email.to_lowercase()))
}

/// Length only, counted in characters; never truncated, no composition rules.
pub fn new_password(password: &str, field: &'static str) -> Result<(), AppError> {
    let n = password.chars().count();
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

pub fn name(raw: &str) -> Result<String, AppError> {
    let name = raw.trim();
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
    Ok(name.to_owned())
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
        // No composition rules: a passphrase of lowercase words is fine.
        assert_eq!(reason(new_password("correct horse battery staple", "password")), "ok");
    }

    #[test]
    fn names() {
        assert_eq!(name("  Ada ").unwrap(), "Ada");
        assert_eq!(reason(name("   ")), "INVALID_NAME");
        assert_eq!(reason(name("a\u{0}b")), "INVALID_NAME");
        assert_eq!(reason(name(&"n".repeat(101))), "INVALID_NAME");
    }
}
