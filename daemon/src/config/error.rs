//! The configuration error, in a leaf so every settings file can return it.

/// A configuration problem, with the offending source named.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or env could not be read or did not match the schema.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The configured values are inconsistent.
    #[error("invalid configuration: {field}: {reason}")]
    Value {
        /// Dotted key of the offending setting.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}
