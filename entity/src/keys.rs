//! How the stored lookup keys are derived from what people type.
//!
//! Several spellings of one string must give one key: `josé` typed composed
//! (U+00E9) or decomposed (`e` + U+0301), `ÉLODIE` and `élodie`, `bücher.example`
//! and `xn--bcher-kva.example`. The rules are Unicode's own, from well-kept
//! implementations, never hand-written tables:
//! - canonical composition, NFC (UAX #15, `unicode-normalization`);
//! - full case folding (Unicode `CaseFolding.txt`, C + F mappings, `icu_casemap`),
//!   so `ß` and `ss`, `Σ` and `ς` and `σ` match as a case-insensitive comparison
//!   should; `to_lowercase` would not;
//! - the domain of an address by IDNA UTS #46 to its ASCII form (`idna`), which
//!   also folds case and width there.
//!
//! The same functions key new rows and re-key old ones (the migration that
//! introduced them), so both always agree.

use icu_casemap::CaseMapper;
use idna::AsciiDenyList;
use unicode_normalization::UnicodeNormalization;

/// NFC, then full case folding, then NFC again (folding can leave a sequence
/// that composes further, e.g. `ǰ` folds to `j` + U+030C). Idempotent.
pub fn fold(s: &str) -> String {
    let nfc: String = s.nfc().collect();
    CaseMapper::new().fold_string(&nfc).nfc().collect()
}

/// The ASCII form of a domain by UTS #46 (with the STD3 rules: letters, digits
/// and hyphens only), lower-cased; `None` when the domain is not valid under it.
pub fn domain_ascii(domain: &str) -> Option<String> {
    idna::domain_to_ascii_cow(domain.as_bytes(), AsciiDenyList::STD3).ok().map(|d| d.into_owned())
}

/// The uniqueness and lookup key of an address (`users.email_normalized`):
/// `fold(local)@ascii(domain)`. `None` when there is no `@` or the domain is not
/// valid under UTS #46. The caller validates the address's shape first.
pub fn email_key(address: &str) -> Option<String> {
    let (local, domain) = address.trim().rsplit_once('@')?;
    Some(format!("{}@{}", fold(local), domain_ascii(domain)?))
}

/// What the admin search matches against (`users.search_key`): the folded name
/// and the folded address as typed (so `bücher` finds `u@bücher.example`), one
/// per line.
pub fn search_key(name: &str, email: &str) -> String {
    format!("{}\n{}", fold(name), fold(email.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_for_every_spelling() {
        assert_eq!(email_key("jos\u{e9}@example.com"), email_key("jose\u{301}@example.com"));
        assert_eq!(email_key("JOSÉ@Example.COM").as_deref(), Some("josé@example.com"));
        assert_eq!(email_key("u@bu\u{308}cher.example"), email_key("u@b\u{fc}cher.example"));
        assert_eq!(email_key("u@BÜCHER.example").as_deref(), Some("u@xn--bcher-kva.example"));
        assert_eq!(email_key("u@xn--bcher-kva.example").as_deref(), Some("u@xn--bcher-kva.example"));
        assert_eq!(email_key("STRASSE@x.de"), email_key("straße@x.de"));
        assert_eq!(fold("ÉLODIE"), fold("élodie"));
        assert_eq!(fold("E\u{301}lodie"), "élodie");
        assert_eq!(fold("ДМИТРИЙ"), "дмитрий");
        assert_eq!(fold(&fold("ǰ")), fold("ǰ"));
        assert_eq!(email_key("no-at-sign"), None);
        assert_eq!(email_key("a@under_score.example"), None);
    }

    #[test]
    fn search_keys_fold_name_and_address() {
        assert_eq!(search_key("Élodie Ünal", "Elo@Bücher.example"), "élodie ünal\nelo@bücher.example");
    }
}
