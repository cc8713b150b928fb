//! Slots: held by a record lock, written part by part, and read back only when the process that holds
//! the lock is the process the slot names.
//!
//! - A process claims a slot by taking a write lock on its bytes (`F_SETLK`, never waiting). The kernel
//!   drops the lock when the process exits or execs, so a slot is free again the moment its owner is gone,
//!   however it went; nothing needs the PID to be checked against `/proc` to reclaim it.
//! - Readers ask the kernel who holds each slot (`F_GETLK`). A slot is shown only if its holder is the
//!   PID that its bytes name: bytes that anyone wrote for someone else's PID are no one's.
//! - Each part (the owner's, the request, the answer) has one writer, who rewrites it whole with its check
//!   sum in one `pwrite`; a copy whose sum does not match was torn by a write, or forged, and is read again
//!   or left out.

use super::identity::Identity;
use super::layout::*;
use super::segment::{plain_bytes, Segment};
use crate::log::unix_ms;
use std::ops::Range;

/// A slot this process holds, with the owner's part and request part it last wrote there.
pub(crate) struct Held {
    slot: usize,
    image: VramcapSlot,
}

/// A process's request for memory on a device (the pressure handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub seq: u32,
    pub uuid: [u8; 16],
    pub bytes: u64,
    pub unix_ms: u64,
}

const HEADER: usize = std::mem::size_of::<VramcapHeader>();
const SLOT: usize = std::mem::size_of::<VramcapSlot>();
const SLOTS: usize = VRAMCAP_SLOTS as usize;
const OWNER: Range<usize> = 0..VRAMCAP_REQUEST_PART;
const REQUEST: Range<usize> = VRAMCAP_REQUEST_PART..VRAMCAP_ANSWER_PART;
const ANSWER: Range<usize> = VRAMCAP_ANSWER_PART..SLOT;
/// How often a reader copies a part again that a write tore (a write takes microseconds).
const TRIES: usize = 32;

fn offset(i: usize) -> usize {
    HEADER + i * SLOT
}

fn zeroed() -> VramcapSlot {
    // SAFETY: a slot is plain integers: all zeros is a valid value.
    unsafe { std::mem::zeroed() }
}

fn bytes(s: &VramcapSlot) -> &[u8] {
    // SAFETY: a slot is plain integers without padding (layout's size checks).
    unsafe { plain_bytes(s) }
}

fn bytes_mut(s: &mut VramcapSlot) -> &mut [u8] {
    // SAFETY: as above, and every byte pattern is a valid slot, so any write through the slice is too.
    unsafe { std::slice::from_raw_parts_mut((s as *mut VramcapSlot).cast(), SLOT) }
}

fn sealed(part: &[u8]) -> bool {
    part[..8] == vramcap_check(part).to_le_bytes()
}

fn blank(part: &[u8]) -> bool {
    part.iter().all(|&b| b == 0)
}

/// A part as its reader takes it: checked, or never written (zeros).
fn whole(part: &[u8]) -> bool {
    sealed(part) || blank(part)
}

fn seal(part: &mut [u8]) {
    let check = vramcap_check(part);
    part[..8].copy_from_slice(&check.to_le_bytes());
}

/// Whether the slot `s`, held by `holder` (as our namespace sees it), names its holder.
fn names(s: &VramcapSlot, holder: u32) -> bool {
    holder != 0
        && s.state == VRAMCAP_SLOT_LIVE
        && (s.pid == holder || (s.host_pid != 0 && s.host_pid == holder))
}

impl Segment {
    /// Every slot some process holds, with the holder's PID (this process's own slots included).
    pub fn holders(&self) -> Vec<(usize, u32)> {
        let mut out = self.held_by_others();
        let me = std::process::id();
        out.extend(self.held.lock().iter().map(|h| (h.slot, me)));
        out.sort_unstable();
        out.dedup_by_key(|(i, _)| *i);
        out
    }

