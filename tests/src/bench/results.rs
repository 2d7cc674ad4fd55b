//! What a benchmark run measured: the raw results (written as JSON) from
//! which the report and the chart are made.
use serde::Serialize;

/// One WebSocket echo run at a fixed aggregate rate (open loop).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Echo {
    pub message_bytes: usize,
    pub connections: usize,
    /// Target aggregate rate, messages per second.
    pub rate: u32,
    pub seconds: f64,
    pub sent: u64,
    pub received: u64,
    pub errors: u64,
    /// Latency from the *intended* send time (corrected for coordinated omission), microseconds.
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    /// Non-idle CPU of the whole machine during the run, nanoseconds per message.
    pub cpu_ns_per_msg: f64,
    /// wsfwd only: its programs' own run time (kernel.bpf_stats_enabled), nanoseconds per message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_ns_per_msg: Option<f64>,
    /// wsfwd only: the same per program run (one packet at one hook).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpf_ns_per_packet: Option<f64>,
}

/// Connect + upgrade + one echo + close, as fast as a fixed number of workers can.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ConnRate {
    pub per_second: f64,
    pub p99_us: f64,
    pub errors: u64,
}

/// TCP bulk transfer against one backend (iperf3).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bulk {
    pub one_stream_gbps: f64,
    pub four_streams_gbps: f64,
}

/// Memory with many idle WebSocket connections open through the contender.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Memory {
    pub connections: usize,
    /// Resident memory of the contender's processes (agent, nginx, haproxy).
    pub rss_bytes: u64,
    /// wsfwd only: memory of its maps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_bytes: Option<u64>,
    /// wsfwd only: map memory per conntrack entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_ct_entry: Option<f64>,
    /// RSS plus maps before the connections were opened: what they cost is the difference.
    pub baseline_bytes: u64,
}

/// Everything measured for one contender. A figure is `None` when the
/// workload does not apply (`not_applicable` says why) or failed (`errors`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Contender {
    /// "direct", "wsfwd-tc", "iptables", "nftables", "nginx-stream", "nginx-http", "haproxy".
    pub name: String,
    pub echo: Vec<Echo>,
    /// Highest aggregate rate with p99 under 10 ms (64-byte messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conn_rate: Option<ConnRate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bulk: Option<Bulk>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    pub not_applicable: Vec<String>,
    pub errors: Vec<String>,
}

/// Connection rate with many configured services.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Scale {
    pub contender: String,
    pub services: usize,
    pub conn_rate: ConnRate,
    /// wsfwd only: memory of its maps with that many services.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_bytes: Option<u64>,
}

/// Reloads: time from writing the config file to the change being live in
/// the maps (the frontend's `SERVICES` entry switched), and WebSocket echo
/// latency while reloads happen.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Reload {
    /// One endpoint added or removed, in a small file.
    pub one_change_count: usize,
    pub one_change_p50_ms: f64,
    pub one_change_p99_ms: f64,
    /// The same in a file of `big_services` services (the others unchanged).
    pub big_services: usize,
    pub big_one_change_p50_ms: f64,
    pub big_one_change_p99_ms: f64,
    /// Every service of the big file changed at once.
    pub big_all_changed_ms: f64,
    /// 64-byte echo p99 without reloads, and with `reloads_during_echo` reloads spread over the run.
    pub echo_p99_us_quiet: f64,
    pub echo_p99_us_reloading: f64,
    pub reloads_during_echo: usize,
    pub echo_errors: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_bytes: u64,
    pub kernel: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub command: String,
    pub short: bool,
    pub started: String,
    pub machine: Machine,
    /// Tool and peer versions, e.g. "nginx" -> "nginx/1.22.1".
    pub versions: Vec<(String, String)>,
    /// Whether kube-router's IPVS `sh` could run here, and why not.
    pub ipvs: String,
    pub contenders: Vec<Contender>,
    pub scale: Vec<Scale>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload: Option<Reload>,
}
