//! `vramcap exporter` scraped against the fake driver (issue 14, part 7): a capped client publishes,
//! the exporter serves /metrics on a free port, and the page's figures are the segment's and NVML's,
//! in the text exposition format, with label values escaped.

mod common;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Exporter {
    child: Child,
    addr: String,
}

impl Exporter {
    /// Starts `vramcap exporter --listen 127.0.0.1:0` on `shm` and reads the address it took.
    fn start(shm: &std::path::Path) -> Exporter {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vramcap"))
            .args(["exporter", "--listen", "127.0.0.1:0"])
            .env("VRAMCAP_SHM", shm)
            .env("LD_LIBRARY_PATH", &env().dir)
            .env_remove("VRAMCAP_SHM_MODE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        // The rest of stderr (NVML's note, if any) is drained so the exporter never blocks on it.
        std::thread::spawn(move || for _ in stderr.lines() {});
        Exporter { child, addr }
    }

    /// GET `path`: (status line, body).
    fn get(&self, path: &str) -> (String, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.addr).unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        let (head, body) = all.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains("Content-Length") && head.contains("Connection: close"),
            "{head}"
        );
        (head.lines().next().unwrap().to_string(), body.to_string())
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One sample: its name, its labels (unescaped) and its value.
type Sample = (String, Vec<(String, String)>, u64);

/// Parses a sample line; panics on a line that is not of the text exposition format.
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    assert!(
        !name.is_empty() && !name.starts_with(|c: char| c.is_ascii_digit()),
        "{line}"
    );
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next().unwrap_or_else(|| panic!("unclosed: {line}"));
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        match chars
                            .next()
                            .unwrap_or_else(|| panic!("unclosed value: {line}"))
                            .1
                        {
                            '"' => break,
                            '\\' => match chars.next().unwrap().1 {
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                'n' => value.push('\n'),
                                other => panic!("bad escape \\{other} in {line}"),
                            },
                            '\n' => panic!("raw line break in {line}"),
                            c => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no value: {line}"));
    (name.to_string(), labels, value)
}

fn samples(body: &str) -> Vec<Sample> {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(parse_sample)
        .collect()
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[test]
fn the_exporter_serves_the_segments_and_nvmls_figures() {
    let shm = shm_path("exporter");
    // A name that needs Prometheus's escapes: a quote, a backslash and a line break (which the view
    // escapes first, as it does for the terminal).
    let name = "chat \"x\" \\ y\nz";
    let holder = hold(
        "dlsym",
        &[
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
            ("VRAMCAP_LIMIT", "1GiB"),
            ("VRAMCAP_NAME", name),
        ],
    );
    let status = {
        let out = Command::new(env!("CARGO_BIN_EXE_vramcap"))
            .args(["status", "--json"])
            .env("VRAMCAP_SHM", &shm)
            .env("LD_LIBRARY_PATH", &env().dir)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let exporter = Exporter::start(&shm);
    let (line, body) = exporter.get("/metrics");
    assert_eq!(line, "HTTP/1.1 200 OK", "{body}");
    let all = samples(&body);
    let pid = holder.pid().to_string();
    let mine = |metric: &str| -> Vec<&Sample> {
        all.iter()
            .filter(|(n, l, _)| n == metric && label(l, "pid") == Some(pid.as_str()))
            .collect()
    };
    let d = &status["processes"][0]["devices"][0];
    for (metric, key) in [
        ("vramcap_worker_charged_bytes", "charged_bytes"),
        ("vramcap_worker_cap_bytes", "cap_bytes"),
        ("vramcap_worker_peak_bytes", "peak_bytes"),
        ("vramcap_worker_context_bytes", "context_bytes"),
        ("vramcap_worker_refusals_total", "refusals"),
    ] {
        let found = mine(metric);
        assert_eq!(
            found.len(),
            1,
            "{metric}: one sample per worker and device:\n{body}"
        );
        let (_, labels, value) = found[0];
        assert_eq!(Some(*value), d[key].as_u64(), "{metric} is status's {key}");
        assert_eq!(label(labels, "uuid"), d["uuid"].as_str(), "{metric}");
        assert_eq!(label(labels, "gpu"), Some("0"), "NVML's index: {metric}");
        assert_eq!(
            label(labels, "name"),
            Some("chat \"x\" \\ y\\u{a}z"),
            "{metric}: the name as status prints it, escaped once more for Prometheus"
        );
    }
    let charged = mine("vramcap_worker_charged_bytes")[0].2;
    assert_eq!(charged, holder.get("info_total") - holder.get("info_free"));
    assert_eq!(mine("vramcap_worker_cap_bytes")[0].2, GIB);
    assert_eq!(mine("vramcap_worker_context_bytes")[0].2, CONTEXT);
    assert!(mine("vramcap_worker_refusals_total")[0].2 >= 1);
    assert_eq!(mine("vramcap_worker_suspended_bytes")[0].2, 0);
    assert_eq!(mine("vramcap_worker_unloads_asked_total")[0].2, 0);
    assert_eq!(mine("vramcap_worker_reloads_asked_total")[0].2, 0);
    assert_eq!(mine("vramcap_worker_unloaded_bytes")[0].2, 0);
    assert!(all
        .iter()
        .any(|(n, _, _)| n == "vramcap_worker_unloads_asked_total"));
    // Per device, from NVML.
    let device = |metric: &str| {
        all.iter()
            .find(|(n, l, _)| n == metric && label(l, "uuid") == d["uuid"].as_str())
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no {metric}:\n{body}"))
    };
    assert_eq!(
        Some(device("vramcap_device_total_bytes")),
        status["devices"][0]["total_bytes"].as_u64()
    );
    assert_eq!(
        Some(device("vramcap_device_free_bytes")),
        status["devices"][0]["free_bytes"].as_u64()
    );
    assert_eq!(device("vramcap_device_charged_bytes"), charged);
    assert!(body.contains("# TYPE vramcap_worker_refusals_total counter"));
    assert!(body.contains("vramcap_segment_present 1"), "{body}");
    let (line, _) = exporter.get("/elsewhere");
    assert_eq!(line, "HTTP/1.1 404 Not Found");
    // The worker leaves: so do its samples.
    holder.release();
    let (_, body) = exporter.get("/metrics");
    assert!(!body.contains(&format!("pid=\"{pid}\"")), "{body}");
    assert!(body.contains("vramcap_workers 0"), "{body}");
}

#[test]
fn without_a_segment_the_page_says_so_and_without_nvml_has_no_device_figures() {
    let shm = shm_path("exporter-none");
    let exporter = Exporter::start(&shm);
    let (line, body) = exporter.get("/metrics");
    assert_eq!(line, "HTTP/1.1 200 OK");
    assert!(body.contains("vramcap_segment_present 0"), "{body}");
    assert!(body.contains("vramcap_workers 0"), "{body}");
    for s in samples(&body) {
        assert!(!s.0.starts_with("vramcap_worker_"), "{body}");
    }
    drop(exporter);
    let mut child = Command::new(env!("CARGO_BIN_EXE_vramcap"))
        .args(["exporter", "--listen", "127.0.0.1:0", "--no-nvml"])
        .env("VRAMCAP_SHM", &shm)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(!body.contains("vramcap_device_total_bytes{"), "{body}");
    assert!(body.contains("vramcap_nvml_available 0"), "{body}");
}
