//! Pure OCI types: no I/O. Everything here is built at the edge from untrusted strings and only
//! holds valid values afterwards.

pub mod cosign;
pub mod digest;
pub mod error;
pub mod image_ref;
pub mod manifest;
pub mod media;
pub mod name;
pub mod range;
pub mod reference;

pub use digest::{Digest, DigestError, DigestMismatch};
pub use error::ErrorCode;
pub use name::{NameError, RepoName, Tag};
pub use range::{ByteRange, ContentRange, MalformedRange};
pub use reference::{Reference, ReferenceError};
