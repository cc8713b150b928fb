//! `vramcap exporter --listen ADDR`: Prometheus metrics at `/metrics`, in the text exposition format
//! (<https://prometheus.io/docs/instrumenting/exposition_formats/>), over a small HTTP/1.1 server of
//! std's own (no async runtime).
//!
//! Each scrape reads the segment afresh (a missing one is an empty page, with `vramcap_segment_present
//! 0`; a refused one answers 503) and NVML, opened once. Label values come from the segment, a
//! stranger's input: names are escaped as `status` prints them (control characters as `\u{..}`), then
//! for Prometheus (`\`, `"` and line breaks). A connection gets 5 seconds to send its request and take
//! the answer, and at most [`MAX_CONNECTIONS`] are served at once, so no client can hold the page up.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vramcap_core::shm::segment_path;
use vramcap_core::status::{self, NvmlSource, Status};

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request head read.
const MAX_REQUEST: usize = 8 << 10;

pub fn serve(listen: &str, nvml: bool) -> ExitCode {
    let listener = match TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("vramcap exporter: cannot listen on {listen:?}: {e}");
            return ExitCode::from(2);
        }
    };
    match listener.local_addr() {
        Ok(addr) => eprintln!("vramcap exporter: serving http://{addr}/metrics"),
        Err(e) => eprintln!("vramcap exporter: serving on {listen} ({e})"),
    }
    let nvml = Arc::new(NvmlSource::open(nvml));
    if let Some(why) = nvml.error() {
        eprintln!("vramcap exporter: NVML not available ({why}): no per-device free and total");
    }
    let busy = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(_) => {
                // Out of descriptors, or a connection reset before it was taken: try again shortly.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            busy.fetch_sub(1, Ordering::AcqRel);
            drop(stream);
            continue;
        }
        let (nvml, done) = (Arc::clone(&nvml), Arc::clone(&busy));
        let spawned = std::thread::Builder::new()
            .name("scrape".into())
            .spawn(move || {
                let _ = answer(stream, &nvml);
                done.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            busy.fetch_sub(1, Ordering::AcqRel);
        }
    }
    ExitCode::SUCCESS
}

/// Reads one request and answers it.
fn answer(mut stream: TcpStream, nvml: &NvmlSource) -> std::io::Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
                false,
            );
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut parts = line.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET /metrics\n",
            false,
        );
    }
    match path {
        "/metrics" => match metrics(nvml) {
            Ok(body) => respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
                head_only,
            ),
            Err(e) => respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain; charset=utf-8",
                &format!("{e}\n"),
                head_only,
            ),
        },
        "/" => respond(
            &mut stream,
            "200 OK",
            "text/plain; charset=utf-8",
            "vramcap exporter: the metrics are at /metrics\n",
            head_only,
        ),
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "not found\n",
            head_only,
        ),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes())?;
    stream.flush()
}

/// The page: the segment's figures and NVML's, now.
pub fn metrics(nvml: &NvmlSource) -> Result<String, String> {
    let path = segment_path();
    let seg = crate::open_if_any(&path, false).map_err(|e| e.to_string())?;
    let s = status::collect_from(seg.as_ref(), &path.display().to_string(), nvml);
    Ok(render(&s))
}

/// A label value, escaped for the exposition format (after `printable`, which the view applied).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `{a="1",b="2"}`.
fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// The metrics of one family: its HELP and TYPE lines, then each sample.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn start(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: u64) {
        let _ = writeln!(self.out, "{name}{labels} {value}");
    }
}

pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    let worker = |p: &status::ProcessView| (p.pid.to_string(), p.name.clone());
    // Per worker and device.
    type Get = fn(&status::DeviceView) -> Option<u64>;
    let per_device: [(&str, &str, &str, Get); 8] = [
        (
            "vramcap_worker_charged_bytes",
            "gauge",
            "What vramcap charges the worker on the device, its CUDA context included.",
            |d| Some(d.figures.charged),
        ),
        (
            "vramcap_worker_requested_bytes",
            "gauge",
            "What the worker asked for on the device, before the driver's rounding.",
            |d| Some(d.figures.requested),
        ),
        (
            "vramcap_worker_cap_bytes",
            "gauge",
            "The worker's cap on the device (absent: counted, not capped).",
            |d| d.figures.cap,
        ),
        (
            "vramcap_worker_peak_bytes",
            "gauge",
            "The most the worker held on the device.",
            |d| Some(d.figures.peak),
        ),
        (
            "vramcap_worker_context_bytes",
            "gauge",
            "The share of the worker's CUDA context on the device.",
            |d| Some(d.figures.context),
        ),
        (
            "vramcap_worker_allocations",
            "gauge",
            "The allocations the worker holds on the device.",
            |d| Some(d.figures.allocations),
        ),
        (
            "vramcap_worker_refusals_total",
            "counter",
            "Calls of the worker refused at its cap on the device.",
            |d| Some(d.figures.refusals),
        ),
        (
            "vramcap_worker_nvml_used_bytes",
            "gauge",
            "NVML's own figure for the worker on the device.",
            |d| d.nvml_used_bytes,
        ),
    ];
    for (name, kind, help, get) in per_device {
        f.start(name, kind, help);
        for p in &s.processes {
            let (pid, wname) = worker(p);
            for d in &p.devices {
                let Some(v) = get(d) else { continue };
                let gpu = d.index.map(|i| i.to_string());
                let mut l = vec![
                    ("pid", pid.as_str()),
                    ("name", wname.as_str()),
                    ("uuid", d.uuid.as_str()),
                ];
                if let Some(g) = &gpu {
                    l.push(("gpu", g));
                }
                f.sample(name, &labels(&l), v);
            }
        }
    }
    // Per worker.
    type PGet = fn(&status::ProcessView) -> u64;
    let per_worker: [(&str, &str, PGet); 7] = [
        (
            "vramcap_worker_unloads_asked_total",
            "How often the unloader asked the worker to unload (counted in its slot).",
            |p| u64::from(p.unloads_asked),
        ),
        (
            "vramcap_worker_reloads_asked_total",
            "How often the unloader told the worker to reload.",
            |p| u64::from(p.reloads_asked),
        ),
        (
            "vramcap_worker_unloaded_bytes",
            "What the worker gave back at its last unload, until it is told to reload (0: loaded).",
            |p| p.unloaded_bytes.unwrap_or(0),
        ),
        (
            "vramcap_worker_suspended_bytes",
            "What a suspension moved to host memory (0: running).",
            |p| p.suspended_bytes.unwrap_or(0),
        ),
        (
            "vramcap_worker_suspended",
            "1 while the unloader holds the worker suspended.",
            |p| u64::from(p.suspended),
        ),
        (
            "vramcap_worker_priority",
            "The worker's priority (higher keeps its memory longer); negative ones read as 0.",
            |p| u64::try_from(p.priority).unwrap_or(0),
        ),
        (
            "vramcap_worker_protected",
            "1 if the worker is never asked to unload.",
            |p| u64::from(p.protected),
        ),
    ];
    for (name, help, get) in per_worker {
        // Counters by their name's convention; the rest are gauges.
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        f.start(name, kind, help);
        for p in &s.processes {
            let (pid, wname) = worker(p);
            f.sample(name, &labels(&[("pid", &pid), ("name", &wname)]), get(p));
        }
    }
    // Per device: NVML's figures, and the running workers' together.
    let device_labels = |uuid: &str| {
        let mut l = vec![("uuid", uuid.to_string())];
        if let Some(d) = s.devices.iter().find(|d| d.uuid == uuid) {
            l.push(("gpu", d.index.to_string()));
            l.push(("gpu_name", d.name.clone()));
        }
        let pairs: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        labels(&pairs)
    };
    let per_device = |f: &mut Family, name: &str, help: &str, rows: Vec<(&str, u64)>| {
        f.start(name, "gauge", help);
        for (uuid, v) in rows {
            f.sample(name, &device_labels(uuid), v);
        }
    };
    let nvml = |get: fn(&status::PhysicalDevice) -> u64| {
        s.devices
            .iter()
            .map(|d| (d.uuid.as_str(), get(d)))
            .collect()
    };
    let totals = |get: fn(&status::Totals) -> u64| {
        s.totals.iter().map(|t| (t.uuid.as_str(), get(t))).collect()
    };
    if !s.devices.is_empty() {
        per_device(
            &mut f,
            "vramcap_device_total_bytes",
            "The device's memory, from NVML.",
            nvml(|d| d.total_bytes),
        );
        per_device(
            &mut f,
            "vramcap_device_free_bytes",
            "The device's free memory, from NVML.",
            nvml(|d| d.free_bytes),
        );
    }
    per_device(
        &mut f,
        "vramcap_device_charged_bytes",
        "What the running capped workers hold on the device together.",
        totals(|t| t.charged_bytes),
    );
    per_device(
        &mut f,
        "vramcap_device_workers",
        "Running capped workers on the device.",
        totals(|t| t.processes as u64),
    );
    // Whole-segment figures.
    let whole: [(&str, &str, u64); 3] = [
        (
            "vramcap_workers",
            "Capped workers in the segment.",
            s.processes.len() as u64,
        ),
        (
            "vramcap_segment_present",
            "1 once a capped process has made the segment.",
            u64::from(s.segment_exists),
        ),
        (
            "vramcap_nvml_available",
            "1 when NVML answered (device figures present).",
            u64::from(s.nvml_error.is_none()),
        ),
    ];
    for (name, help, v) in whole {
        f.start(name, "gauge", help);
        f.sample(name, "", v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        assert_eq!(
            labels(&[("name", "\\u{1b}[31m\"red\""), ("pid", "7")]),
            r#"{name="\\u{1b}[31m\"red\"",pid="7"}"#
        );
    }
}
