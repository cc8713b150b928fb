//! Who gives memory back when a worker needs more than its device has free: the decision of the priority
//! unloader (issue 5), kept free of I/O so it can be tested exhaustively.
//!
//! Rules: only workers that are not protected, can be asked to unload, hold memory on the device, and
//! have a strictly lower priority than the requester are candidates; the lowest priority goes first, and
//! among equals the largest holder; the plan stops as soon as enough would be freed. A plan that cannot
//! free enough says so, so the requester can be told at once instead of waiting out its timeout.

/// A worker as the unloader sees it on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    pub priority: i32,
    pub protected: bool,
    /// Bytes it holds on the device in question.
    pub held: u64,
    /// It declared a way to be asked (URL, signal, command, or suspend).
    pub can_unload: bool,
}

/// Whom to ask, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Indices into the workers given, in the order to ask them.
    pub victims: Vec<usize>,
    /// What they hold together.
    pub freed: u64,
    /// Whether that covers what was needed.
    pub enough: bool,
}

/// Every worker that may be asked for a requester of `requester_priority`, in the order to ask them.
pub fn reclaim_order(workers: &[Worker], requester_priority: i32) -> Vec<usize> {
    let mut candidates: Vec<usize> = (0..workers.len())
        .filter(|&i| {
            let w = &workers[i];
            !w.protected && w.can_unload && w.held > 0 && w.priority < requester_priority
        })
        .collect();
    candidates.sort_by(|&a, &b| {
        let (wa, wb) = (&workers[a], &workers[b]);
        wa.priority
            .cmp(&wb.priority)
            .then(wb.held.cmp(&wa.held))
            .then(a.cmp(&b))
    });
    candidates
}

/// Plans how to free `needed` bytes for a requester of `requester_priority`: the start of
/// [`reclaim_order`] that frees enough.
pub fn plan_reclaim(workers: &[Worker], requester_priority: i32, needed: u64) -> Plan {
    let candidates = reclaim_order(workers, requester_priority);
    let mut plan = Plan {
        victims: Vec::new(),
        freed: 0,
        enough: needed == 0,
    };
    for i in candidates {
        if plan.enough {
            break;
        }
        plan.victims.push(i);
        plan.freed = plan.freed.saturating_add(workers[i].held);
        plan.enough = plan.freed >= needed;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GB: u64 = 1_000_000_000;

    fn worker(priority: i32, protected: bool, held: u64) -> Worker {
        Worker {
            priority,
            protected,
            held,
            can_unload: true,
        }
    }

    /// The example: a protected image worker, chat below video, on a 48 GB card.
    fn card() -> Vec<Worker> {
        let image = worker(10, true, 10 * GB);
        let chat = worker(1, false, 15 * GB);
        let video = worker(2, false, 30 * GB);
        vec![image, chat, video]
    }

    #[test]
    fn lowest_priority_first_and_never_the_protected_one() {
        let w = card();
        let plan = plan_reclaim(&w, 5, 6 * GB);
        assert_eq!(plan.victims, vec![1], "chat alone covers 6 GB");
        let plan = plan_reclaim(&w, 5, 20 * GB);
        assert_eq!(plan.victims, vec![1, 2], "then video");
        assert!(plan.enough);
        let plan = plan_reclaim(&w, 50, 100 * GB);
        assert_eq!(
            plan.victims,
            vec![1, 2],
            "never image, whatever the requester"
        );
        assert!(!plan.enough, "and it says so at once");
        assert_eq!(plan.freed, 45 * GB);
    }

    #[test]
    fn equal_or_higher_priority_is_never_asked() {
        let w = card();
        assert_eq!(
            plan_reclaim(&w, 2, 20 * GB).victims,
            vec![1],
            "video has the requester's priority"
        );
        assert!(plan_reclaim(&w, 1, GB).victims.is_empty());
    }

    #[test]
    fn largest_holder_first_among_equals_and_only_those_that_can_unload() {
        let mut w = vec![
            worker(1, false, GB),
            worker(1, false, 3 * GB),
            worker(1, false, 2 * GB),
        ];
        assert_eq!(plan_reclaim(&w, 2, 4 * GB).victims, vec![1, 2]);
        w[1].can_unload = false;
        assert_eq!(plan_reclaim(&w, 2, 2 * GB).victims, vec![2]);
    }

    proptest! {
        #[test]
        fn plans_respect_every_rule(
            ws in proptest::collection::vec((0i32..5, any::<bool>(), 0u64..100, any::<bool>()), 0..12),
            requester in 0i32..6,
            needed in 0u64..300,
        ) {
            let workers: Vec<Worker> = ws.iter().map(|&(p, prot, held, can)| Worker {
                priority: p, protected: prot, held, can_unload: can,
            }).collect();
            let plan = plan_reclaim(&workers, requester, needed);
            let mut freed = 0;
            for (k, &i) in plan.victims.iter().enumerate() {
                let w = &workers[i];
                prop_assert!(!w.protected && w.can_unload && w.held > 0 && w.priority < requester);
                if k > 0 {
                    let prev = &workers[plan.victims[k - 1]];
                    prop_assert!((prev.priority, std::cmp::Reverse(prev.held)) <= (w.priority, std::cmp::Reverse(w.held)));
                }
                // Stops as soon as enough: every victim but the last leaves the need uncovered.
                prop_assert!(freed < needed);
                freed += w.held;
            }
            prop_assert_eq!(freed, plan.freed);
            let available: u64 = workers.iter()
                .filter(|w| !w.protected && w.can_unload && w.priority < requester)
                .map(|w| w.held).sum();
            prop_assert_eq!(plan.enough, needed == 0 || available >= needed);
        }
    }
}
