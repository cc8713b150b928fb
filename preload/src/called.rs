//! The typed tables of the functions vramcap calls but does not wrap: the driver's (`driver::Called`) and
//! NVML's (`background::nvml::NvmlCalls`). Each line names a function and spells its C prototype; the table
//! resolves every line once, from the library's real handle, into an `Option` of that function type. With
//! the entry table (`entry_points`), this is the only place a looked-up pointer becomes a function.

/// Declares a table struct `$table` of `Option<unsafe extern "C" fn(..) -> $ret>` fields and its
/// `resolve()`, which looks each name up in `$lib` (absent: `None`).
macro_rules! called_table {
    (
        $(#[$meta:meta])*
        pub struct $table:ident in $lib:expr => $ret:ty {
            $($field:ident: $name:literal fn($($ty:ty),*);)*
        }
    ) => {
        $(#[$meta])*
        #[allow(non_snake_case)]
        pub struct $table {
            $(pub $field: Option<unsafe extern "C" fn($($ty),*) -> $ret>,)*
        }

        impl $table {
            /// Every function of the table, looked up in the library's real handle.
            fn resolve() -> $table {
                let handle = $crate::real::handle($lib);
                $table {
                    $($field: {
                        let p = match std::ffi::CStr::from_bytes_with_nul(concat!($name, "\0").as_bytes()) {
                            Ok(name) if !handle.is_null() => $crate::real::lookup(handle, name),
                            _ => std::ptr::null_mut(),
                        };
                        // SAFETY: p is null or the library's function named on this line, whose C
                        // prototype is the one declared beside it.
                        (!p.is_null()).then(|| unsafe {
                            std::mem::transmute::<*mut std::ffi::c_void, unsafe extern "C" fn($($ty),*) -> $ret>(p)
                        })
                    },)*
                }
            }
        }
    };
}

pub(crate) use called_table;
