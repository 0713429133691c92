//! Memory for the CPU backend: the arena and the weight store. In guard-page
//! mode a region is mapped with an inaccessible page on each side and its data
//! placed flush against the trailing one, so a kernel that reads or writes
//! past the end (or before the start, by a page or more) faults at once.

/// A zero-initialised block of `f32`.
pub struct Region {
    mem: Mem,
    len: usize,
}

enum Mem {
    Heap(Vec<f32>),
    /// A mapping (guarded or not): unmapped on drop.
    #[cfg(unix)]
    Guarded {
        map: *mut libc::c_void,
        map_len: usize,
        data: *mut f32,
    },
}

// SAFETY: a region is plain memory; its users synchronise access.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// `len` floats, guarded when `guard` is set (Unix only; elsewhere an error).
    pub fn new(len: usize, guard: bool) -> Result<Region, String> {
        #[cfg(unix)]
        if !guard && len * 4 >= 1 << 21 {
            return Self::mapped(len);
        }
        if !guard {
            let mut v = Vec::new();
            v.try_reserve_exact(len)
                .map_err(|_| format!("cannot allocate {} MiB", (len * 4) >> 20))?;
            v.resize(len, 0.0);
            return Ok(Region {
                mem: Mem::Heap(v),
                len,
            });
        }
        #[cfg(unix)]
        {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
            let bytes = (len * 4).div_ceil(page).max(1) * page;
            let map_len = bytes + 2 * page;
            // SAFETY: an anonymous private mapping; checked below.
            let map = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if map == libc::MAP_FAILED {
                return Err("mmap failed for a guarded region".into());
            }
            // SAFETY: the middle pages are inside the mapping.
            let ok = unsafe {
                libc::mprotect(
                    (map as *mut u8).add(page) as *mut libc::c_void,
                    bytes,
                    libc::PROT_READ | libc::PROT_WRITE,
                )
            };
            if ok != 0 {
                // SAFETY: unmapping what was mapped above.
                unsafe { libc::munmap(map, map_len) };
                return Err("mprotect failed for a guarded region".into());
            }
            // Flush against the trailing guard page.
            // SAFETY: inside the accessible pages.
            let data = unsafe { (map as *mut u8).add(page + bytes - len * 4) as *mut f32 };
            Ok(Region {
                mem: Mem::Guarded { map, map_len, data },
                len,
            })
        }
        #[cfg(not(unix))]
        Err("guard pages need a Unix host".into())
    }

    /// A large region: an anonymous mapping (pages zeroed by the kernel on
    /// first touch, no zero-filling pass). Transparent huge pages are *not*
    /// requested: with MADV_HUGEPAGE, ResNet-50's weight packing took 33–255
    /// ms over 18 runs on the Zen 4 host (first touches that wait for the
    /// kernel to compact memory into 2 MiB pages), without it 62–73 ms over
    /// 11, and inference was no faster with it (ResNet-50 and ViT-B/16,
    /// interleaved).
    #[cfg(unix)]
    fn mapped(len: usize) -> Result<Region, String> {
        let map_len = len * 4;
        // SAFETY: an anonymous private mapping; checked below.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(format!("cannot map {} MiB", map_len >> 20));
        }
        Ok(Region {
            mem: Mem::Guarded {
                map,
                map_len,
                data: map as *mut f32,
            },
            len,
        })
    }

    /// The first element.
    pub fn ptr(&self) -> *const f32 {
        match &self.mem {
            Mem::Heap(v) => v.as_ptr(),
            #[cfg(unix)]
            Mem::Guarded { data, .. } => *data,
        }
    }

    /// The data.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        match &mut self.mem {
            Mem::Heap(v) => v,
            // SAFETY: `len` floats are mapped read-write at `data`.
            #[cfg(unix)]
            Mem::Guarded { data, .. } => unsafe { std::slice::from_raw_parts_mut(*data, self.len) },
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Mem::Guarded { map, map_len, .. } = self.mem {
            // SAFETY: the mapping made in `new`.
            unsafe { libc::munmap(map, map_len) };
        }
    }
}
