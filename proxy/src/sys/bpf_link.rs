//! The two bpf(2) link commands a takeover needs and aya does not expose
//! for a link another process created: opening it by its kernel id, and
//! replacing its program atomically.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// `union bpf_attr` for the two commands, zero-padded to a size the
/// kernel accepts (it checks that bytes past what it knows are zero).
#[repr(C)]
#[derive(Default)]
struct Attr {
    /// link_fd (update) or link_id (get by id).
    a: u32,
    /// new_prog_fd (update) or next_id (get by id).
    b: u32,
    /// flags (update) or open_flags (get by id).
    c: u32,
    /// old_prog_fd (update).
    d: u32,
    _pad: [u64; 6],
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, zero-initialised bpf_attr of the size
    // passed; the kernel reads (and for these commands does not write) it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// A new descriptor for the link with kernel id `id` (needs CAP_SYS_ADMIN).
pub fn fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr {
        a: id,
        ..Default::default()
    };
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Replaces the program of `link` with `prog`, atomically.
pub fn update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr {
        a: link.as_raw_fd() as u32,
        b: prog.as_raw_fd() as u32,
        ..Default::default()
    };
    bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
}
