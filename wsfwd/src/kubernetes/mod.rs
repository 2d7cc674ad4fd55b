//! DaemonSet mode: Services and EndpointSlices followed from the API server
//! and fed to the same translation as a file.
mod follow;
mod snapshot;

pub use follow::{ApiState, Follower, Notice, Options, client};
pub use snapshot::{Key, Selected, Which, newly_skipped};

/// Kubernetes' label that hands a Service to a proxy other than kube-proxy.
pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Its value for wsfwd.
pub const PROXY_NAME: &str = "wsfwd";