    /// The slots other processes hold. One query per held slot at most: after a lock, the search goes
    /// on at the next slot, so no pattern of locks makes it longer.
    fn held_by_others(&self) -> Vec<(usize, u32)> {
        let end = offset(SLOTS);
        let mut out = Vec::new();
        let mut at = HEADER;
        while at < end {
            let Some((start, len, pid)) = self.first_lock(at, end - at) else {
                break;
            };
            let stop = if len == 0 {
                end
            } else {
                (start + len).min(end)
            };
            let first = start.max(at).saturating_sub(HEADER) / SLOT;
            let last = (stop.saturating_sub(HEADER))
                .div_ceil(SLOT)
                .clamp(first + 1, SLOTS);
            out.extend((first..last).map(|i| (i, pid)));
            at = offset(last);
        }
        out
    }

    /// A copy of slot `i` in which every part passed its check (a part never written reads as zeros; a
    /// request or answer part that never passes reads as zeros too), or `None` if the owner's part never
    /// passes.
    fn copy(&self, i: usize) -> Option<VramcapSlot> {
        let mut s = zeroed();
        for attempt in 0..TRIES {
            self.read_at(bytes_mut(&mut s), offset(i));
            let b = bytes(&s);
            let owner = sealed(&b[OWNER]);
            if owner && whole(&b[REQUEST]) && whole(&b[ANSWER]) {
                return Some(s);
            }
            if attempt + 1 == TRIES && owner {
                let b = bytes_mut(&mut s);
                for part in [REQUEST, ANSWER] {
                    if !whole(&b[part.clone()]) {
                        b[part].fill(0);
                    }
                }
                return Some(s);
            }
            std::thread::yield_now();
        }
        None
    }

    /// The answer part of slot `i` (zeros if it never passes its check).
    fn answer_part(&self, i: usize) -> VramcapSlot {
        let mut s = zeroed();
        for _ in 0..TRIES {
            self.read_at(&mut bytes_mut(&mut s)[ANSWER], offset(i) + ANSWER.start);
            if whole(&bytes(&s)[ANSWER]) {
                return s;
            }
            std::thread::yield_now();
        }
        zeroed()
    }

    /// Writes a part of a slot this process holds, after taking its lock again: a lock this process lost
    /// (a descriptor of the file closed elsewhere in it drops them all) may be another's by now.
    fn write_own_part(&self, i: usize, s: &mut VramcapSlot, part: Range<usize>) -> bool {
        self.set_lock(libc::F_WRLCK, offset(i), SLOT) && self.write_part(i, s, part)
    }

    fn write_part(&self, i: usize, s: &mut VramcapSlot, part: Range<usize>) -> bool {
        let b = bytes_mut(s);
        seal(&mut b[part.clone()]);
        self.write_at(&b[part.clone()], offset(i) + part.start)
    }

    /// Every slot whose lock holder is the process it names, with its index.
    pub fn live(&self) -> Vec<(usize, VramcapSlot)> {
        self.holders()
            .into_iter()
            .filter_map(|(i, holder)| Some((i, self.copy(i).filter(|s| names(s, holder))?)))
            .collect()
    }

    /// Slot `i`, if the process that holds its lock is the one it names.
    pub fn read(&self, i: usize) -> Option<VramcapSlot> {
        if i >= SLOTS {
            return None;
        }
        let holder = if self.held.lock().iter().any(|h| h.slot == i) {
            std::process::id()
        } else {
            self.first_lock(offset(i), SLOT)?.2
        };
        self.copy(i).filter(|s| names(s, holder))
    }

