//! OpenID Connect: discovery, JWKS, ID-token checks, token requests.
