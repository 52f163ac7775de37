//! How the work inside `once` says it failed, and whether anything was applied.

use std::fmt;

use crate::error::BoxError;
use crate::execution::Disposition;

/// The error type of the work passed to [`crate::Sentinel::once`].
///
/// Any error converts into a `Failure` that says the outcome is **uncertain**, so `?` gives the
/// safe default: the key is not run again until someone reconciles it. Only when the work knows
/// for sure that it applied nothing (the card was declined, validation failed before any call)
/// should it say so with [`Failure::not_applied`]; the key then becomes claimable again at once.
///
/// ```
/// use sentinel_core::Failure;
///
/// fn parse(amount: &str) -> Result<u64, Failure> {
///     // Nothing has been sent anywhere yet: safe to run again.
///     amount.parse().map_err(Failure::not_applied)
/// }
///
/// fn call_gateway() -> Result<(), Failure> {
///     // `?` on any error: uncertain, the charge may have gone through.
///     std::fs::read("/nonexistent/gateway")?;
///     Ok(())
/// }
/// assert!(parse("x").unwrap_err().is_not_applied());
/// assert!(!call_gateway().unwrap_err().is_not_applied());
/// ```
pub struct Failure {
    disposition: Disposition,
    error: BoxError,
}

impl Failure {
    /// Fails saying the side effect may have happened: the execution becomes uncertain.
    pub fn uncertain(error: impl Into<BoxError>) -> Self {
        Failure {
            disposition: Disposition::Uncertain,
            error: error.into(),
        }
    }

    /// Fails saying nothing was applied: the key becomes claimable again.
    pub fn not_applied(error: impl Into<BoxError>) -> Self {
        Failure {
            disposition: Disposition::NotApplied,
            error: error.into(),
        }
    }

    /// Whether anything may have been applied.
    pub fn disposition(&self) -> Disposition {
        self.disposition
    }

    /// True when the work said nothing was applied.
    pub fn is_not_applied(&self) -> bool {
        self.disposition == Disposition::NotApplied
    }

    /// The underlying error.
    pub fn error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.error.as_ref()
    }

    /// The underlying error, if it is an `E`.
    pub fn downcast_ref<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.error.downcast_ref()
    }

    /// The underlying error, owned.
    pub fn into_error(self) -> BoxError {
        self.error
    }
}

/// Every error is uncertain unless said otherwise, so `?` is always safe.
impl<E: std::error::Error + Send + Sync + 'static> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::uncertain(error)
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Failure")
            .field("disposition", &self.disposition)
            .field("error", &self.error)
            .finish()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({})",
            self.error,
            self.disposition.as_str().replace('_', " ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_what_failed_and_whether_anything_applied() {
        let declined = Failure::not_applied("card declined");
        assert_eq!(declined.to_string(), "card declined (not applied)");
        assert_eq!(
            format!("{declined:?}"),
            r#"Failure { disposition: NotApplied, error: "card declined" }"#
        );
        let timeout = Failure::uncertain("gateway timed out");
        assert_eq!(timeout.to_string(), "gateway timed out (uncertain)");
        assert_eq!(timeout.disposition(), Disposition::Uncertain);
    }
}
