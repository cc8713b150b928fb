//! The caller's raw arguments as safe values. Each shim in `entry_points` turns every argument it got
//! into one of these, under one SAFETY note, before the hook runs, so that hook bodies are safe Rust:
//! - an out-parameter (`*mut T` for the driver to fill) becomes an [`Out<T>`];
//! - an in-parameter (`*const T` the driver reads) becomes an `Option<&T>`, `None` for null;
//! - numbers and the driver's opaque handles (streams, pools, arrays, graphs: `*mut c_void`, which hooks
//!   pass on and never dereference) stay as they are.
//!
//! The conversion is chosen by the argument's C type ([`Arg`]), so the table in `entry_points` needs no
//! annotation; a type with no conversion here does not compile.

use crate::cuda::*;
use std::ffi::{c_char, c_void};

/// A caller's out-parameter: where the caller asked the driver to write a `T`. Read it only after the
/// driver succeeded (before, it holds whatever the caller left there); a null one reads as `None` and
/// ignores writes.
pub struct Out<T>(*mut T);

impl<T> Clone for Out<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Out<T> {}

impl<T: Copy> Out<T> {
    /// What the pointer holds, if it is not null.
    pub fn get(self) -> Option<T> {
        // SAFETY: an `Out` is only made by `Arg::safe`, from a pointer the caller handed the driver for a
        // T, which the driver function's contract makes null or valid for reads and writes of a T.
        (!self.0.is_null()).then(|| unsafe { self.0.read() })
    }

    /// Writes `value` through the pointer, if it is not null.
    pub fn set(self, value: T) {
        if !self.0.is_null() {
            // SAFETY: as in `get`.
            unsafe { self.0.write(value) }
        }
    }
}

/// How a shim hands one raw argument to its hook.
pub trait Arg<'a> {
    type Safe;
    /// # Safety
    /// `self` is an argument the caller passed to the driver function being wrapped, whose contract
    /// makes a pointer null or valid for the type it names for the duration of the call.
    unsafe fn safe(self) -> Self::Safe;
}

macro_rules! as_is {
    ($($ty:ty),* $(,)?) => {$(
        impl<'a> Arg<'a> for $ty {
            type Safe = $ty;
            unsafe fn safe(self) -> $ty {
                self
            }
        }
    )*};
}

macro_rules! out {
    ($($ty:ty),* $(,)?) => {$(
        impl<'a> Arg<'a> for *mut $ty {
            type Safe = Out<$ty>;
            unsafe fn safe(self) -> Out<$ty> {
                Out(self)
            }
        }
    )*};
}

macro_rules! input {
    ($($ty:ty),* $(,)?) => {$(
        impl<'a> Arg<'a> for *const $ty {
            type Safe = Option<&'a $ty>;
            unsafe fn safe(self) -> Option<&'a $ty> {
                // SAFETY: the caller's guarantee (see `Arg::safe`): null or a valid `$ty` for the call.
                unsafe { self.as_ref() }
            }
        }
    )*};
}

// Numbers, and handles and buffers that hooks only pass on (a symbol name, a log buffer, a dependency
// array, a parameter block).
as_is!(
    i32,
    u32,
    u64,
    usize,
    *mut c_void,
    *const c_void,
    *const c_char,
    *mut c_char,
    *const CUgraphNode
);
// Out-parameters: device pointers and allocation handles (u64), sizes, ints, handles made by the driver
// (`*mut CUcontext` and the like are `*mut *mut c_void`), and the structs the memory queries fill.
out!(
    u64,
    usize,
    u32,
    i32,
    *mut c_void,
    nvmlMemory_t,
    nvmlMemory_v2_t,
    CUDA_GRAPH_INSTANTIATE_PARAMS
);
// In-parameters the hooks read.
input!(
    CUDA_ARRAY_DESCRIPTOR,
    CUDA_ARRAY3D_DESCRIPTOR,
    CUmemPoolProps,
    CUmemAllocationProp
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_out_parameter_reads_and_writes_the_callers_value() {
        let mut slot: u64 = 0xdead_b000;
        // SAFETY: `slot` is a valid u64 for the whole test.
        let out = unsafe { (&mut slot as *mut u64).safe() };
        assert_eq!(out.get(), Some(0xdead_b000));
        out.set(64 << 20);
        assert_eq!(out.get(), Some(64 << 20));
        assert_eq!(slot, 64 << 20);
    }

    #[test]
    fn a_null_out_parameter_reads_none_and_ignores_writes() {
        // SAFETY: null is allowed: an `Out` checks it before every access.
        let out = unsafe { std::ptr::null_mut::<usize>().safe() };
        assert_eq!(out.get(), None);
        out.set(1 << 30);
        assert_eq!(out.get(), None);
    }

    #[test]
    fn an_in_parameter_is_none_for_null_and_the_callers_struct_otherwise() {
        let desc = CUDA_ARRAY_DESCRIPTOR {
            Width: 1000,
            Height: 100,
            Format: 0x20,
            NumChannels: 4,
        };
        // SAFETY: null, then a descriptor that lives for the whole test.
        let (none, some) = unsafe {
            (
                std::ptr::null::<CUDA_ARRAY_DESCRIPTOR>().safe(),
                (&desc as *const CUDA_ARRAY_DESCRIPTOR).safe(),
            )
        };
        assert!(none.is_none());
        let d = some.expect("a non-null descriptor is passed on");
        assert_eq!(
            (d.Width, d.Height, d.Format, d.NumChannels),
            (1000, 100, 0x20, 4)
        );
    }
}
