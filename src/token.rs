//! Signed tokens: who a client is, proved with a JSON Web Token signed with HS256.
//!
//! A token enters at the WebSocket upgrade (`crate::handshake`) as text from the `token` query
//! parameter or an `Authorization: Bearer` header, and [`verify`] turns it into the [`User`]
//! it names, or into a [`Refusal`] that says why not (answered with HTTP 401). The other way,
//! [`sign`] makes a token for `smolchat token`, for operators and scripts.
//!
//! The check is strict on purpose, because each lenient JWT library has had its day in the
//! news: the header must say `"alg":"HS256"` (`none`, `HS512`, `RS256` and everything else are
//! refused before any signature is looked at), the signature is compared in constant time by
//! `hmac`, `exp` is required, `nbf` is checked when present, and `sub` must be a valid nick
//! that cannot look like a guest's (`guest-...`), so no user can pass for a guest or the other
//! way round. There is no clock leeway: hosts are expected to keep time.
//!
//! Nothing here logs, and a [`Secret`] never prints itself: tokens and secrets stay out of logs.
//! Feature `auth`.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::client::{User, Verified};
use crate::config::{Auth, Config, Invalid, Section, flags};
use crate::protocol::{valid_nick, valid_room};
pub use crate::secret::Secret;

/// The least secret length accepted, in bytes: HS256's key should be as long as its output.
pub const MIN_SECRET_BYTES: usize = 32;

/// The largest token accepted, in bytes (a request head is at most 8 KiB anyway).
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Why a token was refused. The cause is counted in `/metrics` (`name`) and told to the client
/// in a few words (`reason`); the token itself never is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token, where one is required.
    Missing,
    /// Not three base64url parts of JSON, or a claim of the wrong type.
    Malformed,
    /// The header names another algorithm than HS256 (`none` included).
    Algorithm,
    /// The signature does not match: forged, or signed with another secret.
    Signature,
    /// `exp` is past, or missing.
    Expired,
    /// `nbf` is in the future.
    NotYetValid,
    /// `sub` is missing, not a valid nick, or looks like a guest's name; or `rooms` names an
    /// invalid room.
    Subject,
}

impl Refusal {
    /// Every cause, in the order `/metrics` lists them.
    pub const ALL: [Refusal; 7] = [
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::Algorithm,
        Refusal::Signature,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::Subject,
    ];

    /// The cause's label in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Algorithm => "algorithm",
            Refusal::Signature => "signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Subject => "subject",
        }
    }

    /// What the client is told, in the 401's body and `WWW-Authenticate` header.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "a token is required",
            Refusal::Malformed => "the token is malformed",
            Refusal::Algorithm => "the token must be signed with HS256",
            Refusal::Signature => "the token's signature is invalid",
            Refusal::Expired => "the token has expired",
            Refusal::NotYetValid => "the token is not valid yet",
            Refusal::Subject => "the token's sub or rooms claim is not valid",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    // NumericDate (RFC 7519): seconds, possibly fractional.
    exp: Option<f64>,
    nbf: Option<f64>,
    rooms: Option<Vec<String>>,
}

/// Verifies `token` with `secret` at `now` (seconds since the Unix epoch).
pub fn verify(token: &str, secret: &Secret, now: u64) -> Result<Verified, Refusal> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refusal::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed);
    };
    let header: Header = decode_json(header)?;
    if header.alg != "HS256" {
        return Err(Refusal::Algorithm);
    }
    let signature = base64url_decode(signature).ok_or(Refusal::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.bytes()).expect("HMAC takes any key");
    mac.update(&token.as_bytes()[..token.len() - signature_len(token)]);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&signature)
        .map_err(|_| Refusal::Signature)?;
    // Only a token we signed gets its claims read.
    let claims: Claims = decode_json(payload)?;
    let now_f = now as f64;
    let expires = match claims.exp {
        // `as` saturates: an `exp` beyond u64 is "never", not an overflow.
        Some(exp) if exp > now_f => exp as u64,
        _ => return Err(Refusal::Expired),
    };
    if claims.nbf.is_some_and(|nbf| nbf > now_f) {
        return Err(Refusal::NotYetValid);
    }
    let sub = claims.sub.ok_or(Refusal::Subject)?;
    if !valid_user_name(&sub) {
        return Err(Refusal::Subject);
    }
    if let Some(rooms) = &claims.rooms
        && !rooms.iter().all(|r| valid_room(r))
    {
        return Err(Refusal::Subject);
    }
    Ok(Verified {
        user: User {
            name: sub,
            rooms: claims.rooms,
        },
        expires,
    })
}

/// A valid nick that no guest could have: guests are `guest-N`.
pub fn valid_user_name(name: &str) -> bool {
    valid_nick(name)
        && !name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("guest-"))
}

