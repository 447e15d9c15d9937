//! Asymmetric signing keys: generated here, published as JWKs (RFC 7517), and
//! sealed at rest.
//!
//! A key pair is ES256 (ECDSA on P-256 with SHA-256, RFC 7518 section 3.4) or
//! EdDSA (Ed25519, RFC 8037). Its private half is kept as PKCS#8 DER, sealed
//! with AES-256-GCM under a key derived from the key-encryption secret
//! (`KEY_ENCRYPTION_SECRET`), with the key's `kid` as associated data: a sealed
//! key copied onto another row does not open. Only the public half ever leaves
//! this module in the clear, as a JWK with `kid`, `alg` and `use: sig`.

use aes_gcm::{
    Aes256Gcm, Nonce,
    aead::{Aead, KeyInit, Payload},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use hmac::Mac;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{Value, json};

use crate::{config::SigningAlgorithm, error::AppError, secret::Secret};

/// The `jsonwebtoken` algorithm of `alg`.
pub(crate) fn jwt_algorithm(alg: SigningAlgorithm) -> Algorithm {
    match alg {
        SigningAlgorithm::Es256 => Algorithm::ES256,
        SigningAlgorithm::EdDsa => Algorithm::EdDSA,
        SigningAlgorithm::Hs256 => Algorithm::HS256,
    }
}

/// A key pair as generated: the private key as PKCS#8 DER (to be sealed) and
/// the public key as a JWK.
pub struct Generated {
    pub pkcs8: Vec<u8>,
    pub public_jwk: Value,
}

/// Generates a key pair for `alg` under `kid`. Errors: `INTERNAL` for HS256
/// (a secret, not a pair) or when the system's random source fails.
pub fn generate(alg: SigningAlgorithm, kid: &str) -> Result<Generated, AppError> {
    use p256::pkcs8::EncodePrivateKey;
    let fail = |e: &dyn std::fmt::Display| AppError::internal(format!("key generation: {e}"));
    match alg {
        SigningAlgorithm::Es256 => {
            // A uniformly random scalar: 32 random bytes, drawn again in the
            // negligible case that they are zero or not below the group order.
            let secret = loop {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).map_err(|e| fail(&e))?;
                if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
                    break secret;
                }
            };
            let pkcs8 = secret.to_pkcs8_der().map_err(|e| fail(&e))?.as_bytes().to_vec();
            let point = p256::EncodedPoint::from(secret.public_key());
            let (Some(x), Some(y)) = (point.x(), point.y()) else {
                return Err(AppError::internal("key generation: P-256 point has no coordinates"));
            };
            let public_jwk = json!({
                "kty": "EC", "crv": "P-256", "x": B64.encode(x), "y": B64.encode(y),
                "kid": kid, "alg": alg.name(), "use": "sig",
            });
            Ok(Generated { pkcs8, public_jwk })
        }
        SigningAlgorithm::EdDsa => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| fail(&e))?;
            let key = ed25519_dalek::SigningKey::from_bytes(&bytes);
            let pkcs8 = key.to_pkcs8_der().map_err(|e| fail(&e))?.as_bytes().to_vec();
            let public_jwk = json!({
                "kty": "OKP", "crv": "Ed25519", "x": B64.encode(key.verifying_key().to_bytes()),
                "kid": kid, "alg": alg.name(), "use": "sig",
            });
            Ok(Generated { pkcs8, public_jwk })
        }
        SigningAlgorithm::Hs256 => Err(AppError::internal("HS256 has no key pair")),
    }
}

/// The keys jsonwebtoken signs and verifies with, from a sealed key's opened
/// PKCS#8 and its public JWK.
pub fn jwt_keys(
    alg: SigningAlgorithm,
    pkcs8: &[u8],
    public_jwk: &Value,
) -> Result<(EncodingKey, DecodingKey), AppError> {
    Ok((
        match alg {
            SigningAlgorithm::Es256 => EncodingKey::from_ec_der(pkcs8),
            SigningAlgorithm::EdDsa => EncodingKey::from_ed_der(pkcs8),
            SigningAlgorithm::Hs256 => return Err(AppError::internal("HS256 has no key pair")),
        },
        decoding_key(alg, public_jwk)?,
    ))
}

/// The verifying key of a published JWK. Errors: `INTERNAL` when the JWK is
/// not a key of `alg`.
pub fn decoding_key(alg: SigningAlgorithm, jwk: &Value) -> Result<DecodingKey, AppError> {
    let field = |name: &str| jwk[name].as_str().ok_or_else(|| AppError::internal(format!("stored JWK has no {name}")));
    let key = match alg {
        SigningAlgorithm::Es256 if jwk["crv"] == "P-256" => DecodingKey::from_ec_components(field("x")?, field("y")?),
        SigningAlgorithm::EdDsa if jwk["crv"] == "Ed25519" => DecodingKey::from_ed_components(field("x")?),
        _ => return Err(AppError::internal(format!("stored JWK is not an {} key", alg.name()))),
    };
    key.map_err(|e| AppError::internal(format!("stored JWK: {e}")))
}

