//! OpenID Connect: discovery, JWKS, ID-token checks, token requests.
//!
//! Pure code: bytes from the IdP go in, typed values or a named error come out. The adapter does the I/O.

pub mod discovery;
pub mod id_token;
pub mod jwks;
pub mod logout_token;
pub mod pkce;
pub mod sig;
pub mod token;

pub use discovery::{DiscoveryError, ProviderMetadata};
pub use id_token::{Claims, Expected, IdTokenError};
pub use jwks::{Alg, Jwk, Jwks, JwksError};
pub use token::{ClientAuth, FormRequest, TokenError, TokenResponse};