/// Signs a token for `sub`, valid until `exp` (seconds since the Unix epoch), limited to
/// `rooms` if given. For `smolchat token`; the server never signs.
pub fn sign(secret: &Secret, sub: &str, exp: u64, rooms: Option<&[String]>) -> String {
    let header = base64url_encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        rooms: Option<&'a [String]>,
    }
    let claims = Claims { sub, exp, rooms };
    let claims = serde_json::to_string(&claims).expect("always serializes");
    let payload = base64url_encode(claims.as_bytes());
    let signed = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.bytes()).expect("HMAC takes any key");
    mac.update(signed.as_bytes());
    let signature = base64url_encode(&mac.finalize().into_bytes());
    format!("{signed}.{signature}")
}

/// The length of the signature part with its dot.
fn signature_len(token: &str) -> usize {
    token.rsplit('.').next().map_or(0, |s| s.len() + 1)
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, Refusal> {
    let bytes = base64url_decode(part).ok_or(Refusal::Malformed)?;
    // From text, like every other JSON the server reads: one deserializer in the binary.
    let text = std::str::from_utf8(&bytes).map_err(|_| Refusal::Malformed)?;
    serde_json::from_str(text).map_err(|_| Refusal::Malformed)
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// base64url without padding (RFC 7515 §2), as JWTs use it.
fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes base64url without padding; `None` for anything else (padding, `+`, `/`, spaces,
/// a length no encoding has, or stray bits in the last character).
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            n |= v << (18 - 6 * i);
        }
        let bytes = chunk.len() - 1;
        // Bits below the last whole byte must be zero: one token, one spelling.
        if n & ((1 << (24 - 8 * bytes)) - 1) != 0 {
            return None;
        }
        for i in 0..bytes {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// The tokens' flags (feature `auth`), for the flag table (`crate::config`).
pub(crate) const FLAGS: Section = Section {
    heading: "\nTokens (the auth feature; see docs/protocol.md#authentication):\n",
    flags: flags! {
        "auth-secret-file" "PATH": "HS256 secret (at least 32 bytes) in a file: /ws then needs a\nsigned token (query ?token= or Authorization: Bearer)"
            => |c, v| secret_file(c, v);
        "auth" "required|optional" = "required": "optional also admits guests without a token"
            => |c, v| guests(c, v);
        "max-connections-per-user" "N" = "16": "connections one user may have at once; one more is closed\nwith 4002"
            => number(max_connections_per_user, 1, 1_000_000);
    },
    footer: &[(
        "smolchat token --sub NAME",
        "print a signed token for user NAME (see smolchat token --help)",
    )],
    check: None,
};

/// `--auth-secret-file`: reads the secret, which must be long enough for HS256.
fn secret_file(config: &mut Config, path: &str) -> Result<(), Invalid> {
    let secret = Secret::read(path)?;
    if secret.bytes().len() < MIN_SECRET_BYTES {
        return Err(Invalid::Said(format!(
            "the secret in {path:?} is {} bytes; HS256 needs at least {MIN_SECRET_BYTES} \
             (for example: head -c 48 /dev/urandom | base64 > {path})",
            secret.bytes().len(),
        )));
    }
    config.auth = Some(Auth {
        secret,
        guests: false,
    });
    Ok(())
}

/// `--auth required|optional`. Flags are applied in the table's order: the secret is read by
/// now.
fn guests(config: &mut Config, value: &str) -> Result<(), Invalid> {
    let guests = match value {
        "required" => false,
        "optional" => true,
        _ => return Err("expected required or optional".into()),
    };
    match &mut config.auth {
        Some(auth) => auth.guests = guests,
        None => {
            return Err(Invalid::Said(
                "needs --auth-secret-file: without a secret nobody authenticates".to_string(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    #[test]
    fn base64url_round_trips_and_refuses_other_spellings() {
        for len in 0..20 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64url_encode(&bytes);
            assert!(!text.contains('='));
            assert_eq!(base64url_decode(&text), Some(bytes));
        }
        assert_eq!(base64url_encode(b"\xfb\xff"), "-_8");
        assert_eq!(base64url_decode("aGk="), None, "padding");
        assert_eq!(base64url_decode("a+k"), None);
        assert_eq!(base64url_decode("aGk"), Some(b"hi".to_vec()));
        assert_eq!(base64url_decode("aGl"), None, "stray low bits");
        assert_eq!(base64url_decode("a"), None);
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let rooms = vec!["dev".to_string()];
        let token = sign(&secret(), "ada", 1000, Some(&rooms));
        let verified = verify(&token, &secret(), 999).unwrap();
        assert_eq!(verified.user.name, "ada");
        assert_eq!(verified.user.rooms, Some(rooms));
        assert_eq!(verified.expires, 1000);
        assert_eq!(verify(&token, &secret(), 1000), Err(Refusal::Expired));
        let other = Secret::new(b"another secret of at least 32 bytes".to_vec());
        assert_eq!(verify(&token, &other, 999), Err(Refusal::Signature));
    }

    #[test]
    fn users_cannot_look_like_guests() {
        assert!(valid_user_name("ada"));
        assert!(valid_user_name("guest"));
        assert!(!valid_user_name("guest-7"));
        assert!(!valid_user_name("GUEST-x"));
        assert!(!valid_user_name("a b"));
        let token = sign(&secret(), "Guest-1", 1000, None);
        assert_eq!(verify(&token, &secret(), 1), Err(Refusal::Subject));
    }
}
