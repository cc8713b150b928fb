//! Stream capture: `cuStreamBeginCapture` (v1, `_v2`, `ToGraph`, and their `_ptsz` variants) and
//! `cuStreamEndCapture`. Nothing is charged here; the hooks only keep count of the captures under way, so
//! that our own driver queries switch to relaxed mode while any is (see `driver`), and capture stays as
//! transparent under vramcap as it is bare. Allocations made on a capturing stream become graph
//! allocation nodes, charged when the graph is launched (`hooks::graph`).
//! <https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__STREAM.html>

use crate::args::Out;
use crate::cuda::*;
use crate::driver::{self, Stream};
use std::ffi::c_void;

/// Counts a capture the driver began.
fn began(r: CUresult) -> CUresult {
    if r == CUDA_SUCCESS {
        driver::capture_began();
    }
    r
}

/// Counts a capture as ended once the driver says the stream no longer captures (an invalidated capture
/// ends too; a call on a stream that was not capturing, or from the wrong thread, ends nothing).
fn ended(stream: Stream, r: CUresult) -> CUresult {
    const NOTHING_ENDED: [CUresult; 4] = [
        CUDA_ERROR_INVALID_VALUE,
        CUDA_ERROR_INVALID_HANDLE,
        CUDA_ERROR_ILLEGAL_STATE,
        CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD,
    ];
    if !NOTHING_ENDED.contains(&r) && !matches!(stream.capturing(), Ok(true)) {
        driver::capture_ended();
    }
    r
}

pub fn begin_v1(pass: impl Fn() -> CUresult, _s: CUstream) -> CUresult {
    began(pass())
}

pub fn begin(pass: impl Fn() -> CUresult, _s: CUstream, _mode: i32) -> CUresult {
    began(pass())
}

pub fn begin_to_graph(
    pass: impl Fn() -> CUresult,
    _s: CUstream,
    _graph: CUgraph,
    _deps: *const CUgraphNode,
    _data: *const c_void,
    _n: usize,
    _mode: i32,
) -> CUresult {
    began(pass())
}

pub fn end(pass: impl Fn() -> CUresult, s: CUstream, _graph: Out<CUgraph>) -> CUresult {
    ended(Stream::of(s, false), pass())
}

pub fn end_ptsz(pass: impl Fn() -> CUresult, s: CUstream, _graph: Out<CUgraph>) -> CUresult {
    ended(Stream::of(s, true), pass())
}
