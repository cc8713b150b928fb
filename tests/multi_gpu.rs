//! Several devices (the fake with `FAKECUDA_DEVICES=2`): memory is charged to the device it lives on,
//! caps follow the process's view of `CUDA_VISIBLE_DEVICES` (ordinals) and the physical GPU (UUIDs), and
//! the shared segment keys every figure by UUID. Graph memory goes to its node's device and a context
//! limit to its context's, whichever device is current; two processes, one a device, replay captured
//! steps under per-device caps (issue 16; `scripts/gpu-multi.sh` runs the same on two GPUs).

mod common;
use common::*;

const DEV0: &str = "GPU-fa4e0000-0000-0000-0000-000000000000";
const DEV1: &str = "GPU-fa4e0000-0000-0000-0000-000000000001";

#[test]
fn memory_is_charged_to_the_device_it_lives_on() {
    // Device 1 capped at 1 GiB (300 MiB of it its context: room for 11 x 64 MiB), device 0 not; device 0
    // is current throughout, except in the thread that makes device 1 current.
    let vars = [("FAKECUDA_DEVICES", "2"), ("VRAMCAP_LIMIT", "1=1GiB")];
    for path in PATHS {
        let r = client(path, &["cross"], &vars);
        for what in ["create", "thread", "managed", "pool", "default_pool"] {
            assert_eq!(
                r.get(&format!("{what}_count")),
                11,
                "{path}: {what}: refused at device 1's cap\n{}{}",
                r.stdout,
                r.stderr
            );
            assert!(
                r.get(&format!("{what}_used1")) <= GIB,
                "{path}: {what}: {}",
                r.stdout
            );
        }
        for what in ["create", "pool", "default_pool"] {
            assert_eq!(
                r.get(&format!("{what}_used0")),
                CONTEXT,
                "{path}: {what}: device 0 untouched"
            );
        }
        assert_eq!(
            r.int("dev0_alloc"),
            0,
            "{path}: device 0 keeps its own room"
        );
    }
}

#[test]
fn caps_follow_visible_devices_by_ordinal_and_by_uuid() {
    // CUDA_VISIBLE_DEVICES=1,0: ordinal 0 is the second physical GPU.
    for (limit, capped) in [
        (format!("{DEV1}=1GiB"), true),
        ("0=1GiB".to_string(), true),
        (format!("{DEV0}=1GiB"), false),
        ("1=1GiB".to_string(), false),
    ] {
        let vars = [
            ("FAKECUDA_DEVICES", "2"),
            ("CUDA_VISIBLE_DEVICES", "1,0"),
            ("VRAMCAP_LIMIT", limit.as_str()),
        ];
        let r = client("dlsym", &["cap"], &vars);
        if capped {
            assert_eq!(r.get("allocated"), 11, "{limit}: {}{}", r.stdout, r.stderr);
            assert!(r.get("device_used_at_cap") <= GIB, "{limit}: {}", r.stdout);
        } else {
            assert!(
                r.get("allocated") > 11,
                "{limit}: ordinal 0 is not capped: {}",
                r.stdout
            );
        }
    }
}

