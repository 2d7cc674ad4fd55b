//! Kubernetes objects (Service + EndpointSlice/Endpoints) to the desired-state
//! model, with Kubernetes' and kube-proxy's semantics. A file is accepted whole
//! or rejected whole.
mod documents;
mod error;
mod translate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};

use crate::model::Service;

/// Things worth telling the user that do not make the file invalid.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Notes {
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
}

impl Notes {
    fn warn(&mut self, s: String) {
        self.warnings.push(s);
    }
    fn info(&mut self, s: String) {
        self.infos.push(s);
    }

    /// Sends every note to the log, once.
    pub fn log(&self) {
        for s in &self.infos {
            log::info!("{s}");
        }
        for s in &self.warnings {
            log::warn!("{s}");
        }
    }
}

/// A validated configuration: every service port wsfwd will forward, sorted by id.
#[derive(Debug)]
pub struct Config {
    pub services: Vec<Service>,
    pub notes: Notes,
}

/// Parses and validates a multi-document YAML text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let mut notes = Notes::default();
    let mut errors = Vec::new();
    let docs = documents::parse(text, &mut notes, &mut errors);
    let services = translate::translate(&docs, &mut notes, &mut errors);
    if errors.is_empty() { Ok(Config { services, notes }) } else { Err(ConfigErrors(errors)) }
}

/// Validates objects read from the API server, as `parse` does a file's
/// (messages name the objects, not document numbers).
pub fn from_objects(
    services: impl IntoIterator<Item = k8s_openapi::api::core::v1::Service>,
    slices: impl IntoIterator<Item = k8s_openapi::api::discovery::v1::EndpointSlice>,
) -> Result<Config, ConfigErrors> {
    let mut notes = Notes::default();
    let mut errors = Vec::new();
    let docs = documents::from_objects(services, slices);
    let services = translate::translate(&docs, &mut notes, &mut errors);
    if errors.is_empty() { Ok(Config { services, notes }) } else { Err(ConfigErrors(errors)) }
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, &e))?;
    parse(&text)
}

/// The error for a config file that cannot be read.
pub fn unreadable(path: &Path, e: &std::io::Error) -> ConfigErrors {
    ConfigErrors(vec![ConfigError {
        document: None,
        object: None,
        path: String::new(),
        message: format!("cannot read {}: {e}", path.display()),
    }])
}

#[cfg(test)]
mod tests;
