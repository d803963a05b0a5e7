//! TAP devices, opened with the few ioctls the kernel's TUN driver needs.
//!
//! Hand-written on `libc` rather than through the `tun-tap` crate: that crate cannot set
//! `IFF_VNET_HDR`, offloads or persistence, which are what make a userspace switch fast
//! (64 KiB super-frames instead of 1500-byte packets) and restartable (ports outlive the
//! process).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::datapath::frame::VNET_HDR_LEN;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
/// Fail instead of attaching when the device already exists (the bit is 0x8000).
const IFF_TUN_EXCL: libc::c_short = 0x8000_u16 as libc::c_short;

const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;
const TUN_F_USO4: libc::c_uint = 0x20;
const TUN_F_USO6: libc::c_uint = 0x40;

/// Errors from opening or configuring a TAP device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` is missing or not accessible (module not loaded, no CAP_NET_ADMIN).
    #[error(
        "cannot open /dev/net/tun: {0} (is the tun module loaded and do we have CAP_NET_ADMIN?)"
    )]
    OpenTun(io::Error),
    /// The interface name is empty, too long (15 bytes max) or contains a NUL.
    #[error("invalid interface name {0:?}: 1 to 15 bytes, no NUL")]
    InvalidName(String),
    /// `TUNSETIFF` refused: the name is taken by a device that is not a free TAP.
    #[error("cannot create or attach TAP {name}: {source}")]
    SetIff { name: String, source: io::Error },
    /// One of the configuration ioctls failed.
    #[error("{what} on TAP {name} failed: {source}")]
    Configure {
        what: &'static str,
        name: String,
        source: io::Error,
    },
}

/// A TAP device opened in multi-offload mode. Every read returns, and every write takes, a
/// virtio-net header ([`VNET_HDR_LEN`] bytes) followed by an Ethernet frame of up to 64 KiB.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

/// A tiny `struct ifreq` with just the name and flags union member TUNSETIFF reads.
#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Create the TAP `name` in the calling thread's network namespace, or attach to it if a
    /// persistent TAP of that name already exists there.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        Tap::open_flags(name, 0)
    }

    /// Create (or attach to) the TAP `name` with `queues` queues, one descriptor each, so
    /// that several workers can read it at once. A device created earlier with a single
    /// queue (by an older switchd) cannot gain queues: it is opened as it is.
    pub fn open_queues(name: &str, queues: usize) -> Result<Vec<Tap>, TapError> {
        Tap::queues(name, queues, 0)
    }

    /// Create the TAP `name` with `queues` queues; unlike [`Tap::open_queues`] it fails
    /// (`SetIff` with `EBUSY`) when a device of that name already exists, so it never
    /// adopts someone else's interface.
    pub fn create_queues(name: &str, queues: usize) -> Result<Vec<Tap>, TapError> {
        Tap::queues(name, queues, IFF_TUN_EXCL)
    }

    fn queues(name: &str, queues: usize, first_flags: libc::c_short) -> Result<Vec<Tap>, TapError> {
        if queues <= 1 {
            return Ok(vec![Tap::open_flags(name, first_flags)?]);
        }
        let first = match Tap::open_flags(name, IFF_MULTI_QUEUE | first_flags) {
            Ok(t) => t,
            Err(TapError::SetIff { ref source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) && first_flags == 0 =>
            {
                return Ok(vec![Tap::open(name)?]);
            }
            Err(e) => return Err(e),
        };
        let mut all = vec![first];
        for _ in 1..queues {
            all.push(Tap::open_flags(name, IFF_MULTI_QUEUE)?);
        }
        Ok(all)
    }

    fn open_flags(name: &str, extra: libc::c_short) -> Result<Tap, TapError> {
        let c_name = CString::new(name).map_err(|_| TapError::InvalidName(name.into()))?;
        let bytes = c_name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
            return Err(TapError::InvalidName(name.into()));
        }
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let fd: OwnedFd = file.into();

        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | extra,
            _pad: [0; 22],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: `fd` is an open /dev/net/tun descriptor and `req` is a properly sized,
        // initialised ifreq that lives across the call; the kernel only reads name and flags.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags) };
        if rc < 0 {
            return Err(TapError::SetIff {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            fd,
            name: name.into(),
        };
        tap.ioctl_int(
            TUNSETVNETHDRSZ,
            VNET_HDR_LEN as libc::c_int,
            "TUNSETVNETHDRSZ",
        )?;
        tap.enable_offloads()?;
        Ok(tap)
    }

    /// Adopt an already configured TAP descriptor (one the service manager kept for us
    /// across a restart). Its device settings (virtio-net header, offloads, persistence)
    /// belong to the device and are still in place.
    pub fn from_fd(fd: OwnedFd, name: &str) -> Result<Tap, TapError> {
        let tap = Tap {
            fd,
            name: name.into(),
        };
        // SAFETY: fcntl on a descriptor we own.
        let rc = unsafe { libc::fcntl(tap.fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        if rc < 0 {
            return Err(tap.configure_error("F_SETFL O_NONBLOCK"));
        }
        Ok(tap)
    }

    /// The same device under the name it was given since (after a move and rename).
    pub fn renamed(mut self, name: &str) -> Tap {
        self.name = name.into();
        self
    }

    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// Let the kernel hand us TCP (and, where the kernel has USO, UDP) super-frames with
    /// partial checksums instead of finished 1500-byte packets.
    fn enable_offloads(&self) -> Result<(), TapError> {
        let base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        let with_uso = base | TUN_F_USO4 | TUN_F_USO6;
        // SAFETY: TUNSETOFFLOAD takes its argument by value; `fd` is a configured TAP.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETOFFLOAD,
                with_uso as libc::c_ulong,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // Kernels before 6.2 have no USO on TAP devices: keep the TCP offloads.
        // SAFETY: as above.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETOFFLOAD, base as libc::c_ulong) };
        if rc < 0 {
            return Err(self.configure_error("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// Make the device outlive this descriptor (`true`), or let closing it destroy the device.
    pub fn set_persistent(&self, persist: bool) -> Result<(), TapError> {
        self.ioctl_int(TUNSETPERSIST, persist as libc::c_int, "TUNSETPERSIST")
    }

    fn ioctl_int(
        &self,
        request: libc::c_ulong,
        value: libc::c_int,
        what: &'static str,
    ) -> Result<(), TapError> {
        let rc = if request == TUNSETPERSIST {
            // SAFETY: TUNSETPERSIST takes its argument by value.
            unsafe { libc::ioctl(self.fd.as_raw_fd(), request, value as libc::c_ulong) }
        } else {
            // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which is valid for
            // the duration of the call.
            unsafe { libc::ioctl(self.fd.as_raw_fd(), request, &value as *const libc::c_int) }
        };
        if rc < 0 {
            return Err(self.configure_error(what));
        }
        Ok(())
    }

    fn configure_error(&self, what: &'static str) -> TapError {
        TapError::Configure {
            what,
            name: self.name.clone(),
            source: io::Error::last_os_error(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read one frame (with its virtio-net header). `WouldBlock` when none is queued.
    #[inline]
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the fd is open.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Write one frame (with its virtio-net header).
    #[inline]
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes; the fd is open.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_would_refuse_are_refused_before_any_syscall() {
        assert!(matches!(Tap::open(""), Err(TapError::InvalidName(_))));
        assert!(matches!(
            Tap::open("a-very-long-ifname"),
            Err(TapError::InvalidName(_))
        ));
        assert!(matches!(
            Tap::open("bad\0name"),
            Err(TapError::InvalidName(_))
        ));
    }
}