    /// Takes a free slot for `who`: one that no process holds. `None` if every slot is held.
    ///
    /// The slot that the image this process replaced with `exec` held (same PID and start time; the
    /// kernel dropped its lock at the exec) comes first, so the process keeps one row.
    pub fn claim(&self, who: &Identity) -> Option<usize> {
        if !self.writable {
            return None;
        }
        let mut held = self.held.lock();
        let others = self.held_by_others();
        // One read of the whole table (its request and answer parts unused here).
        let mut table = vec![zeroed(); SLOTS];
        // SAFETY: slots are plain integers without padding, laid out back to back as in the file, so
        // the vector's bytes are SLOTS slots' worth and any bytes read into them make valid slots.
        let raw = unsafe {
            std::slice::from_raw_parts_mut(table.as_mut_ptr().cast::<u8>(), SLOTS * SLOT)
        };
        self.read_at(raw, offset(0));
        let own_image = |s: &VramcapSlot| {
            who.start_time != 0 && s.pid == who.pid && s.start_time == who.start_time
        };
        let mut order: Vec<usize> = (0..SLOTS)
            .filter(|i| !others.iter().any(|(o, _)| o == i) && !held.iter().any(|h| h.slot == *i))
            .collect();
        order.sort_by_key(|&i| !own_image(&table[i]));
        for i in order {
            if !self.set_lock(libc::F_WRLCK, offset(i), SLOT) {
                continue;
            }
            let mut image = who.slot();
            // Nothing pending: start the requests where the answers of a previous holder stopped.
            image.request_seq = self.answer_part(i).answer_seq;
            if !(self.write_part(i, &mut image, OWNER) && self.write_part(i, &mut image, REQUEST)) {
                self.set_lock(libc::F_UNLCK, offset(i), SLOT);
                return None;
            }
            held.push(Held { slot: i, image });
            return Some(i);
        }
        None
    }

    /// Gives back slot `i`, if this process holds it: marks it free, then drops the lock.
    pub fn release(&self, i: usize) {
        let mut held = self.held.lock();
        if let Some(k) = held.iter().position(|h| h.slot == i) {
            let mut h = held.swap_remove(k);
            h.image.state = VRAMCAP_SLOT_FREE;
            self.write_own_part(i, &mut h.image, OWNER);
            self.set_lock(libc::F_UNLCK, offset(i), SLOT);
        }
    }

    /// Takes the locks of this process's slots again; false if another process holds one of them now
    /// (this process lost it: a descriptor of the file closed elsewhere in the process drops its locks).
    pub fn still_holds(&self) -> bool {
        let held = self.held.lock();
        held.iter()
            .all(|h| self.set_lock(libc::F_WRLCK, offset(h.slot), SLOT))
    }

    /// Publishes a slot's device figures (its holder only).
    pub fn write_devices(&self, i: usize, devices: &[VramcapDevice]) {
        let mut held = self.held.lock();
        if let Some(h) = held.iter_mut().find(|h| h.slot == i) {
            let mut all = [VramcapDevice::default(); VRAMCAP_SLOT_DEVICES];
            for (d, dev) in all.iter_mut().zip(devices) {
                *d = *dev;
            }
            h.image.devices = all;
            h.image.updated_unix_ms = unix_ms();
            self.write_own_part(i, &mut h.image, OWNER);
        }
    }

    /// Posts a request for `bytes` on the device `uuid` in slot `i` (its holder only); returns the
    /// request's sequence number, which [`Segment::answer_to`] waits for (0 if the slot is not ours).
    pub fn post_request(&self, i: usize, uuid: [u8; 16], bytes: u64) -> u32 {
        let mut held = self.held.lock();
        let Some(h) = held.iter_mut().find(|h| h.slot == i) else {
            return 0;
        };
        // Sequence 0 is "never answered": skip it when the count wraps.
        h.image.request_seq = h.image.request_seq.wrapping_add(1).max(1);
        h.image.request_uuid = uuid;
        h.image.request_bytes = bytes;
        h.image.request_unix_ms = unix_ms();
        if !self.write_own_part(i, &mut h.image, REQUEST) {
            return 0;
        }
        h.image.request_seq
    }

    /// The unloader's answer to request `seq` of slot `i`, or to a later request of the slot (which, posted
    /// while `seq` was unanswered, covers it: see the preload's `publish::post_request`), once given.
    pub fn answer_since(&self, i: usize, seq: u32) -> Option<u32> {
        let a = self.answer_part(i);
        // Sequence numbers wrap: "at or after seq" is within half the range after it.
        (a.answer_seq != 0 && a.answer_seq.wrapping_sub(seq) < 1 << 31).then_some(a.answer)
    }

    /// The unloader's answer to request `seq` of slot `i`, once given.
    pub fn answer_to(&self, i: usize, seq: u32) -> Option<u32> {
        let a = self.answer_part(i);
        (a.answer_seq == seq).then_some(a.answer)
    }

