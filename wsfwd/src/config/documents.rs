//! Splits a multi-document YAML file into typed Kubernetes objects, noting
//! unknown fields and skipping kinds wsfwd does not read.
use k8s_openapi::api::{
    core::v1::{Endpoints, Service},
    discovery::v1::EndpointSlice,
};
use serde::{Deserialize, de::DeserializeOwned};
use serde_norway::Value;

use super::{ConfigError, Notes};

pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Endpoints(Box<Endpoints>),
}

/// A typed object and where it came from.
pub struct Document {
    /// 1-based position in the file.
    pub number: usize,
    /// `Kind namespace/name`, as error messages name it.
    pub label: String,
    pub object: Object,
}

/// Parses every document; a document that fails is reported and the rest are
/// still checked, so one run shows every problem. Documents are numbered from
/// 1, counting only non-empty ones (a stray `---` does not shift the count).
pub fn parse(text: &str, notes: &mut Notes, errors: &mut Vec<ConfigError>) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut number = 0;
    for de in serde_norway::Deserializer::from_str(text) {
        number += 1;
        let value = match Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                // The parser cannot resynchronise after a syntax error.
                errors.push(ConfigError::new(number, None, "", format!("invalid YAML: {e}")));
                break;
            }
        };
        if value.is_null() {
            number -= 1;
            continue;
        }
        match classify(number, value, notes) {
            Ok(Some(doc)) => docs.push(doc),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    docs
}

/// Objects that did not come from a file: numbered 0, labelled as `parse` labels them.
pub fn from_objects(services: impl IntoIterator<Item = Service>, slices: impl IntoIterator<Item = EndpointSlice>) -> Vec<Document> {
    let label = |kind: &str, m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        format!("{kind} {}/{}", m.namespace.as_deref().unwrap_or("default"), m.name.as_deref().unwrap_or("<unnamed>"))
    };
    let services = services.into_iter().map(|s| Document { number: 0, label: label("Service", &s.metadata), object: Object::Service(Box::new(s)) });
    let slices = slices.into_iter().map(|s| Document { number: 0, label: label("EndpointSlice", &s.metadata), object: Object::EndpointSlice(Box::new(s)) });
    services.chain(slices).collect()
}

fn classify(number: usize, value: Value, notes: &mut Notes) -> Result<Option<Document>, ConfigError> {
    let map = match &value {
        Value::Mapping(m) => m,
        _ => {
            return Err(ConfigError::new(
                number,
                None,
                "",
                "not a Kubernetes object (expected a mapping with apiVersion and kind)",
            ));
        }
    };
    let field = |name: &str| map.get(name).and_then(Value::as_str).map(str::to_owned);
    let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
        let missing = if field("apiVersion").is_none() { "apiVersion" } else { "kind" };
        return Err(ConfigError::new(number, None, missing, "missing; every object needs apiVersion and kind"));
    };
    let meta = map.get("metadata");
    let meta_str = |name: &str| meta.and_then(|m| m.get(name)).and_then(Value::as_str);
    let name = meta_str("name").unwrap_or("<unnamed>");
    let namespace = meta_str("namespace").unwrap_or("default");
    let label = format!("{kind} {namespace}/{name}");

    let want = match kind.as_str() {
        "Service" | "Endpoints" => "v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        _ => {
            notes.info(format!(
                "document {number}: skipping {label}: wsfwd reads only Service, EndpointSlice and Endpoints"
            ));
            return Ok(None);
        }
    };
    if api_version != want {
        return Err(ConfigError::new(
            number,
            Some(&label),
            "apiVersion",
            format!("{api_version:?} is not supported for {kind}; use {want:?}"),
        ));
    }
    let object = match kind.as_str() {
        "Service" => Object::Service(Box::new(typed(number, &label, value, notes)?)),
        "EndpointSlice" => Object::EndpointSlice(Box::new(typed(number, &label, value, notes)?)),
        _ => Object::Endpoints(Box::new(typed(number, &label, value, notes)?)),
    };
    Ok(Some(Document { number, label, object }))
}

/// Deserializes into a k8s-openapi type, warning about every field it ignores
/// and naming the field path of a type error.
fn typed<T: DeserializeOwned>(number: usize, label: &str, value: Value, notes: &mut Notes) -> Result<T, ConfigError> {
    let mut unknown = Vec::new();
    let mut on_ignored = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
    let de = serde_ignored::Deserializer::new(value, &mut on_ignored);
    let result = serde_path_to_error::deserialize(de);
    for path in unknown {
        notes.warn(format!("document {number}, {label}, {path}: unknown field, ignored"));
    }
    result.map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        ConfigError::new(number, Some(label), path, e.into_inner().to_string())
    })
}

/// `spec.ports[0].name` style, matching serde_path_to_error's.
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() { key.clone() } else { format!("{parent}.{key}") }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}
