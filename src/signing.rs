//! The one way regmirror signs what crosses a trust boundary (tokens, upload sessions, peer
//! requests, membership records, derived keys): HMAC-SHA256 under a key derived from the
//! cluster secret. Callers add what they sign and finish or verify the returned MAC; `Mac`'s
//! verification compares in constant time.

use hmac::{Hmac, KeyInit};
use sha2::Sha256;

/// Installs ring as the process's TLS crypto provider (once; later calls do nothing). Every
/// HTTP client (upstreams, peers, the object store) is reqwest on rustls with this provider;
/// the server names ring itself.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A MAC (finish or verify it with `hmac::Mac`).
pub type Mac = Hmac<Sha256>;

/// An HMAC-SHA256 under `key`, fed `parts` in order (exactly those bytes, nothing between).
pub fn mac(key: &[u8], parts: &[&[u8]]) -> Mac {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = Mac::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for part in parts {
        hmac::Mac::update(&mut mac, part);
    }
    mac
}