#[test]
fn the_segment_keys_devices_by_uuid_whatever_the_ordinals() {
    let shm = shm_path("uuid-keys");
    let shm_s = shm.display().to_string();
    let common = [
        ("FAKECUDA_DEVICES", "2"),
        ("VRAMCAP_LIMIT", "1GiB"),
        ("VRAMCAP_SHM", shm_s.as_str()),
    ];
    // The same physical GPU seen as ordinal 0 by index, by UUID, and (third) another GPU.
    let views = [("by-index", "1"), ("by-uuid", DEV1), ("other", "0")];
    let holders: Vec<_> = views
        .iter()
        .map(|(name, visible)| {
            let mut vars = common.to_vec();
            vars.push(("CUDA_VISIBLE_DEVICES", visible));
            vars.push(("VRAMCAP_NAME", name));
            hold("dlsym", &vars)
        })
        .collect();
    let out = vramcap(&shm, &["status", "--json", "--no-nvml"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let uuid_of = |name: &str| {
        status["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["devices"][0]["uuid"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert_eq!(
        uuid_of("by-index").to_ascii_lowercase(),
        DEV1.to_ascii_lowercase()
    );
    assert_eq!(
        uuid_of("by-uuid").to_ascii_lowercase(),
        DEV1.to_ascii_lowercase()
    );
    assert_eq!(
        uuid_of("other").to_ascii_lowercase(),
        DEV0.to_ascii_lowercase()
    );
    let totals = status["totals"].as_array().unwrap();
    let on_dev1 = totals
        .iter()
        .find(|t| t["uuid"].as_str().unwrap().eq_ignore_ascii_case(DEV1))
        .expect("totals for the shared GPU");
    assert_eq!(on_dev1["processes"], 2, "{status}");
    for h in holders {
        h.release();
    }
    let _ = std::fs::remove_file(&shm);
}

/// Process `pid`'s charge on the device with `uuid`, as `vramcap status --json` shows it.
fn charged_on(status: &serde_json::Value, pid: u32, uuid: &str) -> Option<u64> {
    status["processes"]
        .as_array()?
        .iter()
        .find(|p| p["pid"] == pid)?["devices"]
        .as_array()?
        .iter()
        .find(|d| {
            d["uuid"]
                .as_str()
                .is_some_and(|u| u.eq_ignore_ascii_case(uuid))
        })?["charged_bytes"]
        .as_u64()
}

#[test]
fn graph_memory_on_device_1_is_charged_there_while_device_0_is_current() {
    // Device 0 capped at 1 GiB (room for one 512 MiB graph beside its 300 MiB context), device 1 at
    // 2 GiB (room for three): charged to the current device, the launches would stop after one.
    let vars = [
        ("FAKECUDA_DEVICES", "2"),
        ("VRAMCAP_LIMIT", "0=1GiB,1=2GiB"),
    ];
    for path in PATHS {
        for build in ["explicit", "addnode", "captured"] {
            let r = client(path, &["graphs_on_1", "8", "512", build], &vars);
            let what = format!("{path} {build}: {}{}", r.stdout, r.stderr);
            assert_eq!(r.get("launched"), 3, "refused at device 1's cap: {what}");
            assert_eq!(r.int("launch_refused_code"), 2, "{what}");
            assert_eq!(r.get("driver_called_on_refusal"), 0, "{what}");
            assert_eq!(r.get("held_reserved1"), 3 * 512 * MIB, "{what}");
            assert_eq!(r.get("held_reserved0"), 0, "{what}");
            assert_eq!(r.get("held_charged1"), CONTEXT + 3 * 512 * MIB, "{what}");
            assert!(r.get("held_used1") <= 2 * GIB, "{what}");
            assert_eq!(
                r.get("held_charged0"),
                CONTEXT,
                "device 0 untouched: {what}"
            );
            assert_eq!(r.get("held_used0"), CONTEXT, "{what}");
            // Device 1's trim gives its graph memory back, there.
            assert_eq!(r.int("trim1"), 0, "{what}");
            assert_eq!(r.get("trimmed_reserved1"), 0, "{what}");
            assert_eq!(r.get("trimmed_charged1"), CONTEXT, "{what}");
            assert_eq!(r.get("trimmed_charged0"), CONTEXT, "{what}");
            assert_eq!(r.int("alloc0_after"), 0, "{what}");
            assert_eq!(r.int("alloc1_after"), 0, "{what}");
        }
    }
    // The segment shows the charge under device 1's UUID.
    let shm = shm_path("graphs-on-1");
    let mut held = vars.to_vec();
    held.push(("VRAMCAP_SHM", shm.to_str().unwrap()));
    let holder = hold_scenario("dlsym", "graphs_on_1", &held);
    let out = vramcap(&shm, &["status", "--json", "--no-nvml"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let pid = holder.pid();
    assert_eq!(
        charged_on(&status, pid, DEV1),
        Some(CONTEXT + 3 * 512 * MIB),
        "{status}"
    );
    assert_eq!(charged_on(&status, pid, DEV0), Some(CONTEXT), "{status}");
    holder.release();
}

#[test]
fn a_context_limit_is_charged_to_its_context_s_device() {
    // A 4 GiB heap, and a 16 KiB stack ((16384 - 1024) x 132 x 2048 bytes, taken at once), set with
    // device 1's context current: charged to device 1 alone. Where only device 1 has room it is granted
    // there and refused on device 0; where only device 0 has room, the other way round.
    let stack_16k = (16384 - 1024) * 132 * 2048;
    for (limit, value, bytes) in [("heap", "4G", 4 * GIB), ("stack", "16K", stack_16k)] {
        for path in PATHS {
            let room_on_1 = [
                ("FAKECUDA_DEVICES", "2"),
                ("FAKECUDA_MEM", "16G"),
                ("VRAMCAP_LIMIT", "0=2GiB,1=8GiB"),
            ];
            let r = client(path, &["limit_on_1", limit, value], &room_on_1);
            let what = format!("{path} {limit} 0=2GiB,1=8GiB: {}{}", r.stdout, r.stderr);
            assert_eq!(r.int("set1"), 0, "{what}");
            assert_eq!(r.get("value1"), parse(value), "{what}");
            assert_eq!(r.get("value0"), r.get("value0_before"), "{what}");
            assert_eq!(r.get("set_charged1_delta"), bytes, "{what}");
            assert_eq!(r.int("set_charged0_delta"), 0, "device 0 untouched: {what}");
            assert_eq!(r.int("set_used0_delta"), 0, "{what}");
            if limit == "heap" {
                // The driver takes the heap at device 1's first kernel that calls malloc.
                assert_eq!(r.int("set_used1_delta"), 0, "{what}");
                assert_eq!(r.int("kernel1"), 0, "{what}");
                assert!(r.get("kernel_used1_delta") >= bytes, "{what}");
                assert_eq!(r.get("kernel_charged1_delta"), bytes, "{what}");
                assert_eq!(r.int("kernel_used0_delta"), 0, "{what}");
                assert_eq!(r.int("kernel_charged0_delta"), 0, "{what}");
            } else {
                assert_eq!(r.get("set_used1_delta"), bytes, "{what}");
            }
            assert_eq!(r.int("set0"), 2, "beyond device 0's cap: {what}");
            assert_eq!(r.int("set0_charged0_delta"), 0, "{what}");
            assert_eq!(r.int("alloc1_after"), 0, "{what}");

            let room_on_0 = [
                ("FAKECUDA_DEVICES", "2"),
                ("FAKECUDA_MEM", "16G"),
                ("VRAMCAP_LIMIT", "0=8GiB,1=2GiB"),
            ];
            let r = client(path, &["limit_on_1", limit, value], &room_on_0);
            let what = format!("{path} {limit} 0=8GiB,1=2GiB: {}{}", r.stdout, r.stderr);
            assert_eq!(r.int("set1"), 2, "beyond device 1's cap: {what}");
            assert_eq!(
                r.get("value1"),
                r.get("value1_before"),
                "the limit stays: {what}"
            );
            assert_eq!(r.int("set_charged1_delta"), 0, "{what}");
            assert_eq!(r.int("set_used1_delta"), 0, "{what}");
            assert_eq!(r.int("set_charged0_delta"), 0, "{what}");
            assert_eq!(r.int("set0"), 0, "device 0 has room: {what}");
            assert_eq!(r.get("set0_charged0_delta"), bytes, "{what}");
            assert_eq!(r.int("alloc1_after"), 0, "{what}");
        }
    }
}

/// A size with a K or G suffix, as the client parses it.
fn parse(v: &str) -> u64 {
    let (n, shift) = match v.as_bytes().last() {
        Some(b'K') => (&v[..v.len() - 1], 10),
        Some(b'G') => (&v[..v.len() - 1], 30),
        _ => (v, 0),
    };
    n.parse::<u64>().unwrap() << shift
}

#[test]
fn two_ranks_replay_captured_steps_each_under_its_own_device_s_cap() {
    // A two-process job, one rank a device, each capturing its step (a 128 MiB activation and a 256 MiB
    // output) and replaying it, then filling its device to the cap and replaying there. Device 0 is
    // capped at 1 GiB and device 1 at 2 GiB; each rank has its own current device (both visible, caps by
    // ordinal) or its own visible device (caps by UUID, the same setting for both, as a launcher gives).
    let by_uuid = format!("{DEV0}=1GiB,{DEV1}=2GiB");
    let step = CONTEXT + 384 * MIB;
    for style in ["async", "default"] {
        for (view, caps) in [("current", "0=1GiB,1=2GiB"), ("visible", by_uuid.as_str())] {
            for path in PATHS {
                let runs: Vec<Run> = std::thread::scope(|scope| {
                    let ranks: Vec<_> = ["0", "1"]
                        .into_iter()
                        .map(|rank| {
                            scope.spawn(move || {
                                let mut vars =
                                    vec![("FAKECUDA_DEVICES", "2"), ("VRAMCAP_LIMIT", caps)];
                                let dev = if view == "visible" {
                                    vars.push(("CUDA_VISIBLE_DEVICES", rank));
                                    vars.push(("VRAMCAP_ALLOW_ABSENT_DEVICES", "1"));
                                    "0"
                                } else {
                                    rank
                                };
                                client(path, &["graph_step", style, "256", "10", dev], &vars)
                            })
                        })
                        .collect();
                    ranks.into_iter().map(|h| h.join().unwrap()).collect()
                });
                for (rank, (r, cap)) in runs.iter().zip([GIB, 2 * GIB]).enumerate() {
                    let what = format!(
                        "{style} {view} {path} rank {rank}: {}{}",
                        r.stdout, r.stderr
                    );
                    let nodes = if style == "async" { 2 } else { 0 };
                    assert_eq!(r.get("alloc_nodes"), nodes, "{what}");
                    assert_eq!(r.int("first_launch"), 0, "{what}");
                    assert_eq!(r.get("charged_first"), step, "{what}");
                    assert_eq!(r.get("used_first"), step, "{what}");
                    assert_eq!(r.get("replay_failures"), 0, "{what}");
                    assert_eq!(
                        r.get("charged_after_replays"),
                        step,
                        "replays take nothing: {what}"
                    );
                    assert_eq!(r.get("used_after_replays"), step, "{what}");
                    // Filled to this rank's own device's cap, in 64 MiB blocks.
                    assert_eq!(r.int("fill_code"), 2, "{what}");
                    assert_eq!(r.get("fill_count"), (cap - step) / (64 * MIB), "{what}");
                    assert!(r.get("used_at_cap") <= cap, "{what}");
                    assert_eq!(
                        r.int("replay_at_cap"),
                        0,
                        "a replay at the cap takes nothing: {what}"
                    );
                    assert_eq!(
                        r.get("charged_after_replay_at_cap"),
                        r.get("charged_at_cap"),
                        "{what}"
                    );
                    assert!(r.get("used_after_replay_at_cap") <= cap, "{what}");
                    if view == "current" {
                        // Rank 1 holds only the client's context on device 0; rank 0 nothing on 1.
                        let other = if rank == 1 { CONTEXT } else { 0 };
                        assert_eq!(r.get("used_other"), other, "{what}");
                    }
                }
            }
        }
    }
}
