//! The ublk UAPI (`include/uapi/linux/ublk_cmd.h`), written out by hand:
//! the constants and `#[repr(C)]` structs this crate uses, each struct's
//! size asserted at compile time so a layout mistake cannot build.

/// ioctl-style command encoding: `_IOC(dir, 'u', nr, size)`.
const fn ioc(dir: u32, nr: u32, size: u32) -> u32 {
    (dir << 30) | (size << 16) | ((b'u' as u32) << 8) | nr
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
const CTRL_CMD_SIZE: u32 = std::mem::size_of::<CtrlCmd>() as u32;
const IO_CMD_SIZE: u32 = std::mem::size_of::<IoCmd>() as u32;

// Control commands (on /dev/ublk-control, 128-byte SQEs).
pub const U_CMD_GET_DEV_INFO: u32 = ioc(IOC_READ, 0x02, CTRL_CMD_SIZE);
pub const U_CMD_ADD_DEV: u32 = ioc(IOC_READ | IOC_WRITE, 0x04, CTRL_CMD_SIZE);
pub const U_CMD_DEL_DEV: u32 = ioc(IOC_READ | IOC_WRITE, 0x05, CTRL_CMD_SIZE);
pub const U_CMD_START_DEV: u32 = ioc(IOC_READ | IOC_WRITE, 0x06, CTRL_CMD_SIZE);
pub const U_CMD_STOP_DEV: u32 = ioc(IOC_READ | IOC_WRITE, 0x07, CTRL_CMD_SIZE);
pub const U_CMD_SET_PARAMS: u32 = ioc(IOC_READ | IOC_WRITE, 0x08, CTRL_CMD_SIZE);
pub const U_CMD_START_USER_RECOVERY: u32 = ioc(IOC_READ | IOC_WRITE, 0x10, CTRL_CMD_SIZE);
pub const U_CMD_END_USER_RECOVERY: u32 = ioc(IOC_READ | IOC_WRITE, 0x11, CTRL_CMD_SIZE);
pub const U_CMD_GET_FEATURES: u32 = ioc(IOC_READ, 0x13, CTRL_CMD_SIZE);

// Data commands (on /dev/ublkcN, 64-byte SQEs).
pub const U_IO_FETCH_REQ: u32 = ioc(IOC_READ | IOC_WRITE, 0x20, IO_CMD_SIZE);
pub const U_IO_COMMIT_AND_FETCH_REQ: u32 = ioc(IOC_READ | IOC_WRITE, 0x21, IO_CMD_SIZE);

/// A fetch completes with this when the device is going away.
pub const IO_RES_ABORT: i32 = -libc::ENODEV;

// Feature flags (ADD_DEV `flags`, GET_FEATURES).
pub const F_URING_CMD_COMP_IN_TASK: u64 = 1 << 1;
pub const F_USER_RECOVERY: u64 = 1 << 3;
pub const F_USER_RECOVERY_REISSUE: u64 = 1 << 4;
pub const F_CMD_IOCTL_ENCODE: u64 = 1 << 6;
pub const F_USER_COPY: u64 = 1 << 7;

// Device states (GET_DEV_INFO `state`).
pub const S_DEV_DEAD: u16 = 0;
pub const S_DEV_LIVE: u16 = 1;
pub const S_DEV_QUIESCED: u16 = 2;

// I/O descriptor ops and flags.
pub const IO_OP_READ: u8 = 0;
pub const IO_OP_WRITE: u8 = 1;
pub const IO_OP_FLUSH: u8 = 2;
pub const IO_OP_DISCARD: u8 = 3;
pub const IO_OP_WRITE_ZEROES: u8 = 5;
pub const IO_F_FUA: u32 = 1 << 13;

// Parameters.
pub const PARAM_TYPE_BASIC: u32 = 1 << 0;
pub const PARAM_TYPE_DISCARD: u32 = 1 << 1;
pub const ATTR_READ_ONLY: u32 = 1 << 0;
pub const ATTR_VOLATILE_CACHE: u32 = 1 << 2;
pub const ATTR_FUA: u32 = 1 << 3;

/// Where queue `q`'s descriptor array is mmapped in /dev/ublkcN: queue
/// buffers are laid out back to back, each rounded up to a page.
pub const CMD_BUF_OFFSET: i64 = 0;
pub const MAX_QUEUE_DEPTH: u16 = 4096;

/// `struct ublksrv_ctrl_cmd`: the payload of every control command.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CtrlCmd {
    pub dev_id: u32,
    pub queue_id: u16,
    pub len: u16,
    pub addr: u64,
    pub data: [u64; 1],
    pub dev_path_len: u16,
    pub pad: u16,
    pub reserved: u32,
}
const _: () = assert!(std::mem::size_of::<CtrlCmd>() == 32);

