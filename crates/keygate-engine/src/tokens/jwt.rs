//! Compact JWS (RFC 7515) with EdDSA over Ed25519 (RFC 8037): the token format. Pure
//! functions; the keys come from `ring.rs`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Longest credential taken for a token; anything longer is refused unread (and a token
/// that would be longer is not issued).
pub const MAX_TOKEN_LEN: usize = 8192;

/// The claims keygate puts in a token. Times are unix seconds (JWT NumericDate).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The key the token was derived from.
    pub sub: String,
    /// The key's account.
    pub acct: String,
    /// `live` or `test`.
    pub env: String,
    /// Space-separated permissions (RFC 8693 / RFC 9068 style), a subset of the key's.
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    kid: String,
}

/// Does a credential have the shape of a compact JWS (`eyJ…​.…​.…`)? keygate's own keys
/// never contain a dot, so the two cannot be confused.
pub fn looks_like_token(credential: &str) -> bool {
    credential.starts_with("eyJ") && credential.bytes().filter(|b| *b == b'.').count() == 2
}

/// Signs `claims` as a compact JWS with header `{alg: EdDSA, typ: JWT, kid}`.
pub fn sign(claims: &Claims, kid: &str, key: &SigningKey) -> Result<String, serde_json::Error> {
    let header = serde_json::to_vec(&Header {
        alg: "EdDSA".into(),
        typ: Some("JWT".into()),
        kid: kid.into(),
    })?;
    let payload = serde_json::to_vec(claims)?;
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let signature = key.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
    Ok(token)
}

/// A token split and its header read, before its signature is checked.
pub struct Unverified<'a> {
    pub kid: String,
    signed: &'a str,
    payload: &'a str,
    signature: Signature,
}

/// Reads a token's header. `None` for anything that is not an EdDSA compact JWS with a
/// `kid` (`alg: none`, HMAC, RSA, … are refused here, before any key is chosen).
pub fn parse(token: &str) -> Option<Unverified<'_>> {
    if token.len() > MAX_TOKEN_LEN || !looks_like_token(token) {
        return None;
    }
    let (signed, signature) = token.rsplit_once('.')?;
    let (header, payload) = signed.split_once('.')?;
    let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if header.alg != "EdDSA" || header.typ.as_deref().is_some_and(|t| t != "JWT") {
        return None;
    }
    let signature: [u8; 64] = URL_SAFE_NO_PAD.decode(signature).ok()?.try_into().ok()?;
    Some(Unverified {
        kid: header.kid,
        signed,
        payload,
        signature: Signature::from_bytes(&signature),
    })
}

impl Unverified<'_> {
    /// The claims, if the signature is `key`'s (strict verification: no malleable or
    /// small-order signatures).
    pub fn verify(&self, key: &VerifyingKey) -> Option<Claims> {
        key.verify_strict(self.signed.as_bytes(), &self.signature)
            .ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(self.payload).ok()?).ok()
    }
}

/// The RFC 7638 thumbprint of an Ed25519 public key: its JWK `kid`.
pub fn thumbprint(public: &VerifyingKey) -> String {
    use sha2::Digest as _;
    let x = URL_SAFE_NO_PAD.encode(public.as_bytes());
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            sub: "key_1".into(),
            acct: "acct_1".into(),
            env: "live".into(),
            scope: "invoices.read".into(),
            aud: Some("billing".into()),
            iat: 1,
            exp: 2,
            jti: "tok_1".into(),
        }
    }

    #[test]
    fn a_signed_token_verifies_and_a_changed_one_does_not() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let token = sign(&claims(), "k1", &key).unwrap();
        assert!(looks_like_token(&token));
        let parsed = parse(&token).unwrap();
        assert_eq!(parsed.kid, "k1");
        assert_eq!(parsed.verify(&key.verifying_key()), Some(claims()));

        let other = SigningKey::from_bytes(&[8; 32]);
        assert_eq!(parse(&token).unwrap().verify(&other.verifying_key()), None);

        // The payload swapped for one with a wider scope: the signature no longer matches.
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let mut wider = claims();
        wider.scope = "*".into();
        let forged = format!(
            "{head}.{}.{sig}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wider).unwrap())
        );
        assert_eq!(parse(&forged).unwrap().verify(&key.verifying_key()), None);
    }

    #[test]
    fn other_algorithms_and_shapes_are_refused_unread() {
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"k1"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#)
        );
        assert!(parse(&none).is_none());
        let hs = format!(
            "{}.e30.AAAA",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"k1"}"#)
        );
        assert!(parse(&hs).is_none());
        assert!(parse("eyJ.a").is_none());
        assert!(!looks_like_token("kg_live_0123"));
        assert!(parse(&format!("eyJ{}.a.b", "A".repeat(MAX_TOKEN_LEN))).is_none());
    }
}
