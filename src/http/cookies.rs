//! The refresh-token cookie, exactly as the contract fixes it:
//! `HttpOnly; Secure; SameSite=Strict; Path=/`, no `Domain`, `Max-Age` the
//! remaining lifetime, named `__Host-refresh_token` when `Secure`.

use poem::web::cookie::{Cookie, CookieJar, SameSite};

#[derive(Debug, Clone)]
pub struct CookiePolicy {
    name: &'static str,
    secure: bool,
}

impl CookiePolicy {
    pub fn new(name: &'static str, secure: bool) -> Self {
        Self { name, secure }
    }

    fn build(&self, value: &str, max_age: i64) -> String {
        let mut c = Cookie::new_with_str(self.name, value);
        c.set_http_only(true);
        c.set_secure(self.secure);
        c.set_same_site(SameSite::Strict);
        c.set_path("/");
        c.set_max_age(std::time::Duration::from_secs(max_age.max(0) as u64));
        c.to_string()
    }

    /// `Set-Cookie` value carrying a refresh token.
    pub fn set(&self, token: &str, max_age_secs: i64) -> String {
        self.build(token, max_age_secs)
    }

    /// `Set-Cookie` value that deletes the cookie (same name, path and flags).
    pub fn clear(&self) -> String {
        self.build("", 0)
    }

    /// The refresh token from a request's `Cookie` headers.
    pub fn read(&self, headers: &poem::http::HeaderMap) -> Option<String> {
        headers
            .get_all(poem::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.parse::<CookieJar>().ok())
            .find_map(|jar| jar.get(self.name).map(|c| c.value_str().to_owned()))
            .filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_attributes_follow_the_contract() {
        let p = CookiePolicy::new("__Host-refresh_token", true);
        let set = p.set("abc", 604800);
        for part in ["__Host-refresh_token=abc", "HttpOnly", "Secure", "SameSite=Strict", "Path=/", "Max-Age=604800"] {
            assert!(set.contains(part), "{set} lacks {part}");
        }
        assert!(!set.to_ascii_lowercase().contains("domain"), "{set}");
        let clear = p.clear();
        for part in ["__Host-refresh_token=", "HttpOnly", "Secure", "SameSite=Strict", "Path=/", "Max-Age=0"] {
            assert!(clear.contains(part), "{clear} lacks {part}");
        }
        let dev = CookiePolicy::new("refresh_token", false).set("abc", 10);
        assert!(!dev.contains("Secure") && dev.starts_with("refresh_token=abc"), "{dev}");
    }

    #[test]
    fn reads_the_named_cookie_only() {
        let p = CookiePolicy::new("refresh_token", false);
        let mut h = poem::http::HeaderMap::new();
        h.insert("cookie", "other=1; refresh_token=tok; x=2".parse().unwrap());
        assert_eq!(p.read(&h).as_deref(), Some("tok"));
        let mut h = poem::http::HeaderMap::new();
        h.insert("cookie", "refresh_token_x=1".parse().unwrap());
        assert_eq!(p.read(&h), None);
    }
}
