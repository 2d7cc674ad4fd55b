use std::fmt;

/// One problem with a config file, located as precisely as the file allows:
/// `document 2, EndpointSlice default/im-abc, endpoints[0].addresses[0]: "300.1.1.1" is not an IPv4 address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based YAML document number; `None` for problems with the file itself
    /// and for objects read from the API server.
    pub document: Option<usize>,
    /// `Kind namespace/name`, when known.
    pub object: Option<String>,
    /// Field path inside the object (`spec.ports[0].port`); empty for the whole object.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    /// `document` 0: an object that did not come from a file.
    pub fn new(document: usize, object: Option<&str>, path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            document: (document != 0).then_some(document),
            object: object.map(str::to_owned),
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(doc) = self.document {
            write!(f, "document {doc}")?;
            sep = ", ";
        }
        if let Some(object) = &self.object {
            write!(f, "{sep}{object}")?;
            sep = ", ";
        }
        if !self.path.is_empty() {
            write!(f, "{sep}{}", self.path)?;
        }
        if self.document.is_some() || self.object.is_some() || !self.path.is_empty() {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a rejected file; nothing of it is applied.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
