//! The interposer against the fake driver, through each of the three paths to the driver: exported
//! symbols (`link`), `dlsym` on libcuda (`dlsym`), and `cuGetProcAddress_v2` (`gpa`).

mod common;
use common::*;

#[test]
fn cap_holds_on_every_path() {
    for path in PATHS {
        let r = client(path, &["cap"], &[("VRAMCAP_LIMIT", "1GiB")]);
        // 1 GiB cap, 300 MiB context: eleven 64 MiB allocations fit (1004 MiB), the twelfth does not.
        assert_eq!(r.get("allocated"), 11, "{path}: {}", r.stdout);
        assert_eq!(
            r.int("refused_code"),
            2,
            "{path}: refusal must be CUDA_ERROR_OUT_OF_MEMORY"
        );
        assert_eq!(
            r.get("driver_called_on_refusal"),
            0,
            "{path}: the driver must not see a refused call"
        );
        assert!(
            r.get("device_used_at_cap") <= GIB,
            "{path}: device holds more than the cap"
        );
        assert_eq!(
            r.get("info_total"),
            GIB,
            "{path}: cuMemGetInfo total is the cap"
        );
        assert_eq!(
            r.get("info_free"),
            GIB - CONTEXT - 11 * 64 * MIB,
            "{path}: free is what the cap leaves"
        );
        assert_eq!(
            r.get("device_total"),
            GIB,
            "{path}: cuDeviceTotalMem is the cap"
        );
        assert_eq!(
            r.get("charged_after_free"),
            CONTEXT,
            "{path}: only the context stays charged"
        );
        assert_eq!(
            r.int("alloc_after"),
            0,
            "{path}: the process keeps working after a refusal"
        );
        assert!(
            r.stderr.contains(
                "vramcap: device 0 (GPU-fa4e0000-0000-0000-0000-000000000000): refused 64.00 MiB"
            ),
            "{path}: refusal line: {}",
            r.stderr
        );
    }
}

#[test]
fn an_allocation_without_a_context_gets_the_drivers_error_and_costs_nothing() {
    // One device (the driver call that finds the current device is skipped) and two (it is made).
    for devices in ["1", "2"] {
        let vars = [
            ("VRAMCAP_LIMIT", "1GiB"),
            ("FAKECUDA_DEVICES", devices),
            ("VRAMCAP_CONTEXT_BYTES", "16MiB"),
            ("VRAMCAP_NVML", "off"),
        ];
        let r = client("dlsym", &["nocontext"], &vars);
        assert_eq!(
            r.int("nocontext_r"),
            201,
            "CUDA_ERROR_INVALID_CONTEXT: {}",
            r.stdout
        );
        assert_eq!(
            r.get("base"),
            16 << 20,
            "only the context is charged: {}",
            r.stdout
        );
        assert_eq!(r.int("alloc_r"), 0, "{}", r.stdout);
        assert_eq!(r.get("grew"), 64 << 20, "{devices} devices: {}", r.stdout);
    }
}

#[test]
fn refusal_lines_are_rate_limited() {
    let r = client("link", &["threads", "8"], &[("VRAMCAP_LIMIT", "400MiB")]);
    assert!(r.get("refusals") > 5, "{}", r.stdout);
    let lines = r.stderr.lines().filter(|l| l.contains("refused")).count();
    assert!(
        (1..=3).contains(&lines),
        "one line a second at most, got {lines}:\n{}",
        r.stderr
    );
}

#[test]
fn charges_the_drivers_rounding() {
    for path in PATHS {
        let r = client(path, &["rounding"], &[("VRAMCAP_LIMIT", "2GiB")]);
        assert_eq!(r.get(&format!("size_{}", 2 * MIB + 1)), 4 * MIB, "{path}");
        assert_eq!(r.get(&format!("size_{}", 3 * MIB)), 4 * MIB, "{path}");
        assert_eq!(r.get(&format!("size_{}", 10 * MIB + 7)), 12 * MIB, "{path}");
        assert_eq!(
            r.get("size_65536"),
            2 * MIB,
            "{path}: a lone small allocation takes a page"
        );
        for key in ["packed_64", "packed_half_freed", "packed_after_free"] {
            let device = r.get(&format!("{key}_device"));
            assert_eq!(
                r.get(key),
                device,
                "{path}: {key}: charged as the device holds"
            );
        }
        let packed = r.get("packed_64");
        assert!(
            (4 * MIB..=6 * MIB).contains(&packed),
            "{path}: 64 x 64 KiB in 2-3 pages"
        );
        assert_eq!(
            r.get("packed_half_freed"),
            packed,
            "{path}: fragmented pages stay charged"
        );
        assert_eq!(r.get("packed_after_free"), 0, "{path}");
    }
}

