//! The loopback interface of a new network namespace starts down; bring it
//! up so that `--network none` still has a working `lo`.

use std::io;

pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket() has no memory-safety preconditions; the fd is closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming "lo"; the ioctls read and write
    // only within it. (`as _`: the request is an unsigned long in glibc's
    // ioctl and an int in musl's.)
    let res = unsafe {
        if libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req)
        }
    };
    let err = io::Error::last_os_error();
    // SAFETY: `sock` is an fd we own and no longer use.
    unsafe { libc::close(sock) };
    if res < 0 {
        return Err(err);
    }
    Ok(())
}