    /// The request pending in slot `i`, if any.
    pub fn pending_request(&self, i: usize) -> Option<Request> {
        let s = self.copy(i)?;
        (sealed(&bytes(&s)[REQUEST]) && s.request_seq != s.answer_seq).then_some(Request {
            seq: s.request_seq,
            uuid: s.request_uuid,
            bytes: s.request_bytes,
            unix_ms: s.request_unix_ms,
        })
    }

    /// Rewrites the answer part of slot `i` (the unloader's, and only if slot `i` is still `pid`'s when
    /// `pid` is given).
    fn update_answer(&self, i: usize, pid: Option<u32>, change: impl FnOnce(&mut VramcapSlot)) {
        if !self.writable || i >= SLOTS {
            return;
        }
        if let Some(pid) = pid {
            if self.read(i).is_none_or(|s| s.pid != pid) {
                return;
            }
        }
        let mut a = self.answer_part(i);
        change(&mut a);
        self.write_part(i, &mut a, ANSWER);
    }

    /// Answers request `seq` of slot `i` (the unloader).
    pub fn answer(&self, i: usize, seq: u32, answer: u32) {
        self.update_answer(i, None, |a| {
            a.answer_seq = seq;
            a.answer = answer;
        });
    }

    /// Records that the unloader suspended slot `i`'s process `pid` (moved `bytes` to host), or, with
    /// `bytes == None`, that it resumed it. Ignored if the slot no longer belongs to `pid`.
    pub fn mark_suspended(&self, i: usize, pid: u32, bytes: Option<u64>) {
        self.update_answer(i, Some(pid), |a| {
            a.suspended_bytes = bytes.unwrap_or(0);
            a.suspended_unix_ms = if bytes.is_some() { unix_ms() } else { 0 };
        });
    }

