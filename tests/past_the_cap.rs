//! Paths that used to go past the cap (issue 12), against the fake driver: the driver under another
//! file name, fork from a busy process, refusals counted once, the peak of stream-ordered pools; graph
//! memory, stream capture and context limits.

mod common;
use common::*;

/// Runs one of the extra clients (`alias`, `fork_busy`) under libvramcap.so with the fake driver.
fn extra(name: &str, args: &[&str], vars: &[(&str, &str)]) -> Run {
    program(&env().dir.join(name), args, vars, None)
}

#[test]
fn the_driver_under_another_file_name_is_still_capped() {
    let e = env();
    let real = e.dir.join("libcuda.so.1").canonicalize().unwrap();
    let link = e.dir.join("gpu.so");
    let copy = e.dir.join("gpu-copy.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&real, &link).unwrap();
    std::fs::copy(&real, &copy).unwrap();
    for path in [&link, &copy] {
        let r = extra(
            "alias",
            &[path.to_str().unwrap()],
            &[("VRAMCAP_LIMIT", "1GiB")],
        );
        assert_eq!(
            r.int("init"),
            0,
            "{}: {}{}",
            path.display(),
            r.stdout,
            r.stderr
        );
        // 1 GiB cap, 300 MiB context: eleven 64 MiB blocks fit, the twelfth does not.
        assert_eq!(r.get("allocated"), 11, "{}: {}", path.display(), r.stdout);
        assert_eq!(r.int("refused_code"), 2, "{}", path.display());
        assert_eq!(
            r.get("info_total"),
            GIB,
            "{}: the cap shows",
            path.display()
        );
    }
}

#[test]
fn a_child_of_a_busy_process_starts_clean_and_never_hangs() {
    let r = extra("fork_busy", &["12"], &[("VRAMCAP_LIMIT", "1GiB")]);
    assert_eq!(r.get("hung"), 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.get("failed"), 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.get("ok"), 12, "{}", r.stdout);
}

#[test]
fn one_refused_call_counts_one_refusal() {
    let shm = shm_path("one-refusal");
    // The cap scenario fills the cap with 64 MiB blocks: one of them is refused, near the cap (where the
    // check reads NVML and pools and tries again before it gives up).
    let holder = hold(
        "dlsym",
        &[
            ("VRAMCAP_LIMIT", "1GiB"),
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
        ],
    );
    let out = vramcap(&shm, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &json["processes"][0]["devices"][0];
    assert_eq!(d["refusals"], 1, "{json}");
    assert_eq!(d["last_refused_bytes"], 64u64 << 20, "{json}");
    holder.release();
    let _ = std::fs::remove_file(&shm);
}

#[test]
fn the_peak_of_a_stream_ordered_pool_is_what_the_process_held() {
    let shm = shm_path("pool-peak");
    let holder = hold_scenario(
        "gpa",
        "pool_fill",
        &[
            ("VRAMCAP_LIMIT", "1GiB"),
            ("FAKECUDA_POOL_STEP", "32M"),
            ("VRAMCAP_SHM", shm.to_str().unwrap()),
        ],
    );
    let device_used = holder.get("device_used_at_cap");
    let out = vramcap(&shm, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &json["processes"][0]["devices"][0];
    let peak = d["peak_bytes"].as_u64().unwrap();
    assert!(holder.get("allocated") > 100, "the pool filled the cap");
    assert!(peak <= GIB, "peak {} MiB over the 1 GiB cap", peak >> 20);
    assert!(
        peak <= device_used,
        "peak {} MiB over the {} MiB the device held",
        peak >> 20,
        device_used >> 20
    );
    holder.release();
    let _ = std::fs::remove_file(&shm);
}

#[test]
fn graph_memory_nodes_are_charged_and_a_launch_past_the_cap_is_refused() {
    for path in PATHS {
        for build in ["", "addnode"] {
            let mut args = vec!["graphs", "8", "512"];
            if !build.is_empty() {
                args.push(build);
            }
            let r = client(path, &args, &[("VRAMCAP_LIMIT", "2GiB")]);
            let what = format!("{path} {build}: {}{}", r.stdout, r.stderr);
            // 2 GiB cap, 300 MiB context: three graphs of 512 MiB fit, the fourth does not.
            assert_eq!(r.get("launched"), 3, "{what}");
            assert_eq!(r.int("launch_refused_code"), 2, "{what}");
            assert_eq!(r.get("driver_called_on_refusal"), 0, "{what}");
            assert_eq!(r.get("graph_reserved"), 3 * 512 * MIB, "{what}");
            assert_eq!(r.get("charged_graphs"), CONTEXT + 3 * 512 * MIB, "{what}");
            assert!(r.get("device_used") <= 2 * GIB, "{what}");
            // Freed allocations stay with the graph allocator until a trim gives them back.
            assert_eq!(
                r.get("charged_after_free"),
                CONTEXT + 3 * 512 * MIB,
                "{what}"
            );
            assert_eq!(r.get("charged_after_trim"), CONTEXT, "{what}");
            assert_eq!(r.get("reserved_after_trim"), 0, "{what}");
            assert_eq!(r.int("alloc_after"), 0, "{what}");
        }
    }
}

#[test]
fn a_relaunch_takes_nothing_more_even_at_the_cap() {
    for path in PATHS {
        // Cap: context + the graph + 100 MiB. A relaunch of a resident graph reserves nothing, so it
        // is never refused, however close to the cap.
        let cap = format!("{}MiB", (CONTEXT >> 20) + 512 + 100);
        let r = client(path, &["graph_relaunch", "512"], &[("VRAMCAP_LIMIT", &cap)]);
        let what = format!("{path}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.int("first_launch"), 0, "{what}");
        assert_eq!(r.get("charged_after_first"), CONTEXT + 512 * MIB, "{what}");
        assert_eq!(r.get("relaunch_failures"), 0, "{what}");
        assert_eq!(
            r.get("charged_after_relaunches"),
            CONTEXT + 512 * MIB,
            "{what}"
        );
    }
}

#[test]
fn uploads_are_charged_and_refused_like_launches() {
    for path in PATHS {
        let r = client(path, &["graph_upload", "256"], &[("VRAMCAP_LIMIT", "2GiB")]);
        let what = format!("{path}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.int("instantiate_upload"), 0, "{what}");
        assert_eq!(r.get("charged_after_upload"), CONTEXT + 256 * MIB, "{what}");
        assert_eq!(r.int("upload"), 0, "{what}");
        // The second graph reuses what the allocator holds.
        assert_eq!(
            r.get("charged_after_second_upload"),
            CONTEXT + 256 * MIB,
            "{what}"
        );
        let r = client(
            path,
            &["graph_upload", "256"],
            &[("VRAMCAP_LIMIT", "500MiB")],
        );
        assert_eq!(
            r.int("instantiate_upload"),
            2,
            "{path}: refused at instantiation: {}",
            r.stdout
        );
    }
}

#[test]
fn stream_capture_is_transparent_and_its_allocations_are_charged_at_launch() {
    for path in PATHS {
        for mode in ["global", "thread", "relaxed"] {
            for busy in [false, true] {
                let mut args = vec!["capture", mode, "64"];
                if busy {
                    args.push("busy");
                }
                // Without NVML the figures are exact; with it (busy: the background reading re-reads a
                // pool during the capture) a reading may move the context's share meanwhile.
                let nvml = if busy { "on" } else { "off" };
                let r = client(
                    path,
                    &args,
                    &[("VRAMCAP_LIMIT", "2GiB"), ("VRAMCAP_NVML", nvml)],
                );
                let what = format!("{path} {mode} busy={busy}: {}{}", r.stdout, r.stderr);
                assert_eq!(r.int("alloc_in_capture"), 0, "{what}");
                assert_eq!(r.int("free_in_capture"), 0, "{what}");
                assert_eq!(r.int("info_in_capture"), 0, "{what}");
                assert_eq!(r.int("end_capture"), 0, "the capture survives: {what}");
                assert_eq!(r.get("alloc_nodes"), 1, "{what}");
                assert_eq!(r.get("free_nodes"), 1, "{what}");
                assert_eq!(r.int("launch"), 0, "{what}");
                let during = r.int("charged_delta_capture");
                if busy {
                    assert!(during <= 0, "nothing is allocated yet: {what}");
                    continue;
                }
                assert_eq!(during, 0, "nothing is allocated yet: {what}");
                assert_eq!(r.get("charged_after_launch_delta"), 64 * MIB, "{what}");
                assert_eq!(r.get("charged_after_trim_delta"), 0, "{what}");
            }
        }
        // The control: a capture-unsafe call of the program's own still invalidates a global capture.
        let r = client(
            path,
            &["capture_other_thread", "64"],
            &[("VRAMCAP_LIMIT", "2GiB")],
        );
        assert_eq!(r.int("other_alloc"), 900, "{path}: {}", r.stdout);
        assert_eq!(r.int("end_capture"), 901, "{path}: {}", r.stdout);
    }
}

#[test]
fn context_limits_are_charged_and_refused_at_the_cap() {
    let stack_16k = (16384 - 1024) * 132 * 2048;
    for path in PATHS {
        let r = client(
            path,
            &["limits"],
            &[("VRAMCAP_LIMIT", "8GiB"), ("FAKECUDA_MEM", "16G")],
        );
        let what = format!("{path}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.int("stack_16k"), 0, "{what}");
        assert_eq!(r.get("device_stack_delta"), stack_16k, "{what}");
        assert_eq!(
            r.get("charged_stack_delta"),
            stack_16k,
            "charged as taken: {what}"
        );
        assert_eq!(r.int("stack_back"), 0, "{what}");
        assert_eq!(
            r.get("charged_back_delta"),
            0,
            "lowered, given back: {what}"
        );
        assert_eq!(r.int("heap_1g"), 0, "{what}");
        assert_eq!(r.get("charged_heap_delta"), GIB, "charged when set: {what}");
        assert_eq!(r.get("device_heap_delta"), 0, "taken later: {what}");
        assert_eq!(r.int("malloc_kernel"), 0, "{what}");
        assert!(r.get("device_after_malloc_kernel_delta") >= GIB, "{what}");
        assert_eq!(
            r.get("charged_after_malloc_kernel_delta"),
            0,
            "charged once, when set: {what}"
        );
        assert_eq!(
            r.int("heap_after_kernel"),
            1,
            "the driver's own answer: {what}"
        );
        assert_eq!(r.int("printf"), 0, "{what}");
        assert_eq!(r.get("charged_printf_delta"), 0, "{what}");
        // Past the cap: refused before the driver is asked, and the limit stays as it was.
        for (limit, value) in [("stack", "16K"), ("heap", "4G")] {
            let r = client(
                path,
                &["limits_one", limit, value],
                &[("VRAMCAP_LIMIT", "2GiB"), ("FAKECUDA_MEM", "16G")],
            );
            let what = format!("{path} {limit}: {}{}", r.stdout, r.stderr);
            assert_eq!(r.int("set"), 2, "{what}");
            assert_eq!(r.get("charged_delta"), 0, "{what}");
            assert_eq!(r.get("device_delta"), 0, "{what}");
            assert!(r.get("value_after") < 1 << 30, "the limit stays: {what}");
            assert_eq!(r.int("alloc_after"), 0, "{what}");
        }
    }
}

#[test]
fn memory_the_driver_grows_by_itself_is_counted_and_later_allocations_are_refused() {
    for path in PATHS {
        let r = client(
            path,
            &["local_growth", "8192", "256"],
            &[("VRAMCAP_LIMIT", "4GiB"), ("FAKECUDA_MEM", "16G")],
        );
        let what = format!("{path}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.int("launch"), 0, "{what}");
        assert_eq!(
            r.get("device_after_launch_delta"),
            (8192 - 1024) * 132 * 2048,
            "{what}"
        );
        assert_eq!(r.int("alloc_after_growth"), 2, "{what}");
    }
}