#[test]
fn unknown_pointer_free_reaches_the_driver() {
    for path in PATHS {
        let r = client(path, &["unknown_free"], &[("VRAMCAP_LIMIT", "1GiB")]);
        assert_eq!(
            r.int("unknown_free"),
            1,
            "{path}: the driver's own answer (invalid value)"
        );
        assert_eq!(r.get("driver_free_calls"), 1, "{path}");
    }
}

#[test]
fn threads_never_cross_the_cap() {
    for path in PATHS {
        let r = client(path, &["threads", "32"], &[("VRAMCAP_LIMIT", "512MiB")]);
        assert!(
            r.get("max_device_used") <= 512 * MIB,
            "{path}: {}",
            r.stdout
        );
        assert!(r.get("refusals") > 0, "{path}: the test must reach the cap");
        assert_eq!(r.get("other_errors"), 0, "{path}");
        assert_eq!(r.get("charged_after"), CONTEXT, "{path}");
        assert_eq!(r.get("device_used_after"), CONTEXT, "{path}");
    }
}

#[test]
fn every_kind_of_device_memory_is_charged() {
    for path in PATHS {
        let r = client(path, &["kinds"], &[("VRAMCAP_LIMIT", "2GiB")]);
        assert_eq!(r.get("pitch"), 1024, "{path}");
        assert_eq!(
            r.get("pitch_charge"),
            4 * MIB,
            "{path}: 1024 x 3000 bytes take two pages"
        );
        assert_eq!(r.get("pitch_freed"), 0, "{path}");
        assert_eq!(r.get("managed_charge"), 6 * MIB, "{path}");
        assert_eq!(
            r.get("async_charge"),
            12 * MIB,
            "{path}: three 3 MiB allocations from the pool"
        );
        assert_eq!(
            r.get("async_after_free"),
            12 * MIB,
            "{path}: freed into the pool, still reserved"
        );
        assert_eq!(
            r.get("async_reuse"),
            12 * MIB,
            "{path}: reuse of the pool's reserve costs nothing"
        );
        assert_eq!(
            r.get("async_after_trim"),
            2 * MIB,
            "{path}: the pool trimmed itself at the sync"
        );
        assert_eq!(r.get("vmm_charge"), 8 * MIB, "{path}");
        assert_eq!(
            r.get("vmm_released_but_mapped"),
            8 * MIB,
            "{path}: still mapped, still held"
        );
        assert_eq!(r.get("vmm_unmapped"), 0, "{path}");
        assert_eq!(r.int("host_create_r"), 0, "{path}");
        assert_eq!(
            r.get("host_vmm_charge"),
            0,
            "{path}: host memory is not counted"
        );
        assert_eq!(r.get("array_charge"), 16 * MIB, "{path}");
        assert_eq!(r.get("array_destroyed"), 0, "{path}");
    }
}

#[test]
fn vmm_and_async_respect_the_cap() {
    // 300 MiB of context and 2 MiB to spare: every path is refused like cuMemAlloc.
    for path in PATHS {
        let r = client(path, &["kinds"], &[("VRAMCAP_LIMIT", "302MiB")]);
        for key in ["pitch_r", "managed_r", "async_r", "create_r", "array_r"] {
            assert_eq!(r.int(key), 2, "{path}: {key}: {}", r.stdout);
        }
        assert_eq!(
            r.int("host_create_r"),
            0,
            "{path}: host memory is not capped"
        );
    }
}

#[test]
fn unset_limit_counts_without_capping() {
    let r = client("link", &["info"], &[]);
    assert_eq!(r.get("info_total"), 4 * GIB, "the driver's truth");
    assert_eq!(r.get("device_total"), 4 * GIB);
}

#[test]
fn a_cap_above_the_device_shows_the_device_s_total() {
    // 8 GiB on the fake's 4 GiB device: a program that sizes itself from total must not plan for memory
    // the device does not have.
    for path in PATHS {
        let r = client(path, &["info"], &[("VRAMCAP_LIMIT", "8GiB")]);
        assert_eq!(r.get("info_total"), 4 * GIB, "{path}: {}", r.stdout);
        assert_eq!(r.get("device_total"), 4 * GIB, "{path}: {}", r.stdout);
        assert!(
            r.get("info_free") <= 4 * GIB - CONTEXT,
            "{path}: {}",
            r.stdout
        );
    }
}