    /// Records that the unloader asked slot `i`'s process `pid` to unload what held `bytes`, or, with
    /// `None`, that it told it to load again. Ignored if the slot no longer belongs to `pid`.
    pub fn mark_unloaded(&self, i: usize, pid: u32, bytes: Option<u64>) {
        self.update_answer(i, Some(pid), |a| {
            a.unloaded_bytes = bytes.unwrap_or(0);
            a.unloaded_unix_ms = if bytes.is_some() { unix_ms() } else { 0 };
            if bytes.is_some() {
                a.unloads = a.unloads.wrapping_add(1);
            } else {
                a.reloads = a.reloads.wrapping_add(1);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::{test_path as temp, text};

    fn device(n: u64) -> VramcapDevice {
        VramcapDevice {
            uuid: [1; 16],
            charged: n,
            requested: n,
            peak: n,
            ..Default::default()
        }
    }

    #[test]
    fn an_exec_gets_the_slot_of_the_image_it_replaced() {
        let path = temp("own-image");
        let seg = Segment::open_or_create(&path, 0o600).unwrap();
        let others = Identity {
            start_time: 0,
            ..Identity::of_this_process(Some("other"), 0)
        };
        let lower = seg.claim(&others).unwrap();
        let me = Identity::of_this_process(Some("before exec"), 0);
        let first = seg.claim(&me).unwrap();
        // A free slot before it, and what exec does: the kernel drops the lock; the bytes stay.
        seg.release(lower);
        assert!(seg.set_lock(libc::F_UNLCK, offset(first), SLOT));
        seg.held.lock().retain(|h| h.slot != first);
        assert!(lower < first);
        let after = Identity::of_this_process(Some("after exec"), 0);
        assert_eq!(
            seg.claim(&after),
            Some(first),
            "the same PID and start time"
        );
        assert_eq!(
            seg.read(first).map(|s| text(&s.name)),
            Some("after exec".into())
        );
        drop(seg);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_slot_that_names_another_process_than_its_holder_is_no_ones() {
        let path = temp("forged");
        let seg = Segment::open_or_create(&path, 0o600).unwrap();
        let me = Identity::of_this_process(Some("me"), 0);
        let forged = Identity {
            pid: 1,
            name: "init?".into(),
            ..me.clone()
        };
        let f = seg.claim(&forged).unwrap();
        let mine = seg.claim(&me).unwrap();
        assert!(seg.read(f).is_none());
        let live: Vec<usize> = seg.live().into_iter().map(|(i, _)| i).collect();
        assert_eq!(live, vec![mine]);
        // Released: no longer live, and free for the next claim.
        seg.release(mine);
        assert!(seg.read(mine).is_none());
        assert!(seg.live().is_empty());
        assert_eq!(seg.claim(&me), Some(mine));
        drop(seg);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn readers_see_whole_updates_only() {
        let path = temp("torn");
        let seg = std::sync::Arc::new(Segment::open_or_create(&path, 0o600).unwrap());
        let slot = seg.claim(&Identity::of_this_process(Some("w"), 0)).unwrap();
        let writer = {
            let seg = std::sync::Arc::clone(&seg);
            std::thread::spawn(move || {
                for n in 0..20_000u64 {
                    seg.write_devices(slot, &[device(n)]);
                }
            })
        };
        let mut seen = 0;
        while !writer.is_finished() {
            if let Some(s) = seg.read(slot) {
                let d = s.devices[0];
                assert!(
                    d.charged == d.requested && d.requested == d.peak,
                    "torn read: {d:?}"
                );
                seen += 1;
            }
        }
        writer.join().unwrap();
        assert!(seen > 0);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_truncated_or_grown_file_faults_nobody() {
        let path = temp("truncated");
        let seg = Segment::open_or_create(&path, 0o600).unwrap();
        let me = Identity::of_this_process(Some("me"), 0);
        let slot = seg.claim(&me).unwrap();
        let len = crate::shm::segment::segment_len() as u64;
        for size in [
            0,
            1,
            63,
            64,
            65,
            offset(slot) as u64 + 100,
            len / 2,
            len - 1,
            len,
            len * 3,
        ] {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(size)
                .unwrap();
            // Everything a worker, a reader and the unloader do: no fault, sane answers.
            let _ = seg.header();
            let _ = seg.live();
            let _ = seg.holders();
            let _ = seg.pending_request(slot);
            let seq = seg.post_request(slot, [1; 16], 5);
            seg.answer(slot, seq, VRAMCAP_ANSWER_FREED);
            assert_eq!(
                seg.answer_to(slot, seq),
                Some(VRAMCAP_ANSWER_FREED),
                "size {size}"
            );
            seg.write_devices(slot, &[device(size)]);
            assert_eq!(
                seg.read(slot).map(|s| s.devices[0].charged),
                Some(size),
                "the holder's next write puts its slot back (size {size})"
            );
            assert_eq!(
                seg.is_at(&path),
                size >= len && size != 0 && seg.header().magic != 0
            );
            assert!(seg.claim(&me).is_some());
        }
        drop(seg);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn garbage_in_every_part_is_left_out() {
        let path = temp("garbage");
        let seg = Segment::open_or_create(&path, 0o600).unwrap();
        let slot = seg
            .claim(&Identity::of_this_process(Some("me"), 0))
            .unwrap();
        let seq = seg.post_request(slot, [2; 16], 7);
        assert_eq!(seg.pending_request(slot).map(|r| r.seq), Some(seq));
        // Someone who may write the file flips one byte of each part.
        for at in [OWNER.start + 20, REQUEST.start + 20, ANSWER.start + 9] {
            let mut b = [0u8; 1];
            seg.read_at(&mut b, offset(slot) + at);
            b[0] ^= 0x5a;
            assert!(seg.write_at(&b, offset(slot) + at));
        }
        assert!(seg.read(slot).is_none(), "the owner's part fails its check");
        assert!(seg.pending_request(slot).is_none());
        assert_eq!(seg.answer_to(slot, seq), None);
        // The holder's next writes make it whole again.
        seg.write_devices(slot, &[device(3)]);
        assert_eq!(seg.read(slot).map(|s| s.devices[0].charged), Some(3));
        drop(seg);
        std::fs::remove_file(&path).unwrap();
    }
}
