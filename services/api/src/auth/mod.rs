//! Credentials: password hashing, access tokens, refresh tokens, and the
//! login lockout.

mod lockout;
mod password;
mod tokens;

pub use lockout::Lockout;
pub use password::{HashError, PasswordHasher};
pub use tokens::{RefreshToken, TokenKeys};