#[test]
fn percent_and_per_device_limits() {
    let r = client("link", &["info"], &[("VRAMCAP_LIMIT", "25%")]);
    assert_eq!(r.get("info_total"), GIB);
    let r = client(
        "dlsym",
        &["info"],
        &[(
            "VRAMCAP_LIMIT",
            "GPU-fa4e0000-0000-0000-0000-000000000000=1.5GiB",
        )],
    );
    assert_eq!(r.get("info_total"), 3 * GIB / 2);
    let r = client(
        "gpa",
        &["info"],
        &[
            ("VRAMCAP_LIMIT", "1=1GiB,0=768MiB"),
            ("VRAMCAP_ALLOW_ABSENT_DEVICES", "1"),
        ],
    );
    assert_eq!(r.get("info_total"), 768 * MIB);
    assert!(
        r.stderr
            .contains("names device 1, which this process does not see")
            && r.stderr.contains("(allowed)"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_limit_for_a_device_not_seen_refuses_cuda_initialisation() {
    let absent_uuid = "GPU-fa4e0000-0000-0000-0000-0000000000ff";
    let cases = [
        ("1=1GiB,0=768MiB", "1", "1"),
        ("5=1G", "5", "1"),
        (
            &*format!("{absent_uuid}=1G"),
            &*absent_uuid.to_lowercase(),
            "1",
        ),
        // Device 1 of two, renumbered away by CUDA_VISIBLE_DEVICES.
        ("1=1G", "1", "2"),
    ];
    for (limit, named, devices) in cases {
        for path in PATHS {
            let r = client(
                path,
                &["info"],
                &[
                    ("VRAMCAP_LIMIT", limit),
                    ("FAKECUDA_DEVICES", devices),
                    ("CUDA_VISIBLE_DEVICES", "0"),
                ],
            );
            assert_eq!(
                r.int("init"),
                1,
                "{limit} via {path}: cuInit fails: {}",
                r.stdout
            );
            let lines: Vec<&str> = r
                .stderr
                .lines()
                .filter(|l| l.contains("names device"))
                .collect();
            assert_eq!(lines.len(), 1, "one line: {}", r.stderr);
            assert!(
                lines[0].contains(&format!("VRAMCAP_LIMIT={limit:?} names device {named},")),
                "names the variable, the value and the device: {}",
                lines[0]
            );
        }
    }
}

#[test]
fn cap_too_small_for_a_context_refuses_it() {
    let r = client("link", &["info"], &[("VRAMCAP_LIMIT", "100MiB")]);
    assert_eq!(r.int("retain"), 2, "{}", r.stdout);
    assert_eq!(r.get("start_failed"), 2);
}

#[test]
fn malformed_values_fail_closed_with_one_clear_error() {
    let cases = [
        ("VRAMCAP_LIMIT", "12 parsecs", "unknown unit"),
        ("VRAMCAP_LIMIT", "-5G", "not a number"),
        ("VRAMCAP_LIMIT", "", "empty size"),
        ("VRAMCAP_LIMIT", "0=1G,0=2G", "named twice"),
        ("VRAMCAP_LIMIT", "0", "zero"),
        ("VRAMCAP_LIMIT", "150%", "between 0% and 100%"),
        (
            "VRAMCAP_LOG",
            "loud",
            "expected off, error, warn, info or debug",
        ),
        ("VRAMCAP_CONTEXT_BYTES", "lots", "not a number"),
    ];
    for path in PATHS {
        for (var, value, reason) in cases {
            let r = client(path, &["config"], &[(var, value)]);
            assert_eq!(
                r.int("init"),
                1,
                "{path} {var}={value}: cuInit must fail: {}",
                r.stdout
            );
            assert_ne!(
                r.int("alloc_r"),
                0,
                "{path} {var}={value}: no memory may be taken"
            );
            assert_eq!(r.get("device_used"), 0, "{path} {var}={value}");
            let errors: Vec<&str> = r
                .stderr
                .lines()
                .filter(|l| l.starts_with("vramcap:"))
                .collect();
            assert_eq!(
                errors.len(),
                1,
                "{path} {var}={value}: exactly one error line: {}",
                r.stderr
            );
            assert!(
                errors[0].contains(&format!("{var}={value:?}")),
                "{path}: names variable and value: {}",
                errors[0]
            );
            assert!(
                errors[0].contains(reason),
                "{path}: says why: {}",
                errors[0]
            );
        }
    }
}

#[test]
fn unwrapped_entry_points_are_the_drivers_own() {
    for path in PATHS {
        let r = client(path, &["identity"], &[("VRAMCAP_LIMIT", "1GiB")]);
        for key in [
            "launch_dlsym_identical",
            "launch_gpa_identical",
            "launch_ptsz_identical",
            "export_table_identical",
            "alloc_wrapped_dlsym",
            "alloc_wrapped_gpa",
            "gpa_self_wrapped",
            "gpa_v1_wrapped",
            "gpa_dlsym_wrapped",
        ] {
            assert_eq!(r.get(key), 1, "{path}: {key}\n{}", r.stdout);
        }
    }
}

#[test]
fn proc_address_answers_match_the_real_drivers_table() {
    let table = env().table.display().to_string();
    let r = client("dlsym", &["table", &table], &[("VRAMCAP_LIMIT", "1GiB")]);
    assert_eq!(r.get("table_mismatched"), 0, "{}", r.stdout);
    assert!(r.get("table_checked") > 400, "{}", r.stdout);
    assert!(r.get("table_wrapped") > 100, "{}", r.stdout);
}

#[test]
fn rtld_next_from_another_preloaded_library_still_finds_the_next_definition() {
    let e = env();
    let preload = format!("{}:{}", e.preload.display(), e.nextlib.display());
    let r = client_with_preload("link", &["rtld_next"], &[], Some(preload));
    assert_eq!(r.get("rtld_next_ok"), 1, "{}{}", r.stdout, r.stderr);
}

#[test]
fn nvml_memory_info_shows_the_cap() {
    let r = client("dlsym", &["nvml"], &[("VRAMCAP_LIMIT", "1GiB")]);
    assert_eq!(r.int("nvml_r"), 0);
    assert_eq!(r.get("nvml_total"), GIB);
    assert_eq!(r.get("nvml_used"), r.get("charged"));
    assert_eq!(r.get("nvml_free"), GIB - r.get("charged"));
}

#[test]
fn a_second_context_leaves_the_primarys_charges_alone() {
    let r = client("link", &["ctx"], &[("VRAMCAP_LIMIT", "1GiB")]);
    assert_eq!(r.int("ctx_create"), 0);
    assert_eq!(r.int("ctx_destroy"), 0);
    assert_eq!(r.get("after_ctx_charge"), 4 * MIB, "{}", r.stdout);
}

#[test]
fn a_pool_that_grows_past_the_cap_is_rolled_back() {
    // The fake's pools grow in 64 MiB steps, more than the 32 MiB vramcap assumes at first: the first
    // allocation fits the reservation but not the growth, so it is undone and refused; the second is
    // refused up front with the learned step.
    let vars = [("VRAMCAP_LIMIT", "348MiB"), ("FAKECUDA_POOL_STEP", "64M")];
    for path in PATHS {
        let r = client(path, &["async_cap"], &vars);
        assert_eq!(r.int("first_r"), 2, "{path}: {}{}", r.stdout, r.stderr);
        assert_eq!(
            r.get("used_after_first"),
            CONTEXT,
            "{path}: the pool was trimmed back"
        );
        assert_eq!(r.int("second_r"), 2, "{path}");
        assert_eq!(r.get("used_after_second"), CONTEXT, "{path}");
        assert_eq!(r.get("charged"), CONTEXT, "{path}");
    }
}

#[test]
fn pools_growing_by_steps_stay_under_the_cap() {
    // Each growth of the pool is charged after the fact and the reservation made for it given back: the
    // bytes given back must never let later allocations past the cap.
    let vars = [("VRAMCAP_LIMIT", "1536MiB"), ("FAKECUDA_POOL_STEP", "32M")];
    for path in PATHS {
        let r = client(path, &["async_fill"], &vars);
        assert_eq!(
            r.int("last_r"),
            2,
            "{path}: refused in the end: {}{}",
            r.stdout,
            r.stderr
        );
        assert!(r.get("device_used") <= 1536 * MIB, "{path}: {}", r.stdout);
        assert!(
            r.get("allocated") >= 500,
            "{path}: most of the cap is usable: {}",
            r.stdout
        );
    }
}

#[test]
fn context_estimate_is_replaced_by_the_drivers_figure() {
    // The library guesses 100 MiB for a context that really costs 300 MiB; NVML's per-process figure
    // corrects it, and the cap then holds on what the driver really holds.
    let vars = [
        ("VRAMCAP_CONTEXT_BYTES", "100MiB"),
        ("VRAMCAP_LIMIT", "1GiB"),
    ];
    let r = client("link", &["converge"], &vars);
    assert_eq!(r.get("charged_later"), CONTEXT + 64 * MIB, "{}", r.stdout);
    let r = client("dlsym", &["cap"], &vars);
    assert!(r.get("device_used_at_cap") <= GIB, "{}", r.stdout);
    assert_eq!(r.get("allocated"), 11, "{}", r.stdout);
}

#[test]
fn memory_the_driver_takes_on_its_own_is_seen_before_a_large_allocation() {
    // 300 MiB context, six 64 MiB allocations, then the driver takes 128 MiB by itself (as a module load
    // does); the following allocations must stop at what the device really holds.
    for path in PATHS {
        let r = client(path, &["hidden"], &[("VRAMCAP_LIMIT", "1GiB")]);
        assert!(r.get("peak_device_used") <= GIB, "{path}: {}", r.stdout);
        assert_eq!(
            r.get("allocated"),
            9,
            "{path}: (1024 - 300 - 128) / 64 = 9: {}",
            r.stdout
        );
    }
}
