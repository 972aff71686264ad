//! Whole-map reads and writes in a few syscalls, with `BPF_MAP_LOOKUP_BATCH` and
//! `BPF_MAP_UPDATE_BATCH` (hash maps since Linux 5.6, arrays later; all within the 5.15
//! throttle needs).
//! aya 0.14 has no API for them, and element by element a walk of a million tracked sources
//! costs two syscalls per source, seconds in all.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    maps::{MapData, MapType},
    Pod,
};

// enum bpf_cmd in include/uapi/linux/bpf.h.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Entries asked for per lookup call, and the most bytes of values a call returns (a per-CPU
/// map on a large host has kilobytes per key).
const CHUNK: usize = 4096;
const CHUNK_BYTES: usize = 1 << 20;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Checks that `K`, `V` and `per_key` describe `map`, so the kernel writes within the
/// buffers sized from them; returns the map's fd.
fn checked<K: Pod, V: Pod>(map: &MapData, per_key: usize) -> io::Result<i32> {
    let info = map.info().map_err(io::Error::other)?;
    let per_cpu = matches!(
        info.map_type(),
        Ok(MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash)
    );
    let cpus = if per_cpu {
        aya::util::nr_cpus().map_err(|(_, e)| e)?
    } else {
        1
    };
    let fits = info.key_size() as usize == size_of::<K>()
        && info.value_size() as usize == size_of::<V>()
        && per_key == cpus
        // The kernel lays per-CPU values out 8-byte aligned.
        && (!per_cpu || size_of::<V>().is_multiple_of(8));
    if !fits {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "batch types do not fit the map: keys {} bytes (map {}), values {} x {per_key} \
                 (map {} x {cpus})",
                size_of::<K>(),
                info.key_size(),
                size_of::<V>(),
                info.value_size()
            ),
        ));
    }
    Ok(map.fd().as_fd().as_raw_fd())
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid batch attr; its pointers are valid for `count` entries of the
    // map's key and value sizes, which `checked` made sure the callers' buffers have.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn zeroed<T: Pod>(n: usize) -> Vec<T> {
    // SAFETY: Pod types are plain data for which any bit pattern, zero included, is valid.
    (0..n).map(|_| unsafe { std::mem::zeroed() }).collect()
}

/// Calls `visit` with the entries of a map, a batch at a time, in the map's order, until
/// `max` entries or the end. `K` and `V` are the map's key and value types; a per-CPU map
/// has `per_key` values per key (the possible CPUs), others 1 (checked first). A read of an
/// array may start after key `after`. Entries may be added or removed meanwhile: each is read
/// whole.
pub fn for_each<K: Pod, V: Pod>(
    map: &MapData,
    per_key: usize,
    after: Option<K>,
    max: usize,
    mut visit: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    let fd = checked::<K, V>(map, per_key)?;
    // Batch tokens: a bucket index (u32) for hash maps, the last key for arrays.
    let token_size = size_of::<K>().max(size_of::<u32>());
    let mut token_in = vec![0u8; token_size];
    let mut token_out = vec![0u8; token_size];
    let mut started = false;
    if let Some(key) = after {
        // SAFETY: K is Pod: its bytes are its representation.
        let bytes =
            unsafe { std::slice::from_raw_parts(&key as *const K as *const u8, size_of::<K>()) };
        token_in[..bytes.len()].copy_from_slice(bytes);
        started = true;
    }
    // Always a whole chunk is asked for, even near `max`: a hash bucket is returned whole or
    // not at all, so asking for fewer entries than the next bucket holds gets nothing.
    let mut chunk = CHUNK
        .min(CHUNK_BYTES / (per_key * size_of::<V>()).max(1))
        .min(max)
        .max(1);
    let mut keys: Vec<K> = zeroed(chunk);
    let mut values: Vec<V> = zeroed(chunk * per_key);
    let mut seen = 0;
    while seen < max {
        let want = chunk;
        let mut attr = BatchAttr {
            in_batch: if started { token_in.as_ptr() as u64 } else { 0 },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: want as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        // The count is the kernel's only where it reports one: on success, at the end, or
        // when the next bucket did not fit; other errors leave ours.
        let counted = match &result {
            Ok(()) => true,
            Err(e) => matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENOSPC | libc::EINTR)
            ),
        };
        let got = if counted {
            (attr.count as usize).min(want)
        } else {
            0
        };
        let take = got.min(max - seen);
        if take > 0 {
            visit(&keys[..take], &values[..take * per_key]);
            seen += take;
        }
        match result {
            Ok(()) if got == 0 => return Ok(()),
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            // The next hash bucket holds more entries than a chunk: ask for more (a bucket
            // holds a handful; the bound only stops a kernel that keeps saying so).
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 && chunk < 1 << 20 => {
                chunk *= 2;
                keys = zeroed(chunk);
                values = zeroed(chunk * per_key);
                continue;
            }
            Err(e) => return Err(e),
        }
        std::mem::swap(&mut token_in, &mut token_out);
        started = true;
    }
    Ok(())
}

/// Writes `keys[i] = values[i]` for every i (no flags: insert or replace), as few calls as
/// the kernel takes. For maps that are not per CPU, of key type `K` and value type `V`
/// (checked first).
pub fn update<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    let fd = checked::<K, V>(map, 1)?;
    let mut done = 0;
    while done < keys.len() {
        let mut attr = BatchAttr {
            keys: keys[done..].as_ptr() as u64,
            values: values[done..].as_ptr() as u64,
            count: (keys.len() - done) as u32,
            map_fd: fd as u32,
            ..Default::default()
        };
        let result = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        done += attr.count as usize;
        match result {
            Ok(()) if attr.count > 0 => {}
            Ok(()) => return Err(io::Error::other("BPF_MAP_UPDATE_BATCH wrote nothing")),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