/// `struct ublksrv_ctrl_dev_info`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DevInfo {
    pub nr_hw_queues: u16,
    pub queue_depth: u16,
    pub state: u16,
    pub pad0: u16,
    pub max_io_buf_bytes: u32,
    pub dev_id: u32,
    pub ublksrv_pid: i32,
    pub pad1: u32,
    pub flags: u64,
    pub ublksrv_flags: u64,
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub reserved1: u64,
    pub reserved2: u64,
}
const _: () = assert!(std::mem::size_of::<DevInfo>() == 64);

/// `struct ublksrv_io_desc`: one request, in the mmapped array.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IoDesc {
    pub op_flags: u32,
    pub nr_sectors: u32,
    pub start_sector: u64,
    pub addr: u64,
}
const _: () = assert!(std::mem::size_of::<IoDesc>() == 24);

/// `struct ublksrv_io_cmd`: the payload of FETCH and COMMIT_AND_FETCH.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct IoCmd {
    pub q_id: u16,
    pub tag: u16,
    pub result: i32,
    pub addr: u64,
}
const _: () = assert!(std::mem::size_of::<IoCmd>() == 16);

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ParamBasic {
    pub attrs: u32,
    pub logical_bs_shift: u8,
    pub physical_bs_shift: u8,
    pub io_opt_shift: u8,
    pub io_min_shift: u8,
    pub max_sectors: u32,
    pub chunk_sectors: u32,
    pub dev_sectors: u64,
    pub virt_boundary_mask: u64,
}
const _: () = assert!(std::mem::size_of::<ParamBasic>() == 32);

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ParamDiscard {
    pub discard_alignment: u32,
    pub discard_granularity: u32,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_discard_segments: u16,
    pub reserved0: u16,
}
const _: () = assert!(std::mem::size_of::<ParamDiscard>() == 20);

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ParamDevt {
    pub char_major: u32,
    pub char_minor: u32,
    pub disk_major: u32,
    pub disk_minor: u32,
}
const _: () = assert!(std::mem::size_of::<ParamDevt>() == 16);

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct ParamZoned {
    pub max_open_zones: u32,
    pub max_active_zones: u32,
    pub max_zone_append_sectors: u32,
    pub reserved: [u8; 20],
}
const _: () = assert!(std::mem::size_of::<ParamZoned>() == 32);

/// `struct ublk_params` as of Linux 6.12 (`len` tells the kernel how much
/// of it we pass; `types` which parts are set).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Params {
    pub len: u32,
    pub types: u32,
    pub basic: ParamBasic,
    pub discard: ParamDiscard,
    pub devt: ParamDevt,
    pub zoned: ParamZoned,
}
const _: () = assert!(std::mem::size_of::<Params>() == 112);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_encodings_match_the_kernel_headers() {
        assert_eq!(U_CMD_ADD_DEV, 0xC020_7504);
        assert_eq!(U_CMD_GET_FEATURES, 0x8020_7513);
        assert_eq!(U_IO_FETCH_REQ, 0xC010_7520);
        assert_eq!(U_IO_COMMIT_AND_FETCH_REQ, 0xC010_7521);
    }
}