/// What a sealed key is bound to: its `kid`, its `alg` and its public JWK as
/// stored, so that none of them can be changed in the row without the key
/// failing to open.
pub fn identity(kid: &str, alg: &str, public_jwk: &str) -> String {
    format!("{kid}\n{alg}\n{public_jwk}")
}

/// Seals and opens private keys under the key-encryption secret.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
    /// What it seals, for the error when something does not open ("signing key").
    what: &'static str,
}

/// The first byte of a sealed key: the sealing scheme, so that another can
/// follow without guessing.
const SEALED_V1: u8 = 1;
const NONCE_BYTES: usize = 12;

impl Sealer {
    /// A sealer whose AES-256 key is derived from `secret` (HMAC-SHA-256 with
    /// a purpose label, so this key is never the one anything else uses).
    pub fn new(secret: &Secret) -> Self {
        Self::for_purpose(secret, b"authgraph signing-key sealing key v1", "signing key")
    }

    /// A sealer for second-factor secrets (TOTP keys): its own key, derived
    /// from `secret` under another label, so that a sealed TOTP key can never
    /// be opened as a signing key or the other way round.
    pub fn for_second_factors(secret: &Secret) -> Self {
        Self::for_purpose(secret, b"authgraph second-factor sealing key v1", "second-factor secret")
    }

    fn for_purpose(secret: &Secret, label: &[u8], what: &'static str) -> Self {
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.expose())
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(label);
        let key = mac.finalize().into_bytes();
        Self { cipher: Aes256Gcm::new(&key), what }
    }

    /// `version || nonce (12 bytes) || ciphertext and tag`, with `identity`
    /// (the key's `kid`, `alg` and public JWK, see [`identity`]) bound as
    /// associated data. Errors: `INTERNAL` when no nonce can be drawn.
    pub fn seal(&self, identity: &str, plaintext: &[u8]) -> Result<Vec<u8>, AppError> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| AppError::internal(format!("nonce: {e}")))?;
        let sealed = self
            .cipher
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad: identity.as_bytes() })
            .map_err(|_| AppError::internal(format!("sealing a {} failed", self.what)))?;
        let mut out = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`seal`](Self::seal) made for `identity`. Errors:
    /// `INTERNAL` (naming the key's `kid`, never its bytes) when it was sealed
    /// under another secret, for another identity, or changed.
    pub fn open(&self, identity: &str, sealed: &[u8]) -> Result<Vec<u8>, AppError> {
        let name = identity.split('\n').next().unwrap_or_default();
        let refused = || {
            AppError::internal(format!(
                "{} {name} does not open: KEY_ENCRYPTION_SECRET is not the one it was sealed under, \
                 or its row was changed",
                self.what
            ))
        };
        let (&version, rest) = sealed.split_first().ok_or_else(refused)?;
        if version != SEALED_V1 || rest.len() < NONCE_BYTES {
            return Err(refused());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| refused())?;
        self.cipher
            .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad: identity.as_bytes() })
            .map_err(|_| refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_for_its_kid_and_secret() {
        let sealer = Sealer::new(&Secret::new(vec![1; 32]));
        let sealed = sealer.seal("k1", b"private").unwrap();
        assert_eq!(sealer.open("k1", &sealed).unwrap(), b"private");
        assert!(!sealed.windows(7).any(|w| w == b"private"), "sealed bytes hold the plaintext");
        assert!(sealer.open("k2", &sealed).is_err(), "opened for another kid");
        assert!(Sealer::new(&Secret::new(vec![2; 32])).open("k1", &sealed).is_err(), "opened under another secret");
        let mut changed = sealed.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(sealer.open("k1", &changed).is_err(), "a changed ciphertext opened");
        assert_ne!(sealer.seal("k1", b"private").unwrap(), sealed, "a nonce was reused");
    }

    #[test]
    fn generated_keys_sign_and_verify_and_publish_only_public_parts() {
        for alg in [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa] {
            let g = generate(alg, "kid-1").unwrap();
            let jwk = g.public_jwk.as_object().unwrap();
            assert_eq!(jwk["kid"], "kid-1");
            assert_eq!(jwk["alg"], alg.name());
            assert_eq!(jwk["use"], "sig");
            assert!(!jwk.contains_key("d"), "{alg:?}: the private part was published");
            let (enc, dec) = jwt_keys(alg, &g.pkcs8, &g.public_jwk).unwrap();
            let header = jsonwebtoken::Header::new(jwt_algorithm(alg));
            let token = jsonwebtoken::encode(&header, &json!({"sub": "x", "exp": 4_000_000_000u64}), &enc).unwrap();
            let mut validation = jsonwebtoken::Validation::new(jwt_algorithm(alg));
            validation.required_spec_claims.clear();
            validation.validate_aud = false;
            jsonwebtoken::decode::<Value>(&token, &dec, &validation).unwrap();
        }
    }
}
