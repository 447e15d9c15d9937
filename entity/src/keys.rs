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
use icu_properties::{
    CodePointMapData, CodePointSetData,
    props::{DefaultIgnorableCodePoint, ExtendedPictographic, GeneralCategory},
};
use idna::AsciiDenyList;
use unicode_normalization::UnicodeNormalization;

/// The longest key an address may have: `users.email_normalized` holds 254
/// characters (IDNA can lengthen a domain, so a valid address can exceed it).
pub const EMAIL_KEY_MAX: usize = 254;

/// Characters that show nothing (Unicode general category Cf, which includes
/// every bidirectional control, and the Default_Ignorable_Code_Point property:
/// zero-width spaces and joiners, soft hyphens, variation selectors, the
/// combining grapheme joiner, Hangul fillers, tag characters). Two strings that
/// differ only in these look the same on screen.
pub fn is_invisible(c: char) -> bool {
    CodePointMapData::<GeneralCategory>::new().get(c) == GeneralCategory::Format
        || CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c)
}

/// An emoji-like pictograph (Unicode Extended_Pictographic), what a zero-width
/// joiner may join.
pub fn is_pictographic(c: char) -> bool {
    CodePointSetData::new::<ExtendedPictographic>().contains(c)
}

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
/// `fold(local)@ascii(domain)`. `None` when there is no `@`, the address holds an
/// [invisible](is_invisible) character, the domain is not valid under UTS #46,
/// or the key would exceed [`EMAIL_KEY_MAX`] characters. The caller validates
/// the rest of the address's shape.
pub fn email_key(address: &str) -> Option<String> {
    let address = address.trim();
    if address.chars().any(is_invisible) {
        return None;
    }
    let (local, domain) = address.rsplit_once('@')?;
    let key = format!("{}@{}", fold(local), domain_ascii(domain)?);
    (key.chars().count() <= EMAIL_KEY_MAX).then_some(key)
}

/// What the admin search matches against (`users.search_key`): the folded name,
/// the folded address as typed (so `bücher` finds `u@bücher.example`) and, when
/// it differs, the address's key (so `xn--bcher-kva` finds it too), one per line.
pub fn search_key(name: &str, email: &str) -> String {
    let shown = fold(email.trim());
    match email_key(email).filter(|key| *key != shown) {
        Some(key) => format!("{}\n{shown}\n{key}", fold(name)),
        None => format!("{}\n{shown}", fold(name)),
    }
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
        for invisible in [
            "ad\u{200b}min@x.com",
            "ad\u{34f}min@x.com",
            "ad\u{fe0f}min@x.com",
            "\u{3164}a@x.com",
            "a\u{180b}b@x.com",
            "a\u{e0041}@x.com",
            "\u{202e}a@x.com",
        ] {
            assert_eq!(email_key(invisible), None, "{invisible:?}");
        }
        // Folding (ß to ss) and IDNA lengthen an address: a key past the column's
        // 254 characters is refused, one just within it is kept.
        let long = format!("{}@x.com", "\u{df}".repeat(125));
        assert_eq!(long.chars().count(), 131);
        assert_eq!(email_key(&long), None);
        let fits = format!("{}@x.com", "\u{df}".repeat(124));
        assert_eq!(email_key(&fits).map(|k| k.chars().count()), Some(254));
    }

    #[test]
    fn search_keys_fold_name_and_address() {
        assert_eq!(
            search_key("Élodie Ünal", "Elo@Bücher.example"),
            "élodie ünal\nelo@bücher.example\nelo@xn--bcher-kva.example"
        );
        assert_eq!(search_key("Ada", "ada@example.com"), "ada\nada@example.com");
    }
}
