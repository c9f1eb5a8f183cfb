//! The HTTP edge's rate limits as configured (`RATE_LIMIT_*`); `http::ratelimit` enforces them.

/// Rate limits of the HTTP edge (GCRA, real time). Operations routes are never limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// `/auth/login` and `/auth/register` together, per client IP, per minute.
    pub auth_per_minute: u32,
    /// Requests allowed at once before the auth rate applies.
    pub auth_burst: u32,
    /// `POST /api/reservations` and `POST /api/payments`, per user, per second (also the burst).
    pub writes_per_second: u32,
    /// Every other request, per client IP, per second (also the burst).
    pub reads_per_second: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            auth_per_minute: 10,
            auth_burst: 5,
            writes_per_second: 20,
            reads_per_second: 200,
        }
    }
}
