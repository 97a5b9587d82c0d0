//! Why a dependency (PostgreSQL, Redis, RabbitMQ) could not do what was asked: the underlying
//! error, kept as the error's `source()` so the whole chain stays available, or a message where
//! there is none. The error enums of the store, backplane and consumer carry one.
use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// A cloneable cause: errors of a batched call are handed to every caller of the batch.
#[derive(Debug, Clone)]
pub struct Cause(Arc<dyn Error + Send + Sync>);

impl Cause {
    /// The underlying error itself.
    pub fn new(e: impl Into<Box<dyn Error + Send + Sync>>) -> Self {
        Self(Arc::from(e.into()))
    }

    /// `context: e`, with `e` as the source: what was being done when `e` happened.
    pub fn context(context: impl Into<String>, e: impl Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(Context {
            context: context.into(),
            source: Box::new(e),
        }))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

#[derive(Debug)]
struct Context {
    context: String,
    source: Box<dyn Error + Send + Sync>,
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl Error for Context {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_keeps_its_source_and_says_what_was_being_done() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let c = Cause::context("connecting to 127.0.0.1:5432", io);
        assert_eq!(c.to_string(), "connecting to 127.0.0.1:5432: refused");
        assert_eq!(c.source().map(ToString::to_string), Some("refused".into()));
        let m = Cause::from("backplane dropped");
        assert_eq!(m.to_string(), "backplane dropped");
        assert!(m.source().is_none());
        assert_eq!(c.clone().to_string(), c.to_string());
    }
}
