//! `vramcap check-limit`: how a limit reads, and whether a cap is smaller than a CUDA context.

use std::process::ExitCode;
use vramcap_core::config::size::{human, Size};
use vramcap_core::config::{self, parse_limit};
use vramcap_core::status::{self, NvmlSource};

fn describe(size: Size) -> String {
    match size {
        Size::Bytes(b) => format!("{} ({b} bytes)", human(b)),
        Size::Percent(p) => format!("{p}% of the device's memory"),
    }
}

/// `vramcap check-limit [SPEC] [--force]`: 0 when the limit reads well, 2 when it does not, or when a
/// cap is smaller than a CUDA context (which would refuse every allocation) and `--force` is not given.
pub(crate) fn check_limit(spec: Option<&str>, force: bool) -> ExitCode {
    let (limit, source) = match spec {
        Some(spec) => match parse_limit(spec) {
            Ok(limit) => (limit, format!("{}={spec:?}", config::ENV_LIMIT)),
            Err(reason) => {
                eprintln!(
                    "vramcap: {}={spec:?} is invalid: {reason}",
                    config::ENV_LIMIT
                );
                return ExitCode::from(2);
            }
        },
        None => {
            let lookup = |var: &str| std::env::var(var).ok();
            match config::limit_from(&lookup, &config::hami_names_in_env()) {
                Ok((limit, Some(source))) => (limit, source.to_string()),
                Ok((_, None)) => {
                    say!(
                        "no limit is set ({} or {}): memory is counted, not capped",
                        config::ENV_LIMIT,
                        config::ENV_HAMI_LIMIT
                    );
                    return ExitCode::SUCCESS;
                }
                Err(e) => {
                    eprintln!("vramcap: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let context =
        match config::context_bytes(std::env::var(config::ENV_CONTEXT_BYTES).ok().as_deref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("vramcap: {e}");
                return ExitCode::from(2);
            }
        };
    // A share of the device is checked against each device NVML lists (if it answers).
    let nvml = NvmlSource::open(true);
    let totals: Vec<u64> = status::collect_from(None, "", &nvml)
        .devices
        .iter()
        .map(|d| d.total_bytes)
        .collect();
    let mut small = Vec::new();
    for (what, size) in limit.describe() {
        say!("{what}: {}", describe(size));
        let resolved: Vec<u64> = match size {
            Size::Bytes(b) => vec![b],
            Size::Percent(_) => totals.iter().map(|t| size.resolve(*t)).collect(),
        };
        if let Some(b) = resolved.into_iter().filter(|b| *b < context).min() {
            small.push(format!("{what}: {}", human(b)));
        }
    }
    if small.is_empty() {
        return ExitCode::SUCCESS;
    }
    let line = format!(
        "{source}: {} less than a CUDA context ({}, {}), so every allocation would be refused",
        if small.len() == 1 {
            format!("{} is", small[0])
        } else {
            format!("{} are", small.join("; "))
        },
        human(context),
        config::ENV_CONTEXT_BYTES
    );
    if force {
        eprintln!("vramcap: warning: {line} (accepted: --force)");
        ExitCode::SUCCESS
    } else {
        eprintln!("vramcap: {line}; --force accepts it anyway");
        ExitCode::from(2)
    }
}
